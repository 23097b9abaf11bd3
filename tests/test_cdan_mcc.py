"""CDAN / CDAN+E (adaptation=cdan) and MCC (adaptation=mcc, adaptation.mcc_weight on another method): the
losses against the papers' equations written out in NumPy loops, their properties, and real runs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import TINY, assert_one_line_error, read_metrics, run_dirs, run_tlrun
from tlrun.data.sources import OPENCV_DIGITS
from tlrun.methods.cdan import (Cdan, CdanConfig, ConditionalDomainAdversarialLoss, RandomizedMultilinearMap,
                                entropy_weights, multilinear_map, uses_randomized_map)
from tlrun.methods.mcc import (Mcc, MccConfig, MinimumClassConfusionLoss, category_normalize, class_confusion,
                               confidence_weights, mcc_loss)
from tlrun.methods.alignment import DomainBatch


pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------- the papers' equations, written out


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_entropy(p: np.ndarray) -> np.ndarray:
    return np.array([-sum(v * math.log(v) for v in row if v > 0) for row in p])


def np_multilinear(f: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Long et al. 2018, T⊗(f, g) = f ⊗ g flattened: entry i·C + j = f_i g_j."""
    n, d = f.shape
    c = g.shape[1]
    out = np.zeros((n, d * c))
    for s in range(n):
        for i in range(d):
            for j in range(c):
                out[s, i * c + j] = f[s, i] * g[s, j]
    return out


def np_randomized(f: np.ndarray, g: np.ndarray, r_f: np.ndarray, r_g: np.ndarray) -> np.ndarray:
    """T⊙(f, g) = (1/√d_r) (R_f f) ⊙ (R_g g), R_f stored (d, d_r), R_g (C, d_r)."""
    n, d_r = f.shape[0], r_f.shape[1]
    out = np.zeros((n, d_r))
    for s in range(n):
        for k in range(d_r):
            out[s, k] = sum(f[s, i] * r_f[i, k] for i in range(f.shape[1])) \
                * sum(g[s, j] * r_g[j, k] for j in range(g.shape[1])) / math.sqrt(d_r)
    return out


def np_mcc(z: np.ndarray, temperature: float) -> dict[str, np.ndarray | float]:
    """Jin et al. 2020, Eq. 1-7, one step at a time."""
    b, c = z.shape
    y = np_softmax(z / temperature)
    h = np_entropy(y)
    raw = 1 + np.exp(-h)
    w = b * raw / raw.sum()
    conf = np.zeros((c, c))
    for j in range(c):
        for k in range(c):
            conf[j, k] = sum(y[i, j] * w[i] * y[i, k] for i in range(b))
    norm = np.zeros((c, c))
    for j in range(c):
        for k in range(c):
            norm[j, k] = conf[j, k] / sum(conf[m, k] for m in range(c))
    loss = sum(abs(norm[j, k]) for j in range(c) for k in range(c) if j != k) / c
    return {"predictions": y, "weights": w, "confusion": conf, "normalized": norm, "loss": loss}


# ---------------------------------------------------------------- CDAN


def test_multilinear_map_is_the_flattened_outer_product():
    rng = np.random.default_rng(0)
    f, g = rng.normal(size=(3, 5)), np_softmax(rng.normal(size=(3, 4)))
    out = multilinear_map(torch.from_numpy(f), torch.from_numpy(g))
    assert out.shape == (3, 5 * 4)
    np.testing.assert_allclose(out.numpy(), np_multilinear(f, g), rtol=1e-12)


def test_randomized_map_dimensions_and_value_for_given_matrices():
    rng = np.random.default_rng(1)
    f, g = rng.normal(size=(4, 6)), np_softmax(rng.normal(size=(4, 3)))
    layer = RandomizedMultilinearMap(6, 3, output_dim=7).double()
    assert layer.random_features.shape == (6, 7) and layer.random_predictions.shape == (3, 7)
    r_f, r_g = rng.normal(size=(6, 7)), rng.normal(size=(3, 7))
    layer.random_features.copy_(torch.from_numpy(r_f))
    layer.random_predictions.copy_(torch.from_numpy(r_g))
    out = layer(torch.from_numpy(f), torch.from_numpy(g))
    assert out.shape == (4, 7)
    np.testing.assert_allclose(out.numpy(), np_randomized(f, g, r_f, r_g), rtol=1e-10)
    # Fixed, not trained, and saved with the method.
    assert not list(layer.parameters())
    assert {"random_features", "random_predictions"} <= set(layer.state_dict())


def test_randomized_inner_products_estimate_the_multilinear_ones():
    # E[<T⊙(a), T⊙(b)>] = <f_a, f_b><g_a, g_b> = <T⊗(a), T⊗(b)> for Gaussian R (the paper's Theorem).
    torch.manual_seed(0)
    f = torch.randn(1, 8, dtype=torch.float64).repeat(2, 1) + 0.3 * torch.randn(2, 8, dtype=torch.float64)
    g = torch.softmax(torch.randn(1, 3, dtype=torch.float64).repeat(2, 1) + 0.3 * torch.randn(2, 3, dtype=torch.float64), 1)
    exact = multilinear_map(f, g)
    approx = RandomizedMultilinearMap(8, 3, output_dim=20000).double()(f, g)
    assert (approx[0] @ approx[1]).item() == pytest.approx((exact[0] @ exact[1]).item(), rel=0.1)


def _cdan_cfg(**overrides):
    return OmegaConf.create({**dataclasses.asdict(CdanConfig()), "method": "cdan", **overrides})


def test_auto_uses_the_randomized_map_above_4096_dims_and_the_matrices_follow_the_seed():
    assert not uses_randomized_map("auto", 100, 10) and uses_randomized_map("auto", 410, 10)
    assert uses_randomized_map(True, 2, 2) and not uses_randomized_map(False, 2048, 31)
    cfg = _cdan_cfg(discriminator_width=8, randomized_dim=16)
    small, large = Cdan(cfg, 100, 10), Cdan(cfg, 500, 10)
    assert small.adversarial.map is None and small.adversarial.discriminator.net[0].in_features == 1000
    assert large.adversarial.map is not None and large.adversarial.discriminator.net[0].in_features == 16
    torch.manual_seed(3)
    first = Cdan(cfg, 500, 10).state_dict()["adversarial.map.random_features"]
    torch.manual_seed(3)
    again = Cdan(cfg, 500, 10).state_dict()["adversarial.map.random_features"]
    torch.manual_seed(4)
    other = Cdan(cfg, 500, 10).state_dict()["adversarial.map.random_features"]
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_entropy_weights_are_one_plus_exp_minus_entropy_normalised_to_mean_one():
    rng = np.random.default_rng(2)
    p = np_softmax(3 * rng.normal(size=(6, 4)))
    raw = 1 + np.exp(-np_entropy(p))
    np.testing.assert_allclose(entropy_weights(torch.from_numpy(p)).numpy(), 6 * raw / raw.sum(), rtol=1e-12)
    # A one-hot prediction (H = 0) weighs 2, a uniform one 1 + 1/C, before normalisation.
    ends = entropy_weights(torch.tensor([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64))
    assert (ends[0] / ends[1]).item() == pytest.approx(2 / 1.25)


@pytest.mark.parametrize("entropy", [False, True])
@pytest.mark.parametrize("randomized", [False, True])
def test_cdan_loss_is_the_numpy_weighted_bce(entropy: bool, randomized: bool):
    torch.manual_seed(5)
    loss_fn = ConditionalDomainAdversarialLoss(3, 4, entropy_conditioning=entropy, randomized=randomized,
                                               randomized_dim=5, hidden=6, depth=1, dropout=0.0).double().eval()
    f_s, f_t = torch.randn(5, 3, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    z_s, z_t = 2 * torch.randn(5, 4, dtype=torch.float64), 2 * torch.randn(3, 4, dtype=torch.float64)
    loss, stats = loss_fn(f_s, z_s, f_t, z_t)
    g = np_softmax(torch.cat([z_s, z_t]).numpy())
    f = torch.cat([f_s, f_t]).numpy()
    if randomized:
        mapped = np_randomized(f, g, loss_fn.map.random_features.numpy(), loss_fn.map.random_predictions.numpy())
    else:
        mapped = np_multilinear(f, g)
    with torch.no_grad():
        d = loss_fn.discriminator(torch.from_numpy(mapped)).numpy()
    labels = np.array([1.0] * 5 + [0.0] * 3)
    prob = 1 / (1 + np.exp(-d))
    bce = -(labels * np.log(prob) + (1 - labels) * np.log(1 - prob))
    w = 1 + np.exp(-np_entropy(g)) if entropy else np.ones(8)
    assert loss.item() == pytest.approx(float((w * bce).sum() / w.sum()), rel=1e-10)
    assert stats["domain_acc"] == pytest.approx(float(((d > 0) == (labels > 0)).mean()))


def test_cdan_reverses_the_gradient_to_the_features_only_and_detaches_the_predictions():
    torch.manual_seed(6)
    loss_fn = ConditionalDomainAdversarialLoss(3, 4, hidden=6, depth=1, dropout=0.0, max_weight=0.5,
                                               schedule="constant").double()
    f = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    loss_fn.set_progress(0.4)
    loss, stats = loss_fn(f[:4], z[:4], f[4:], z[4:])
    grad_f, grad_z = torch.autograd.grad(loss, [f, z], allow_unused=True)
    assert stats["lambda"] == 0.5
    assert grad_z is None or not grad_z.any()  # g is detached: the classifier is not trained by the game
    # Without the GRL the same loss gives the gradient that R_λ scales by -λ.
    g = torch.softmax(z.detach(), 1)
    logits = loss_fn.discriminator(multilinear_map(f, g))
    plain = F.binary_cross_entropy_with_logits(logits, torch.cat([torch.ones(4), torch.zeros(4)]).double())
    (direct,) = torch.autograd.grad(plain, f)
    torch.testing.assert_close(grad_f, -0.5 * direct)
    loss_fn.set_progress(None)  # the warm-up: no gradient reaches the features, the discriminator still learns
    loss, stats = loss_fn(f[:4], z[:4], f[4:], z[4:])
    grad_f, grad_w = torch.autograd.grad(loss, [f, loss_fn.discriminator.net[0].weight])
    assert stats["lambda"] == 0.0 and not grad_f.any() and grad_w.abs().sum() > 0


# ---------------------------------------------------------------- MCC

HAND_MADE = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [0.0, 0.0, 4.0], [1.5, 1.4, -0.5]])


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_mcc_steps_and_loss_match_the_papers_equations(temperature: float):
    expected = np_mcc(HAND_MADE, temperature)
    logits = torch.from_numpy(HAND_MADE)
    y = torch.softmax(logits / temperature, 1)
    weights = confidence_weights(y)
    confusion = class_confusion(y, weights)
    normalized = category_normalize(confusion)
    np.testing.assert_allclose(weights.numpy(), expected["weights"], rtol=1e-12)
    np.testing.assert_allclose(confusion.numpy(), expected["confusion"], rtol=1e-12)
    np.testing.assert_allclose(normalized.numpy(), expected["normalized"], rtol=1e-12)
    np.testing.assert_allclose(normalized.sum(0).numpy(), np.ones(3), rtol=1e-12)  # columns sum to 1
    assert mcc_loss(logits, temperature).item() == pytest.approx(expected["loss"], rel=1e-12)
    assert MinimumClassConfusionLoss(temperature)(logits).item() == pytest.approx(expected["loss"], rel=1e-12)


def test_mcc_is_zero_for_confident_distinct_classes_and_highest_for_uniform_predictions():
    c = 4
    confident = torch.eye(c, dtype=torch.float64)[[2, 0, 3, 1]] * 1000.0  # every class once, one-hot after T
    assert mcc_loss(confident).item() == pytest.approx(0.0, abs=1e-12)
    assert mcc_loss(torch.zeros(6, c, dtype=torch.float64)).item() == pytest.approx((c - 1) / c)
    # Confident diagonal-ish predictions are less confused than soft ones, and T softens them.
    rng = np.random.default_rng(3)
    labels = rng.integers(0, c, size=32)
    logits = torch.from_numpy(np.eye(c)[labels] * 6.0 + 0.3 * rng.normal(size=(32, c)))
    assert mcc_loss(logits, 1.0) < mcc_loss(logits, 2.5) < mcc_loss(logits / 6.0, 2.5) < (c - 1) / c
    # As documented: a class no sample predicts still gets a normalised column (about 1/C of loss each).
    assert mcc_loss(confident[:2]).item() == pytest.approx(2 / c, abs=1e-6)


def test_mcc_gradient_lowers_the_class_confusion_and_ignores_the_weights():
    torch.manual_seed(7)
    logits = torch.randn(16, 5, requires_grad=True)
    before = mcc_loss(logits).item()
    optimizer = torch.optim.SGD([logits], lr=100.0)  # gradients are small: ∂L/∂z carries 1/(T·B·C) factors
    for _ in range(30):
        optimizer.zero_grad()
        mcc_loss(logits).backward()
        optimizer.step()
    assert mcc_loss(logits).item() < 0.2 * before
    assert not confidence_weights(torch.softmax(logits, 1)).requires_grad  # W: constants of the step


def test_mcc_method_uses_target_logits_weight_and_warm_up():
    cfg = OmegaConf.create({**dataclasses.asdict(MccConfig()), "method": "mcc", "schedule": "constant",
                            "weight": 0.3, "mcc_temperature": 2.0, "warmup_epochs": 0, "warmup_source_acc": 0.0})
    method = Mcc(cfg, 7, 3)
    source = DomainBatch(torch.randn(4, 7), torch.randn(4, 3))
    target = DomainBatch(torch.full((5, 7), float("nan")), torch.from_numpy(HAND_MADE).float())  # features unused
    loss, stats = method(source, target, 0.5)
    assert stats == {"lambda": 0.3}
    assert loss.item() == pytest.approx(0.3 * np_mcc(HAND_MADE, 2.0)["loss"], rel=1e-5)
    warming = Mcc(OmegaConf.merge(cfg, {"warmup_epochs": 1}), 7, 3)
    assert warming(source, target, 0.5)[0].item() == 0.0


def test_warm_up_with_no_accuracy_threshold_ends_after_its_epochs_even_below_chance():
    # warmup_source_acc=0 means "epochs only": a tiny run's first epoch is often below chance (1/C).
    cfg = OmegaConf.create({**dataclasses.asdict(MccConfig()), "method": "mcc", "warmup_epochs": 1,
                            "warmup_source_acc": 0.0})
    method = Mcc(cfg, 4, 10)
    method.end_epoch({"epoch": 1, "train_acc": 0.05}, epochs=4)
    assert method.aligned_progress(0.25) == 0.0 and method.weight(0.625) > 0
    strict = Mcc(OmegaConf.merge(cfg, {"warmup_source_acc": 0.5}), 4, 10)
    strict.end_epoch({"epoch": 1, "train_acc": 0.05}, epochs=4)
    assert strict.aligned_progress(0.5) is None and strict.weight(0.5) == 0.0


# ---------------------------------------------------------------- real runs

needs_cvdigits = pytest.mark.skipif(not OPENCV_DIGITS.is_file(), reason="opencv-doc is not installed")
DA_TINY = ["model=lenet", "data=cvdigits", "data.target=cvdigits_m", "data.max_per_class=12", "data.image_size=16",
           "train.epochs=2", "train.batch_size=16", *TINY]
NO_WARMUP = ["adaptation.warmup_epochs=0", "adaptation.warmup_source_acc=0"]


@needs_cvdigits
@pytest.mark.parametrize("args, column, cdan_map", [
    (["adaptation=cdan"], "domain_loss", "multilinear"),  # LeNet: d·C = 100 x 10 <= 4096
    (["adaptation=cdan", "adaptation.entropy=true", "adaptation.randomized=true", "adaptation.randomized_dim=64"],
     "domain_loss", "randomized"),
    (["adaptation=mcc"], "mcc_loss", None),
])
def test_cdan_and_mcc_runs_write_their_loss_columns(tmp_path: Path, args: list[str], column: str, cdan_map):
    result = run_tlrun([*args, *DA_TINY, *NO_WARMUP], tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    history = pd.read_csv(run_dir / "ft_history.csv")
    assert (history[column] > 0).all()
    assert 0 < history["lambda"].iloc[0] < history["lambda"].iloc[-1] <= 1.0  # the shared ramp, from epoch 1
    metrics = read_metrics(run_dir)
    method = args[0].split("=")[1]
    assert metrics["pipeline"] == method and metrics["adaptation"] == method
    if cdan_map:
        assert {"domain_acc", "discriminator_active"} <= set(history.columns)
        # metrics.json's game state is the history's last epoch (a copy, not another measurement).
        assert metrics["cdan_map"] == cdan_map
        assert metrics["domain_acc_last"] == pytest.approx(history["domain_acc"].iloc[-1])


@needs_cvdigits
def test_mcc_regularises_dann_after_the_shared_warm_up(tmp_path: Path):
    result = run_tlrun(["adaptation=dann", "adaptation.mcc_weight=1", "adaptation.warmup_epochs=1",
                        "adaptation.warmup_source_acc=0", "adaptation.discriminator_width=64", *DA_TINY], tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    history = pd.read_csv(run_dir / "ft_history.csv")
    assert history["mcc_loss"].tolist()[0] == 0.0 and history["lambda"].iloc[0] == 0.0  # warm-up: both off
    assert history["mcc_loss"].iloc[1] > 0 and history["lambda"].iloc[1] > 0
    assert "domain_loss" in history
    metrics = read_metrics(run_dir)
    assert metrics["pipeline"] == "dann" and metrics["adaptation"] == "dann"


def keys_of(node) -> str:
    """The method's own keys, sorted as the error lists them (CDAN's include DANN's discriminator keys)."""
    return ", ".join(sorted(field.name for field in dataclasses.fields(node)))


@pytest.mark.parametrize("args, needles", [
    (["adaptation=cdan", "adaptation.mmd_estimator=linear"],
     ["unknown key 'adaptation.mmd_estimator'", f"valid keys in adaptation=cdan: {keys_of(CdanConfig)}",
      "discriminator_width, entropy"]),
    (["adaptation=mcc", "adaptation.discriminator_width=8"],
     ["unknown key 'adaptation.discriminator_width'", f"valid keys in adaptation=mcc: {keys_of(MccConfig)}"]),
    (["adaptation=none", "adaptation.mcc_weight=1", "data.target=cvdigits_m"],
     ["unknown key 'adaptation.mcc_weight'", "valid keys in adaptation=none:"]),
    (["adaptation=mcc", "adaptation.mcc_weight=1", "data.target=cvdigits_m"],
     ["adaptation.mcc_weight=1", "the trade-off is adaptation.weight"]),
    (["adaptation=cdan", "adaptation.randomized=maybe", "data.target=cvdigits_m"],
     ["invalid value for adaptation.randomized: 'maybe'", "auto"]),
])
def test_wrong_keys_are_refused_with_the_methods_keys(tmp_path: Path, args: list[str], needles: list[str]):
    result = run_tlrun(args, tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, *needles)
    assert not list(tmp_path.rglob("*.json"))
