"""Domain adaptation pipeline: paired loaders, feature taps, domain gap, end-to-end runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import PLOTS, TINY, assert_one_line_error, read_metrics, run_dirs, run_tlrun
from tlrun.errors import ConfigError
from tlrun.data.sources import OPENCV_DIGITS
from tlrun.methods.domain_gap import proxy_a_distance
from tlrun.data.loaders import PairedBatches
from tlrun.features import FeatureTap


def test_paired_batches_cycle_the_shorter_loader():
    source = DataLoader(TensorDataset(torch.arange(10)), batch_size=2)  # 5 batches
    target = DataLoader(TensorDataset(torch.arange(100, 104)), batch_size=2)  # 2 batches
    pairs = list(PairedBatches(source, target))
    assert len(pairs) == 5  # the longer loader sets the epoch: nothing is truncated
    assert torch.cat([s[0] for s, _ in pairs]).tolist() == list(range(10))
    assert [t[0].tolist() for _, t in pairs] == [[100, 101], [102, 103], [100, 101], [102, 103], [100, 101]]


def test_feature_tap_keeps_head_input_or_a_named_layer():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    tap, layer_tap = FeatureTap(model, "2"), FeatureTap(model, "0", side="output")
    x = torch.randn(5, 4)
    model(x)
    assert torch.allclose(tap.features, model[1](model[0](x)))
    assert torch.allclose(layer_tap.features, model[0](x))
    with FeatureTap(model, "2", stop=True) as stopping:  # the forward ends before the head
        assert torch.allclose(stopping(x), model[1](model[0](x)))
    layer_tap.remove()
    model(x + 1)
    assert torch.allclose(layer_tap.features, model[0](x))  # removed: no longer updated
    with pytest.raises(ConfigError, match="adaptation.feature_layer=conv9 is not a module"):
        FeatureTap(model, "conv9", side="output", key="adaptation.feature_layer")


def test_proxy_a_distance_separable_vs_identical():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 8))
    assert proxy_a_distance(a, a + 5.0) > 1.9
    assert proxy_a_distance(a, rng.normal(size=(300, 8))) < 0.4


needs_cvdigits = pytest.mark.skipif(not OPENCV_DIGITS.is_file(), reason="opencv-doc is not installed")
DA_TINY = ["model=lenet", "data=cvdigits", "data.target=cvdigits_m", "data.max_per_class=12", "data.image_size=16",
           "train.epochs=2", "train.batch_size=16", *TINY]
NO_WARMUP = ["adaptation.warmup_epochs=0", "adaptation.warmup_source_acc=0"]  # align from the first step


@needs_cvdigits
@pytest.mark.parametrize("method, loss_column", [("dann", "domain_loss"), ("mmd", "mmd_loss"), ("none", None)])
def test_adaptation_run_writes_target_columns_and_gap(tmp_path: Path, method: str, loss_column: str):
    plots = PLOTS if method == "dann" else []  # the others: train.plots=false leaves every plot out
    result = run_tlrun([f"adaptation={method}", *DA_TINY, *(NO_WARMUP if loss_column else []), *plots], tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    history = pd.read_csv(run_dir / "ft_history.csv")
    for column in ["cls_loss", "source_val_acc", "target_acc"] + ([loss_column, "lambda"] if loss_column else []):
        assert column in history.columns, column
    assert (history["source_val_acc"] == history["val_acc"]).all()
    if loss_column:
        # The DANN schedule rises from 0 towards adaptation.weight over training.
        assert 0 < history["lambda"].iloc[0] < history["lambda"].iloc[-1] <= 1.0
    metrics = read_metrics(run_dir)
    assert metrics["pipeline"] == {"none": "source_only"}.get(method, method)
    # The selected checkpoint's target accuracy is the history's at the best source-val epoch.
    assert metrics["target_acc"] == pytest.approx(history["target_acc"].iloc[metrics["best_epoch"] - 1])
    assert metrics["target_acc_last"] == pytest.approx(history["target_acc"].iloc[-1])
    for stage in ("domain_gap_before", "domain_gap_after"):
        assert set(metrics[stage]) == {"mmd", "a_distance"}
    if method == "dann":  # the game's last state, the same figures as the history's last row
        assert 0.0 < history["discriminator_active"].max() <= 1.0  # a live first layer, as a fraction
        assert metrics["domain_acc_last"] == pytest.approx(history["domain_acc"].iloc[-1])
        assert metrics["discriminator_active_last"] == pytest.approx(history["discriminator_active"].iloc[-1])
    else:
        assert "discriminator_active_last" not in metrics
    drawn = {p.name for p in run_dir.glob("*.png")}
    assert drawn == ({"features.png", "curves.png", "confusion_matrix.png"} if plots else set())
    assert (run_dir / "classification_report.txt").is_file()  # not a plot: written either way


@needs_cvdigits
@pytest.mark.parametrize("args, needles", [
    (["adaptation=dann", "model=lenet"], ["needs a target domain", "data.target"]),
    (["adaptation=dann", "model=lenet", "data.target=cvdigitz"], ["unknown dataset 'cvdigitz' (data.target=)", "cvdigits"]),
    (["adaptation=mmd", "model=lenet", "data=cvdigits", "data.target=fashion_mnist", "data.max_per_class=5"], []),
])
def test_bad_adaptation_inputs(tmp_path: Path, args, needles):
    result = run_tlrun([*args, *TINY], tmp_path)
    if not needles:  # same class count (10), different names: allowed, matched by position
        assert result.returncode == 0, result.stderr
        return
    assert_one_line_error(result, *needles)
    assert run_dirs(tmp_path) == []


def test_target_with_other_class_count(tmp_path: Path, image_folder: Path):
    result = run_tlrun(["adaptation=dann", "model=lenet", "data=digits", f"data.target_root={image_folder}",
                        "data.max_per_class=5", *TINY], tmp_path)
    assert_one_line_error(result, "3 classes", "10")
    assert run_dirs(tmp_path) == []


def test_image_folder_pair_like_office31(tmp_path: Path):
    from conftest import make_image_folder

    source = make_image_folder(tmp_path / "amazon", per_class=8, seed=0)
    target = make_image_folder(tmp_path / "webcam", per_class=8, seed=1, size=48)
    result = run_tlrun(["adaptation=dann", "model=lenet", "data=imagefolder", f"data.root={source}",
                        f"data.target_root={target}", "data.image_size=16", "train.epochs=1", "train.batch_size=8",
                        *TINY], tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = read_metrics(run_dirs(tmp_path)[0])
    assert metrics["target"] == "imagefolder" and metrics["target_test_size"] > 0


def test_anneal_schedule_is_the_dann_papers():
    from tlrun.engine import lr_multiplier

    factor = lr_multiplier("anneal", total_steps=200, steps_per_epoch=20, warmup_steps=0)
    assert factor(0) == 1.0
    # mu_p = mu_0 / (1 + 10 p)^0.75 (Ganin et al. 2016, Sec. 5.2.2)
    assert factor(100) == pytest.approx(6 ** -0.75)
    assert factor(200) == pytest.approx(11 ** -0.75)
    assert factor(400) == pytest.approx(11 ** -0.75)  # held at the end


@needs_cvdigits
def test_discriminator_lr_mult_sets_the_discriminator_group(tmp_path: Path):
    result = run_tlrun(["adaptation=dann", *DA_TINY, "train.epochs=1", "train.scheduler=none",
                        "adaptation.discriminator_lr_mult=10"], tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    groups = state["optimizer"]["param_groups"]
    assert groups[-1]["stage"] == "dann"  # the method's own parameter group
    assert groups[-1]["lr"] == pytest.approx(10 * groups[0]["lr"])
    assert all(group["lr"] == pytest.approx(groups[0]["lr"]) for group in groups[:-1])


def test_build_method_passes_the_discriminator_shape_and_dropout():
    from omegaconf import OmegaConf

    from tlrun.methods.dann import DannConfig
    from tlrun.pipelines.adaptation import build_method

    cfg = OmegaConf.structured(DannConfig(method="dann", discriminator_width=7, discriminator_depth=2,
                                          discriminator_dropout=0.25))
    module = build_method(cfg, feature_dim=5, num_classes=3)
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 7), (7, 7), (7, 1)]
    assert [m.p for m in module.modules() if isinstance(m, torch.nn.Dropout)] == [0.25, 0.25]


def test_a_method_draws_its_random_numbers_from_its_own_stream():
    """DANN's discriminator (dropout 0.5) is initialised and runs on a stream of its own: the run's stream is
    untouched by it, the same seed builds the same method, and the stream travels in the method's state."""
    from omegaconf import OmegaConf

    from tlrun.methods.alignment import DomainBatch
    from tlrun.methods.dann import DannConfig
    from tlrun.pipelines.adaptation import build_method

    cfg = OmegaConf.structured(DannConfig(method="dann", discriminator_width=16, warmup_epochs=0,
                                          warmup_source_acc=0.0))
    torch.manual_seed(123)
    run_stream = torch.get_rng_state()
    method = build_method(cfg, feature_dim=4, num_classes=3, seed=5).train()
    assert torch.equal(torch.get_rng_state(), run_stream)  # building it drew nothing from the run's stream
    twin = build_method(cfg, feature_dim=4, num_classes=3, seed=5).train()
    other = build_method(cfg, feature_dim=4, num_classes=3, seed=6)
    params = [p for p in method.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(params, twin.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(params, other.parameters()))

    batch = DomainBatch(torch.randn(8, 4), torch.randn(8, 3))
    run_stream = torch.get_rng_state()

    def step(module):
        with module.random_stream(torch.device("cpu")):
            return module(batch, batch, 0.5)[0]

    first = step(method)
    assert torch.equal(torch.get_rng_state(), run_stream)  # its dropout masks came from its own stream
    saved = method.state_dict()
    second = step(method)
    assert first.item() != second.item()  # the stream moves on: new masks each step
    assert step(twin).item() == first.item()
    twin.load_state_dict(saved)  # a resumed run continues the stream where the checkpoint left it
    assert step(twin).item() == second.item()
    old_checkpoint = {k: v for k, v in saved.items() if k != "_extra_state"}  # written before the stream existed
    twin.load_state_dict(old_checkpoint)
    assert torch.equal(torch.get_rng_state(), run_stream)


def test_a_source_warm_up_step_trains_the_discriminator_and_leaves_the_network_step_source_only():
    """In the default warm-up the network's gradients, BatchNorm statistics and random numbers are exactly a
    source-only step's; DANN's discriminator gets a gradient from the joint batch's features meanwhile."""
    import copy

    from omegaconf import OmegaConf

    from tlrun.engine import Placement
    from tlrun.methods.dann import DannConfig
    from tlrun.pipelines.adaptation import AdaptationStep, build_method

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(),
                                torch.nn.Dropout(0.5), torch.nn.Linear(5, 3))
    cfg = OmegaConf.structured(DannConfig(method="dann", discriminator_width=8))
    placement = Placement(torch.device("cpu"))
    source, labels, target = torch.randn(8, 6), torch.randint(0, 3, (8,)), torch.randn(8, 6) + 3

    def warm_up_step(method):
        net = copy.deepcopy(model).train()
        tap = FeatureTap(net, "4")
        step = AdaptationStep(net, tap, placement, method)
        torch.manual_seed(1)
        out = step(((source, labels), (target, torch.zeros(8, dtype=torch.long))), 0.1)
        out.loss.backward()
        return net, out, torch.get_rng_state()

    reference, reference_out, reference_rng = warm_up_step(None)  # source-only
    method = build_method(cfg, feature_dim=5, num_classes=3).train()
    assert float(method.start_progress) < 0  # warming up
    net, out, rng = warm_up_step(method)
    assert torch.equal(rng, reference_rng)  # the extra pass drew no random numbers from the run's stream
    for (name, a), b in zip(net.named_parameters(), reference.parameters()):
        assert torch.equal(a.grad, b.grad), name
    for (name, a), b in zip(net.named_buffers(), reference.buffers()):
        assert torch.equal(a, b), name  # running statistics of the source batch alone
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters() if p.dim() > 1)
    assert out.logs["lambda"] == 0.0 and 0.0 <= out.logs["domain_acc"] <= 1.0
    assert out.loss.item() > reference_out.loss.item()  # the discriminator's BCE is part of the step's loss


@needs_cvdigits
def test_grad_clip_clips_the_network_apart_from_the_discriminator(tmp_path: Path):
    """With train.grad_clip the network's gradient norm is clipped without the discriminator's: a DANN run
    still in its source warm-up (threshold never reached) trains the network exactly as source-only does."""
    clip = ["train.grad_clip=0.05", "train.scheduler=none"]
    weights = {}
    for method, extra in (("none", []), ("dann", ["adaptation.warmup_source_acc=1"])):
        result = run_tlrun([f"adaptation={method}", *DA_TINY, *clip, *extra, f"hydra.run.dir={tmp_path / method}"],
                           tmp_path)
        assert result.returncode == 0, result.stderr
        state = torch.load(tmp_path / method / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
        weights[method] = state["model"]
    assert weights["dann"].keys() == weights["none"].keys()
    for name, value in weights["none"].items():
        assert torch.equal(weights["dann"][name], value), name
    history = pd.read_csv(tmp_path / "dann" / "ft_history.csv")
    assert history["lambda"].eq(0).all() and history["domain_acc"].notna().all()  # the discriminator trained


def test_an_interrupted_dann_run_resumes_bit_exactly(tmp_path: Path, monkeypatch):
    """The discriminator's dropout stream is checkpointed with it: SIGTERM after epoch 2, train.resume=auto,
    and the history and weights equal an uninterrupted run's."""
    from conftest import history_written, sigterm_after
    from tlrun.engine import Engine

    args = ["adaptation=dann", *DA_TINY, "train.epochs=4", *NO_WARMUP, "seed=2"]
    reference = tmp_path / "reference"
    assert run_tlrun([*args, f"hydra.run.dir={reference}"], tmp_path).returncode == 0
    work = tmp_path / "work"
    work.mkdir()
    with monkeypatch.context() as patch:
        sigterm_after(patch, Engine, "write_history", history_written(2))
        assert run_tlrun(args, work).returncode == 75
    resumed = run_tlrun([*args, "train.resume=auto"], work)
    assert resumed.returncode == 0, resumed.stderr
    (run_dir,) = run_dirs(work)
    ours, theirs = pd.read_csv(run_dir / "ft_history.csv"), pd.read_csv(reference / "ft_history.csv")
    columns = ["epoch", "train_loss", "train_acc", "val_acc", "domain_loss", "domain_acc", "target_acc"]
    pd.testing.assert_frame_equal(ours[columns], theirs[columns])
    mine, reference_state = (torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (run_dir, reference))
    assert all(torch.equal(v, reference_state["auxiliary"][k]) for k, v in mine["auxiliary"].items()
               if isinstance(v, torch.Tensor))


def test_dann_digits_experiment_is_the_papers_recipe(tmp_path: Path):
    from omegaconf import OmegaConf

    result = run_tlrun(["--cfg", "job", "experiment=dann_digits", "data=cvdigits", "data.target=cvdigits_m"], tmp_path)
    assert result.returncode == 0, result.stderr
    cfg = OmegaConf.create(result.stdout)
    assert cfg.model.name == "lenet" and cfg.adaptation.method == "dann"
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.momentum, cfg.train.scheduler) == ("sgd", 0.01, 0.9, "anneal")
    assert (cfg.adaptation.schedule, cfg.adaptation.gamma, cfg.adaptation.weight) == ("dann", 10.0, 1.0)
    assert cfg.adaptation.feature_layer == "pool"  # the conv feature extractor's output
    assert (cfg.adaptation.discriminator_width, cfg.adaptation.discriminator_depth) == (100, 1)
    assert cfg.adaptation.discriminator_dropout == 0.0 and cfg.adaptation.discriminator_batch_norm is False
    assert cfg.adaptation.discriminator_activation == "relu"


def test_a_collapsed_relu_discriminator_is_reported(caplog):
    import pandas as pd

    from tlrun.methods.dann import warn_if_discriminator_collapsed

    with caplog.at_level("WARNING"):
        warn_if_discriminator_collapsed(pd.DataFrame({"discriminator_active": [0.9, 0.5]}))
        assert not caplog.records
        warn_if_discriminator_collapsed(pd.DataFrame({"discriminator_active": [0.9, 0.03]}))
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "3% of its hidden units" in message and "discriminator_activation=leaky_relu" in message


@needs_cvdigits
def test_source_warm_up_starts_the_domain_loss_later_and_is_checkpointed(tmp_path: Path):
    from tlrun.methods.alignment import dann_lambda

    result = run_tlrun(["adaptation=mmd", *DA_TINY, "train.epochs=3", "adaptation.warmup_epochs=1",
                        "adaptation.warmup_source_acc=0", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    history = pd.read_csv(tmp_path / "run" / "ft_history.csv")
    assert history["lambda"].iloc[0] == 0.0 and history["mmd_loss"].iloc[0] == 0.0  # epoch 1: source only
    # Epochs 2-3 ramp over the aligned progress p' = (p - 1/3) / (2/3): epoch 2 covers p' in [0, 1/2).
    assert 0 < history["lambda"].iloc[1] < dann_lambda(0.5) < history["lambda"].iloc[2] < dann_lambda(1.0)
    metrics = read_metrics(tmp_path / "run")
    from tlrun.methods.alignment import collapsed

    assert metrics["alignment_start_epoch"] == 2
    assert metrics["collapsed"] is (collapsed(history, 10) is not None)  # the tiny run may sit at chance
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["auxiliary"]["start_progress"].item() == pytest.approx(1 / 3)  # a resume keeps the schedule


def test_collapse_detector_names_the_trivial_solution_and_the_fixes():
    from tlrun.methods.alignment import collapsed

    healthy = pd.DataFrame({"epoch": [1, 2, 3, 4], "train_acc": [0.3, 0.6, 0.8, 0.9], "lambda": [0, 0.3, 0.7, 0.9],
                            "feature_std": [1.0, 1.1, 1.0, 0.9]})
    assert collapsed(healthy, 10) is None
    # Aligned from the first step: accuracy never leaves chance while the features shrink to a constant.
    trivial = pd.DataFrame({"epoch": [1, 2, 3, 4], "train_acc": [0.11, 0.1, 0.1, 0.1], "lambda": [0.2, 0.6, 0.8, 0.9],
                            "feature_std": [0.5, 0.05, 0.004, 0.001]})
    message = collapsed(trivial, 10)
    assert message is not None and "trivial aligned solution" in message
    assert "adaptation.warmup_epochs" in message and "adaptation.weight" in message
    # Shrunk features with a confident source classifier are not a collapse; chance accuracy with spread
    # features is (DANN's game can keep the classifier at chance without shrinking them), worded so.
    assert collapsed(trivial.assign(train_acc=[0.5, 0.9, 0.95, 0.97]), 10) is None
    spread = collapsed(trivial.assign(feature_std=[0.5, 0.5, 0.6, 0.7]), 10)
    assert spread is not None and "kept the classifier from learning" in spread
    # One noisy epoch above chance before the last: shrunk features plus a last epoch at chance still say
    # collapse; without the shrinkage it takes two epochs at chance.
    noisy = trivial.assign(train_acc=[0.11, 0.1, 0.25, 0.1])
    assert "trivial aligned solution" in collapsed(noisy, 10)
    assert collapsed(noisy.assign(feature_std=[0.5, 0.5, 0.6, 0.7]), 10) is None
    assert collapsed(noisy.assign(train_acc=[0.11, 0.1, 0.1, 0.25]), 10) is None


def test_a_warm_up_that_lasts_the_whole_run_is_reported_in_one_line(caplog):
    """The domain loss never acted, whether the threshold was never reached or reached only in the last epoch
    (the loss would start after the run); a run whose loss did act is not reported."""
    import logging

    from omegaconf import OmegaConf

    from tlrun.methods.mmd import MmdConfig
    from tlrun.pipelines.adaptation import build_method

    method = build_method(OmegaConf.structured(MmdConfig(method="mmd")), feature_dim=4, num_classes=10)
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_acc": [0.1, 0.2, 0.3], "lambda": [0.0, 0.0, 0.0],
                            "feature_std": [1.0, 1.0, 1.0]})
    for row, expected in ((history.iloc[-1], "in no epoch"), (history.iloc[-1].copy(), "only in the last epoch")):
        if expected == "only in the last epoch":
            row["train_acc"] = 0.6
            method.end_epoch(row.to_dict(), epochs=3)  # the threshold met after the last epoch: p0 = 1
            assert float(method.start_progress) == 1.0
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            method.check_history(history)
        (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert "never started" in record.getMessage() and expected in record.getMessage()
        assert "adaptation.warmup_source_acc" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        method.check_history(history.assign(**{"lambda": [0.0, 0.5, 0.9], "train_acc": [0.3, 0.7, 0.9]}))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_label_free_validators_match_direct_computations():
    from tlrun.methods import validators

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=6)
    entropy = -(p * np.log(p)).sum(axis=1)
    assert validators.mean_entropy(torch.from_numpy(p)) == pytest.approx(entropy.mean())
    mean = p.mean(axis=0)
    assert validators.information_maximization(torch.from_numpy(p)) == pytest.approx(
        -(mean * np.log(mean)).sum() - entropy.mean())
    # SND by plain loops: L2-normalised predictions, similarities / 0.05, softmax over the other samples.
    f = p / np.linalg.norm(p, axis=1, keepdims=True)
    snd = []
    for i in range(len(f)):
        others = np.array([f[i] @ f[j] / 0.05 for j in range(len(f)) if j != i])
        q = np.exp(others - others.max()) / np.exp(others - others.max()).sum()
        snd.append(-(q * np.log(q)).sum())
    assert validators.soft_neighborhood_density(torch.from_numpy(p)) == pytest.approx(np.mean(snd))
    # DEV: the control variate removes the part of the weighted loss that the weights' noise explains.
    losses, weights = rng.uniform(0, 2, 50), rng.uniform(0.2, 3, 50)
    weighted = weights * losses
    eta = -np.cov(weighted, weights)[0, 1] / np.var(weights, ddof=1)
    assert validators.deep_embedded_validation(losses, weights) == pytest.approx(weighted.mean() + eta * weights.mean() - eta)
    assert validators.deep_embedded_validation(losses, np.ones(50)) == pytest.approx(losses.mean())  # w = 1: plain risk
    # Density ratios: target-like validation samples get larger weights than source-like ones.
    source, target = rng.normal(0, 1, (200, 3)), rng.normal(2, 1, (200, 3))
    ratios = validators.density_ratios(source, target, np.array([[0.0, 0, 0], [2.0, 2, 2]]))
    assert ratios[1] > 10 * ratios[0]


@needs_cvdigits
@pytest.mark.parametrize("select_by", ["entropy", "last"])
def test_select_by_a_label_free_validator_keeps_that_epochs_checkpoint(tmp_path: Path, select_by: str):
    from tlrun.methods.validators import SELECTION

    result = run_tlrun(["adaptation=none", *DA_TINY, "train.epochs=3", f"adaptation.select_by={select_by}",
                        f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    history = pd.read_csv(tmp_path / "run" / "ft_history.csv")
    assert {"target_entropy", "target_im", "target_snd", "dev_risk"} <= set(history.columns)
    assert history[["target_entropy", "target_snd", "dev_risk"]].notna().all().all()
    column, mode = SELECTION[select_by]
    expected = int(history.loc[history[column].idxmin() if mode == "min" else history[column].idxmax(), "epoch"])
    metrics = read_metrics(tmp_path / "run")
    assert metrics["best_epoch"] == expected and metrics["select_by"] == select_by
    # The kept checkpoint is that epoch's: its target accuracy is the history's at that epoch.
    assert metrics["target_acc"] == pytest.approx(history["target_acc"].iloc[expected - 1])
    picks = metrics["validator_picks"]
    assert set(picks) == {"source_val", "entropy", "im", "snd", "dev", "last"} and picks["last"]["epoch"] == 3
    assert picks[select_by]["epoch"] == expected


def test_a_label_free_validator_without_a_target_is_refused(tmp_path: Path):
    result = run_tlrun(["model=lenet", "adaptation.select_by=snd", "train.epochs=1", *TINY], tmp_path)
    assert_one_line_error(result, "adaptation.select_by=snd scores the target domain", "data.target=")
    assert result.returncode == 2 and list(tmp_path.iterdir()) == []
