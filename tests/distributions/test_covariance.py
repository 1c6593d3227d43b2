"""The covariance holder: three equivalent full forms, derived on demand, one density."""

from __future__ import annotations

import pytest
import torch

from torchmdn import GaussianMixture, MDNHead
from torchmdn.distributions.covariance import Covariance

F64 = torch.float64


def _full(b=5, n=3, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, n, d, d, generator=g, dtype=F64)
    cov = a @ a.mT + 0.5 * torch.eye(d, dtype=F64)
    logits = torch.randn(b, n, generator=g, dtype=F64)
    loc = torch.randn(b, n, d, generator=g, dtype=F64)
    return logits, loc, torch.linalg.cholesky(cov)


def test_each_full_form_derives_the_others():
    logits, loc, tril = _full()
    prec = torch.linalg.inv(tril)
    from_l = Covariance("full", scale_tril=tril)
    from_a = Covariance("full", precision_tril=prec)
    assert from_l.stored == ("scale_tril",) and from_a.stored == ("precision_tril",)
    torch.testing.assert_close(from_l.precision_tril, prec)
    torch.testing.assert_close(from_a.scale_tril, tril)
    assert set(from_a.stored) == {"scale_tril", "precision_tril"}  # derived once, then kept
    torch.testing.assert_close(from_l.matrices(3), tril @ tril.mT)


def test_every_form_gives_the_same_density_as_torch():
    logits, loc, tril = _full()
    y = torch.randn(7, 5, 3, dtype=F64)
    want = GaussianMixture(logits, loc, scale_tril=tril).to_torch().log_prob(y)
    for cov in (
        Covariance("full", scale_tril=tril),
        Covariance("full", precision_tril=torch.linalg.inv(tril)),
    ):
        torch.testing.assert_close(cov.log_prob(logits, loc, y), want)
    # a density never forces the other form into existence
    cov = Covariance("full", scale_tril=tril)
    cov.log_prob(logits, loc, y)
    assert cov.stored == ("scale_tril",)


def test_head_output_holds_the_packed_form_and_agrees_with_the_split_parameters():
    torch.manual_seed(0)
    head = MDNHead(4, 3, 2, covariance_type="full").double()
    gm = head(torch.randn(6, 4, dtype=F64))
    y = torch.randn(6, 3, dtype=F64)
    direct = gm.log_prob(y)  # from the raw output: nothing split off
    assert gm.covariance.stored == ("packed",)
    ref = GaussianMixture(gm.logits, gm.loc, scale_tril=gm.scale_tril)
    torch.testing.assert_close(direct, ref.log_prob(y))
    torch.testing.assert_close(gm.precision_tril, torch.linalg.inv(gm.scale_tril))


@pytest.mark.parametrize("kind", ["diagonal", "isotropic", "full"])
def test_expand_keeps_the_kind_and_the_density(kind):
    logits, loc, tril = _full(b=1)
    if kind == "full":
        gm = GaussianMixture.from_precision_tril(logits[0], loc[0], torch.linalg.inv(tril[0]))
    elif kind == "diagonal":
        gm = GaussianMixture(logits[0], loc[0], scale=tril[0].diagonal(dim1=-2, dim2=-1))
    else:
        gm = GaussianMixture(logits[0], loc[0], scale=tril[0, :, 0, 0].abs())
    big = gm.expand((4,))
    assert big.covariance_type == kind and big.batch_shape == (4,)
    y = torch.randn(4, 3, dtype=F64)
    torch.testing.assert_close(big.log_prob(y), gm.log_prob(y))
    if kind == "full":
        assert big.covariance.stored == ("precision_tril",)  # still solve-free


def test_the_holder_refuses_a_form_that_does_not_fit_the_kind():
    _, _, tril = _full()
    with pytest.raises(ValueError):
        Covariance("diagonal", scale_tril=tril)
    with pytest.raises(ValueError):
        Covariance("full", scale=tril[..., 0])
    with pytest.raises(ValueError):
        Covariance("full", scale_tril=tril, precision_tril=tril)


def test_mixture_has_no_attribute_magic():
    assert "__getattr__" not in vars(GaussianMixture)
    logits, loc, tril = _full()
    with pytest.raises(AttributeError):
        GaussianMixture(logits, loc, scale_tril=tril).no_such_thing  # noqa: B018
