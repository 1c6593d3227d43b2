"""Speech demo: log-mel frames from eSpeak NG, an MDN acoustic model, alignment and vocoding."""
