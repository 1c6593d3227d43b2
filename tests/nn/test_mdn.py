"""MDNHead and MDN: shapes, gradients, the scale floor, standardisation, user units."""

import copy
import math

import pytest
import torch

from torchmdn import MDN, MLP, GaussianMixture, MDNHead
from torchmdn.errors import InputError
from torchmdn.nn.mdn import OVERLAP_SPREAD
from torchmdn.nn.standardize import target_resolution as torchmdn_target_resolution

KINDS = ("diagonal", "isotropic", "full")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("n", [1, 4])
def test_head_shapes_and_every_parameter_gets_a_gradient(kind, d, n):
    head = MDNHead(5, d, n, covariance_type=kind)
    h = torch.randn(2, 7, 5)
    gm = head(h)
    assert isinstance(gm, GaussianMixture)
    assert gm.batch_shape == (2, 7) and gm.event_shape == (d,) and gm.covariance_type == kind
    gm.log_prob(torch.randn(2, 7, d)).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # every output block receives gradient: logits, means and scale parameters
    g = head.linear.bias.grad
    sizes = head._split
    for block in g.split(sizes):
        assert block.abs().sum() > 0 or (block.numel() == 1 and n == 1)


@pytest.mark.parametrize("kind", KINDS)
def test_min_scale_is_a_real_floor(kind):
    head = MDNHead(3, 2, 2, covariance_type=kind, min_scale=0.05)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.fill_(-1e4)  # softplus -> 0: scales must sit exactly on the floor
    gm = head(torch.zeros(1, 3))
    if kind == "full":
        diag = gm.scale_tril.diagonal(dim1=-2, dim2=-1)
        torch.testing.assert_close(diag, torch.full_like(diag, 0.05))
        assert (gm.scale_tril.triu(1) == 0).all()
    else:
        torch.testing.assert_close(gm.scale, torch.full_like(gm.scale, 0.05))


def test_head_full_builds_valid_cholesky_factor():
    head = MDNHead(4, 3, 2, covariance_type="full")
    gm = head(torch.randn(6, 4))
    GaussianMixture(
        gm.logits, gm.loc, scale_tril=gm.scale_tril, validate_args=True
    )  # must not raise


def test_head_initial_mixture_is_spread_with_equal_weights():
    head = MDNHead(8, 1, 5)
    gm = head(torch.zeros(1, 8))
    torch.testing.assert_close(gm.probs, torch.full((1, 5), 0.2))
    assert gm.loc.squeeze().unique().numel() == 5
    torch.testing.assert_close(gm.scale, torch.ones_like(gm.scale), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(in_features=3, out_features=1, n_components=0), "n_components"),
        (
            dict(in_features=3, out_features=1, n_components=2, covariance_type="banana"),
            "covariance",
        ),
        (dict(in_features=3, out_features=1, n_components=2, min_scale=-1.0), "min_scale"),
        (dict(in_features=0, out_features=1, n_components=2), "in_features"),
    ],
)
def test_head_rejects_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        MDNHead(**kwargs)


def test_mlp_rejects_unknown_activation():
    with pytest.raises(InputError, match="activation"):
        MLP(2, (4,), activation="swishy")


def test_mdn_output_is_in_user_units():
    x = torch.randn(500, 2) * 10 + 3
    y = torch.randn(500, 1) * 1000 - 50
    model = MDN(2, 1, n_components=3, hidden=(16,)).standardize(x, y)
    torch.testing.assert_close(model.y_scale, y.std(0))
    dist = model(x[:7])
    z = model.standardized_forward(x[:7])
    # log p(y) = log p_z((y - m) / s) - log s, and the fast path agrees with model(x).log_prob
    want = z.log_prob((y[:7] - model.y_loc) / model.y_scale) - model.y_scale.log().sum()
    torch.testing.assert_close(model.log_prob(x[:7], y[:7]), want)
    torch.testing.assert_close(dist.log_prob(y[:7]), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        dist.mean, z.mean * model.y_scale + model.y_loc, rtol=1e-5, atol=1e-3
    )


def test_mdn_standardize_rejects_constant_target_and_tolerates_constant_feature():
    x = torch.cat([torch.randn(20, 1), torch.ones(20, 1)], 1)
    model = MDN(2, 1, hidden=(4,))
    model.standardize(x, torch.randn(20, 1))
    assert model.x_scale[1] == 1.0 and bool(model.standardized)
    with pytest.raises(InputError, match="constant"):
        MDN(2, 1, hidden=(4,)).standardize(x, torch.ones(20, 1))


def test_mdn_shape_errors_name_the_remedy():
    model = MDN(1, 1, hidden=(4,))
    with pytest.raises(InputError, match=r"unsqueeze\(-1\)"):
        model(torch.zeros(5))
    with pytest.raises(InputError, match=r"\(\.\.\., 1\)"):
        model(torch.zeros(5, 3))
    with pytest.raises(InputError, match="y must have shape"):
        model.log_prob(torch.zeros(5, 1), torch.zeros(5, 2))
    with pytest.raises(InputError, match="feature_names"):
        MDN(2, 1, feature_names=["a"])


def test_mdn_config_round_trip():
    model = MDN(
        3,
        2,
        n_components=4,
        hidden=(8, 6),
        covariance_type="full",
        activation="silu",
        min_scale=0.01,
        feature_names=["a", "b", "c"],
        target_names=["u", "v"],
    )
    clone = MDN(**model.config())
    assert clone.config() == model.config()
    assert sum(p.numel() for p in clone.parameters()) == sum(p.numel() for p in model.parameters())


def test_mdn_works_in_float64():
    model = MDN(2, 2, n_components=3, hidden=(8,), covariance_type="full").double()
    lp = model.log_prob(
        torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    )
    assert lp.dtype == torch.float64 and torch.isfinite(lp).all()
    assert math.isfinite(lp.sum().item())


# ---- targets recorded on a grid: target_resolution


def test_target_resolution_detects_grids_and_leaves_continuous_columns_alone():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(3, 9, (500,), generator=gen).float()  # 0-10 style scores
    cents = (torch.rand(500, generator=gen) * 5).mul(10).round().div(10)  # 0.1 steps, repeats
    continuous = torch.randn(500, generator=gen)
    res = torchmdn_target_resolution(torch.stack([scores, cents, continuous], 1))
    assert res[0] == 1.0
    assert abs(res[1] - 0.1) < 1e-6
    assert res[2] == 0.0
    # two distinct values in 4 rows: a binary target, resolution = the gap
    assert torchmdn_target_resolution(torch.tensor([[0.0], [2.0], [2.0], [0.0]]))[0] == 2.0
    # all distinct: continuous, however few rows
    assert torchmdn_target_resolution(torch.tensor([[0.0], [1.0], [2.0]]))[0] == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_standardize_floors_scales_of_a_grid_target_at_step_over_sqrt12(kind):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(400, 2, generator=gen)
    y = torch.stack(
        [torch.randint(0, 4, (400,), generator=gen).float() * 2.0, torch.randn(400, generator=gen)],
        1,
    )  # column 0 on a grid of step 2, column 1 continuous
    model = MDN(2, 2, n_components=3, covariance_type=kind).standardize(x, y)
    want0 = 2.0 / math.sqrt(12) / model.y_scale[0]
    torch.testing.assert_close(model.head.scale_floor, torch.stack([want0, torch.tensor(1e-3)]))
    with torch.no_grad():
        model.head.linear.weight.zero_()
        model.head.linear.bias.fill_(-1e4)  # every scale on its floor
    # user units: every component's sd of column 0 sits exactly on step / sqrt(12) (for
    # "full", column 0 comes first in the Cholesky factor, so its sd is the factor's floor)
    comp = model(x[:5]).to_torch().component_distribution
    sd0 = comp.variance[..., 0].sqrt()
    torch.testing.assert_close(sd0, torch.full((5, 3), 2.0 / math.sqrt(12)))
    if kind == "diagonal":  # the continuous column keeps the plain floor
        torch.testing.assert_close(
            comp.variance[..., 1].sqrt(), torch.full((5, 3), 1e-3) * model.y_scale[1]
        )


def test_target_resolution_none_or_explicit_and_bad_values():
    x, y = torch.randn(100, 1), torch.randint(0, 3, (100, 1)).float()
    off = MDN(1, 1, target_resolution=None).standardize(x, y)
    torch.testing.assert_close(off.head.scale_floor, torch.tensor([1e-3]))
    fixed = MDN(1, 1, target_resolution=0.5).standardize(x, y)
    torch.testing.assert_close(
        fixed.head.scale_floor * fixed.y_scale, torch.tensor([0.5 / math.sqrt(12)])
    )
    for bad in (-1.0, float("nan"), "grid", [1.0, 2.0], True):
        with pytest.raises(InputError, match="target_resolution"):
            MDN(1, 1, target_resolution=bad)


def test_normaliser_rules_are_shared_by_mdn_mdnrnn_and_the_mse_baseline():
    from torchmdn import MDNRNN
    from torchmdn.apps.speech.model import MSEBaseline

    x = torch.randn(50, 2)
    x[:, 1] = 3.0  # a constant input column: scale 1
    y = torch.stack([torch.randn(50), torch.full((50,), 7.0)], 1)  # target column 1 constant
    for model, args, where in (
        (MDN(2, 2), (x, y), r"\(or have one row\)"),
        (MDNRNN(2, 2, 2, hidden_size=4), (x[None], y[None]), "on the real steps"),
        (MSEBaseline(2, 2, hidden=(4,)), (x, y), "MSEBaseline"),
    ):
        with pytest.raises(InputError, match=r"target column\(s\) \[1\] are constant.*" + where):
            model.standardize(*args)
        assert not bool(model.standardized)
        y_ok = y.clone()
        y_ok[:, 1] = torch.randn(50)
        model.standardize(*(args[0], y_ok[None] if args[1].dim() == 3 else y_ok))
        assert bool(model.standardized) and model.x_scale[1] == 1.0 and model.x_loc[1] == 3.0
    with pytest.raises(InputError, match=r"\[0\] are constant or not finite"):
        MDN(1, 1).set_normalizers(
            torch.zeros(1), torch.ones(1), torch.zeros(1), torch.tensor([math.inf])
        )


@pytest.mark.parametrize("covariance", ["diagonal", "isotropic", "full"])
def test_initialize_and_log_prob_on_the_device_equal_the_cpu(device, covariance):
    """The k-means start runs where the head is (no CPU copy meets device buffers) and
    gives the CPU's start; the head's likelihood and its gradient match the CPU's."""
    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.randn(60, 2, generator=g) - 3, torch.randn(60, 2, generator=g) + 3])
    x = torch.randn(120, 4, generator=g)
    torch.manual_seed(0)
    cpu = MDN(4, 2, n_components=3, hidden=(8,), covariance_type=covariance).standardize(x, y)
    dev = copy.deepcopy(cpu).to(device)
    cpu.initialize(x, y, generator=torch.Generator().manual_seed(1))
    dev.initialize(x.to(device), y.to(device), generator=torch.Generator().manual_seed(1))
    for k, v in cpu.state_dict().items():
        torch.testing.assert_close(dev.state_dict()[k].cpu(), v, rtol=1e-5, atol=1e-6)
    lp_cpu = cpu.log_prob(x, y)
    lp_dev = dev.log_prob(x.to(device), y.to(device))
    torch.testing.assert_close(lp_dev.cpu(), lp_cpu, rtol=1e-5, atol=1e-5)
    lp_cpu.sum().backward()
    lp_dev.sum().backward()
    torch.testing.assert_close(dev.head.linear.weight.grad.cpu(), cpu.head.linear.weight.grad,
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    # a generator on the device draws the seeding there
    dev.initialize(x.to(device), y.to(device), generator=torch.Generator(device=device))
    assert torch.isfinite(dev.head.linear.bias).all()


def test_kmeans_start_of_many_components_is_linear_in_them():
    import time

    head = MDNHead(4, 1, 1000)
    started = time.perf_counter()
    head.initialize(torch.randn(200, 1, generator=torch.Generator().manual_seed(0)))
    assert time.perf_counter() - started < 20  # was 55 s (cubic in the components)
    assert torch.isfinite(head.linear.bias).all()


@pytest.mark.parametrize("n", [1, 2, 5])
def test_overlapping_start_puts_every_component_at_the_median(device, n):
    """``start="overlapping"``: all means at the targets' median, standard deviations from
    the first to the second factor of OVERLAP_SPREAD times the targets', equal weights; one
    component starts as the k-means start does; an unknown start is refused."""
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(201, 2, generator=g) * torch.tensor([0.5, 2.0]) + 1.0).double().to(device)
    head = MDNHead(3, 2, n).double().to(device)
    head.initialize(z, start="overlapping")
    with torch.no_grad():
        head.linear.weight.zero_()  # the bias alone: what every input starts from
        gm = head(torch.zeros(1, 3, dtype=torch.float64, device=device))
    med, sd = z.median(0).values, z.std(0)
    if n == 1:
        plain = MDNHead(3, 2, 1).double().to(device)
        plain.initialize(z)
        torch.testing.assert_close(head.linear.bias, plain.linear.bias)
    else:
        torch.testing.assert_close(gm.loc[0], med.expand(n, 2))
        low, high = OVERLAP_SPREAD
        ratios = gm.scale[0] / sd  # (n, d): diagonal standard deviations
        torch.testing.assert_close(ratios[0], torch.full_like(ratios[0], low), rtol=1e-6, atol=0)
        torch.testing.assert_close(ratios[-1], torch.full_like(ratios[0], high), rtol=1e-6, atol=0)
        assert (ratios[1:] > ratios[:-1]).all()
        torch.testing.assert_close(gm.probs[0], torch.full((n,), 1.0 / n, dtype=torch.float64,
                                                              device=device))  # fmt: skip
    with pytest.raises(InputError, match=r"start must be one of \('clusters', 'overlapping'\)"):
        head.initialize(z, start="median")


def _split_head(head, sizes):
    """Plain heads of ``sizes`` components holding the grouped ``head``'s output rows."""
    n, d = head.n_components, head.out_features
    per = head.output_split[2] // n
    parts, start = [], 0
    for k in sizes:
        sub = MDNHead(head.in_features, d, k, head.covariance_type, head.min_scale)
        sub = sub.to(head.linear.weight)
        rows = [r for c in range(start, start + k) for r in head.component_rows(c)]
        own = [r for c in range(k) for r in sub.component_rows(c)]
        with torch.no_grad():
            sub.linear.weight[own] = head.linear.weight[rows]
            sub.linear.bias[own] = head.linear.bias[rows]
        parts.append(sub)
        start += k
    assert per * n == head.output_split[2]
    return parts


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("sizes", [(1, 2), (2, 3, 5), (1, 1)])
def test_a_grouped_head_is_the_average_of_its_groups(device, kind, d, sizes):
    """Oracle: each group as a plain head of its own rows, densities averaged in float64."""
    torch.manual_seed(0)
    head = MDNHead(6, d, sum(sizes), kind, groups=sizes).double().to(device)
    with torch.no_grad():
        head.linear.weight.normal_(0, 0.5)
        head.linear.bias.normal_(0, 0.5)
    h = torch.randn(2, 9, 6, dtype=torch.float64, device=device)
    y = torch.randn(2, 9, d, dtype=torch.float64, device=device)
    gm = head(h)
    expected = torch.stack([sub(h).log_prob(y) for sub in _split_head(head, sizes)])
    expected = torch.logsumexp(expected, 0) - math.log(len(sizes))
    torch.testing.assert_close(gm.log_prob(y), expected)
    # the weights: each group's sum to 1 / (number of groups)
    w = gm.logits.softmax(-1).split(sizes, -1)
    for part in w:
        torch.testing.assert_close(part.sum(-1), torch.full((2, 9), 1 / len(sizes)).to(part))
    # the same with the RNADE gradient scaling on (another code path), and a gradient
    head.mean_grad_scaling = True
    lp = head(h).log_prob(y)
    torch.testing.assert_close(lp, expected)
    lp.sum().backward()
    assert torch.isfinite(head.linear.weight.grad).all()


def test_groups_are_checked_and_kept_by_save_and_load(tmp_path):
    import torchmdn

    with pytest.raises(InputError, match=r"groups must add up to n_components=5; got \[2, 2\]"):
        MDNHead(4, 1, 5, groups=[2, 2])
    with pytest.raises(InputError, match="group size must be a positive integer; got 0"):
        MDNHead(4, 1, 2, groups=[2, 0])
    with pytest.raises(InputError, match="groups must be a sequence"):
        MDNHead(4, 1, 2, groups=2)
    with pytest.raises(InputError, match="needs an integer n_components"):
        MDN(1, 1, groups=[2, 3])
    assert MDNHead(4, 1, 3, groups=[3]).groups is None  # one group: a plain mixture
    torch.manual_seed(0)
    model = MDN(2, 1, n_components=5, hidden=(8,), groups=[2, 3])
    assert model.config()["groups"] == [2, 3] and "groups=[2, 3]" in repr(model.head)
    x, y = torch.randn(30, 2), torch.randn(30, 1)
    model.standardize(x, y)
    loaded = torchmdn.load(torchmdn.save(model, tmp_path / "m.safetensors"))
    assert loaded.head.groups == (2, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(x, y), model.log_prob(x, y))


def test_a_grouped_model_trains_and_keeps_its_groups():
    import torchmdn

    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, generator=g) * 2 - 1
    y = torch.sin(3 * x) + 0.2 * torch.randn(200, 1, generator=g)
    torch.manual_seed(0)
    model = MDN(1, 1, n_components=5, hidden=(16,), groups=[2, 3])
    h = torchmdn.fit(model, x, y, max_epochs=30, random_state=0, progress=False)
    assert h.train_nll[-1] < h.train_nll[0] and model.head.groups == (2, 3)
    with torch.no_grad():
        w = model(x).logits.softmax(-1)
    torch.testing.assert_close(w[:, :2].sum(-1), torch.full((200,), 0.5))
