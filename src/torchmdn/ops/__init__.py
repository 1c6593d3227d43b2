"""Likelihood implementations: the fused tensor-level Functions (``fused``) and the compiled CPU
kernel (``kernel``, source in ``csrc/``) that ``GaussianMixture.log_prob`` dispatches to."""
