"""DANN (gradient reversal, discriminator, domain loss) and multi-kernel MMD, checked against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from tlrun.methods.dann import DomainAdversarialLoss, DomainDiscriminator, GradientReversal, GradientReversalLayer
from tlrun.methods.mmd import MultiKernelMMDLoss, mk_mmd

MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)


pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------- gradient reversal


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 2.5])
def test_gradient_reversal_is_identity_forward_and_scales_gradient_by_minus_lambda(lam: float):
    torch.manual_seed(0)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(4, 3, dtype=torch.float64)
    y = GradientReversal.apply(x, lam)
    assert torch.equal(y, x)
    (grad,) = torch.autograd.grad(y, x, grad_outputs=upstream)
    assert torch.equal(grad, -lam * upstream)


def test_grl_layer_uses_its_current_lambda():
    layer = GradientReversalLayer(max_weight=2.0)
    layer.set_progress(0.3)
    x = torch.randn(5, 2, requires_grad=True)
    (grad,) = torch.autograd.grad(layer(x).sum(), x)
    torch.testing.assert_close(grad, torch.full_like(x, -layer.lambda_))
    assert layer.lambda_ == pytest.approx(2.0 * (2 / (1 + math.exp(-3.0)) - 1))


def test_lambda_schedule_values_and_monotonicity():
    layer = GradientReversalLayer(max_weight=0.7, gamma=10.0)
    assert layer.lambda_ == 0.0  # before any progress
    values = []
    for p in np.linspace(0, 1, 21):
        layer.set_progress(float(p))
        values.append(layer.lambda_)
    assert values[0] == 0.0
    assert values[10] == pytest.approx(0.7 * (2 / (1 + math.exp(-5)) - 1))
    assert values[-1] == pytest.approx(0.7 * 0.9999092, rel=1e-6)
    assert all(b > a for a, b in zip(values, values[1:]))
    layer.set_progress(1.7)  # clamped
    assert layer.lambda_ == pytest.approx(values[-1])


def test_lambda_constant_schedule():
    layer = GradientReversalLayer(max_weight=0.4, schedule="constant")
    for p in (0.0, 0.5, 1.0):
        layer.set_progress(p)
        assert layer.lambda_ == 0.4
    with pytest.raises(ValueError):
        GradientReversalLayer(schedule="linear")


# ---------------------------------------------------------------- discriminator / domain loss


def test_discriminator_architecture_is_configurable():
    disc = DomainDiscriminator(16, hidden=8, depth=3)
    linears = [m for m in disc.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 8), (8, 8), (8, 8), (8, 1)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in disc.modules()) == 3
    dropouts = [m for m in disc.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 3 and all(m.p == 0.5 for m in dropouts)
    assert disc(torch.randn(4, 16)).shape == (4,)
    default = DomainDiscriminator(32)
    assert [m.out_features for m in default.modules() if isinstance(m, torch.nn.Linear)] == [1024, 1024, 1]
    paper = DomainDiscriminator(16, hidden=100, depth=1, dropout=0.0, batch_norm=False)
    assert [type(m) for m in paper.net] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    leaky = [m for m in DomainDiscriminator(16, hidden=4, depth=2, activation="leaky_relu").modules()
             if isinstance(m, torch.nn.LeakyReLU)]
    assert len(leaky) == 2 and all(m.negative_slope == 0.2 for m in leaky)
    with pytest.raises(ValueError, match="activation"):
        DomainDiscriminator(16, activation="tanh")


@pytest.mark.parametrize("activation, passes_gradient", [("relu", False), ("leaky_relu", True)])
def test_a_silenced_discriminator_passes_gradient_only_when_leaky(activation, passes_gradient):
    """Every hidden pre-activation negative (what the reversed gradient can drive a plain ReLU discriminator to):
    the ReLU one outputs a constant and gives the features no gradient; the leaky one still does."""
    loss_fn = DomainAdversarialLoss(6, hidden=5, depth=1, dropout=0.0, batch_norm=False, activation=activation,
                                    schedule="constant")
    first = loss_fn.discriminator.net[0]
    with torch.no_grad():
        first.weight.copy_(torch.rand(5, 6))
        first.bias.fill_(-100.0)
    source = torch.rand(4, 6, requires_grad=True)
    target = torch.rand(3, 6, requires_grad=True)
    loss, stats = loss_fn(source, target)
    loss.backward()
    assert stats["discriminator_active"] == 0.0
    assert (source.grad.abs().sum().item() > 0) is passes_gradient
    with torch.no_grad():
        first.bias.zero_()  # now every unit fires on these positive inputs
    _, stats = loss_fn(source, target)
    assert stats["discriminator_active"] == 1.0


class _RecordBCE(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.targets = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.binary_cross_entropy_with_logits:
            self.targets.append(kwargs.get("target", args[1] if len(args) > 1 else None))
        return func(*args, **kwargs)


def test_domain_labels_follow_feature_dtype_and_source_is_one():
    torch.manual_seed(0)
    loss_fn = DomainAdversarialLoss(6, hidden=8).double()
    source, target = torch.randn(5, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    with _RecordBCE() as recorder:
        loss, _ = loss_fn(source, target)
    (labels,) = recorder.targets
    assert labels.dtype == torch.float64 and labels.device == source.device
    assert labels.tolist() == [1.0] * 5 + [0.0] * 3
    assert loss.dtype == torch.float64


def test_domain_loss_with_unequal_batches_matches_direct_bce():
    torch.manual_seed(0)
    loss_fn = DomainAdversarialLoss(4, hidden=8).eval()
    source, target = torch.randn(7, 4) + 2.0, torch.randn(3, 4)
    loss, stats = loss_fn(source, target)
    logits = loss_fn.discriminator(torch.cat([source, target]))
    labels = torch.tensor([1.0] * 7 + [0.0] * 3)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits, labels))
    expected_acc = ((logits > 0).float() == labels).float().mean().item()
    assert stats["domain_acc"] == pytest.approx(expected_acc)
    assert set(stats) == {"domain_acc", "lambda", "discriminator_active"} and stats["lambda"] == 0.0


@pytest.mark.parametrize("progress", [0.1, 0.5, 1.0])
def test_feature_gradient_is_reversed_but_discriminator_gradient_is_not(progress: float):
    torch.manual_seed(0)
    loss_fn = DomainAdversarialLoss(4, hidden=8, max_weight=0.8).double().eval()
    loss_fn.set_progress(progress)
    lam = loss_fn.lambda_
    assert lam > 0
    source = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    params = list(loss_fn.discriminator.parameters())

    loss, stats = loss_fn(source, target)
    assert stats["lambda"] == lam
    grads_grl = torch.autograd.grad(loss, [source, target, *params])

    logits = loss_fn.discriminator(torch.cat([source, target]))
    plain = F.binary_cross_entropy_with_logits(logits, torch.tensor([1.0] * 6 + [0.0] * 2, dtype=torch.float64))
    grads_plain = torch.autograd.grad(plain, [source, target, *params])

    for with_grl, without in zip(grads_grl[:2], grads_plain[:2]):
        assert without.abs().sum() > 0
        torch.testing.assert_close(with_grl, -lam * without)
    for with_grl, without in zip(grads_grl[2:], grads_plain[2:]):
        torch.testing.assert_close(with_grl, without)


def test_discriminator_learns_separable_domains():
    torch.manual_seed(0)
    loss_fn = DomainAdversarialLoss(2, hidden=16, depth=1)
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=1e-2)
    source, target = torch.randn(32, 2) + 3.0, torch.randn(24, 2) - 3.0
    first, _ = loss_fn(source, target)
    for _ in range(60):
        loss, stats = loss_fn(source, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    loss_fn.eval()
    final, stats = loss_fn(source, target)
    assert final.item() < 0.5 * first.item()
    assert stats["domain_acc"] == 1.0


# ---------------------------------------------------------------- MMD: NumPy reference


def _np_bandwidth(x: np.ndarray, y: np.ndarray) -> float:
    z = np.concatenate([x, y])
    total, pairs = 0.0, 0
    for i in range(len(z)):
        for j in range(len(z)):
            if i != j:
                total += float(np.sum((z[i] - z[j]) ** 2))
                pairs += 1
    return total / pairs


def _np_kernel(a: np.ndarray, b: np.ndarray, base: float, multipliers=MULTIPLIERS) -> float:
    d = float(np.sum((a - b) ** 2))
    return sum(math.exp(-d / (base * m)) for m in multipliers)


def mmd_numpy_reference(x: np.ndarray, y: np.ndarray, estimator: str, multipliers=MULTIPLIERS) -> float:
    base = _np_bandwidth(x, y)
    k = lambda a, b: _np_kernel(a, b, base, multipliers)  # noqa: E731
    if estimator == "quadratic":
        kxx = sum(k(a, b) for a in x for b in x) / len(x) ** 2
        kyy = sum(k(a, b) for a in y for b in y) / len(y) ** 2
        kxy = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
        return kxx + kyy - 2 * kxy
    half = min(len(x), len(y)) // 2
    terms = []
    for i in range(half):
        x1, x2, y1, y2 = x[2 * i], x[2 * i + 1], y[2 * i], y[2 * i + 1]
        terms.append(k(x1, x2) + k(y1, y2) - k(x1, y2) - k(x2, y1))
    return sum(terms) / half


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quadratic_mmd_matches_numpy_double_loop(seed: int):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(6, 3)), rng.normal(loc=0.5, size=(5, 3))
    expected = mmd_numpy_reference(x, y, "quadratic")
    got = mk_mmd(torch.from_numpy(x), torch.from_numpy(y), estimator="quadratic")
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    got32 = mk_mmd(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    assert got32.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # Distances are translation-invariant; far from the origin float32 must not lose them to cancellation.
    far32 = mk_mmd(torch.from_numpy(x + 1000.0).float(), torch.from_numpy(y + 1000.0).float())
    assert far32.item() == pytest.approx(expected, rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("shape", [(8, 8), (7, 9)])
def test_linear_mmd_matches_numpy_double_loop(shape):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(shape[0], 3)), rng.normal(loc=0.3, scale=1.5, size=(shape[1], 3))
    expected = mmd_numpy_reference(x, y, "linear")
    got = mk_mmd(torch.from_numpy(x), torch.from_numpy(y), estimator="linear")
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_custom_multipliers_match_numpy():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(4, 2)), rng.normal(size=(6, 2))
    expected = mmd_numpy_reference(x, y, "quadratic", multipliers=(1.0, 3.0))
    loss = MultiKernelMMDLoss(multipliers=(1.0, 3.0))
    assert loss(torch.from_numpy(x), torch.from_numpy(y)).item() == pytest.approx(expected, rel=1e-10)


def test_mmd_of_a_set_with_itself_is_zero_and_quadratic_is_nonnegative():
    torch.manual_seed(0)
    x = torch.randn(16, 5, dtype=torch.float64) * 10 + 100  # far from the origin: checks precision
    assert abs(mk_mmd(x, x).item()) < 1e-10
    assert abs(mk_mmd(x.float(), x.float()).item()) < 1e-5
    for seed in range(5):
        torch.manual_seed(seed)
        assert mk_mmd(torch.randn(10, 3), torch.randn(12, 3)).item() >= 0


@pytest.mark.parametrize("estimator", ["quadratic", "linear"])
def test_mmd_grows_with_the_shift_of_the_target(estimator: str):
    torch.manual_seed(0)
    source, noise = torch.randn(128, 4), torch.randn(128, 4)
    values = [mk_mmd(source, noise + shift, estimator=estimator).item() for shift in (0.0, 0.5, 1.0, 2.0)]
    assert all(b > a for a, b in zip(values, values[1:])), values
    assert abs(values[0]) < 0.2 * values[-1]


@pytest.mark.parametrize("estimator", ["quadratic", "linear"])
def test_mmd_gradients_flow_and_treat_the_bandwidth_as_a_constant(estimator: str):
    rng = np.random.default_rng(5)
    x_np, y_np = rng.normal(size=(6, 3)), rng.normal(loc=1.0, size=(6, 3))
    x = torch.from_numpy(x_np).requires_grad_()
    y = torch.from_numpy(y_np).requires_grad_()
    gx, gy = torch.autograd.grad(mk_mmd(x, y, estimator=estimator), [x, y])
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0 and gy.abs().sum() > 0

    # Same statistic written directly in torch with the NumPy bandwidth as a plain number.
    base = _np_bandwidth(x_np, y_np)
    xr = torch.from_numpy(x_np).requires_grad_()
    yr = torch.from_numpy(y_np).requires_grad_()

    def k(a, b):
        d = ((a[:, None] - b[None]) ** 2).sum(-1)
        return sum(torch.exp(-d / (base * m)) for m in MULTIPLIERS)

    if estimator == "quadratic":
        ref = k(xr, xr).mean() + k(yr, yr).mean() - 2 * k(xr, yr).mean()
    else:
        x1, x2, y1, y2 = xr[0::2], xr[1::2], yr[0::2], yr[1::2]
        ref = (k(x1, x2).diagonal() + k(y1, y2).diagonal() - k(x1, y2).diagonal() - k(x2, y1).diagonal()).mean()
    rx, ry = torch.autograd.grad(ref, [xr, yr])
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gy, ry)


def test_mmd_input_validation():
    with pytest.raises(ValueError):
        mk_mmd(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError):
        mk_mmd(torch.randn(4, 3), torch.randn(4, 3), estimator="cubic")
    with pytest.raises(ValueError):
        mk_mmd(torch.randn(1, 3), torch.randn(4, 3), estimator="linear")
    with pytest.raises(ValueError):
        MultiKernelMMDLoss(multipliers=())
