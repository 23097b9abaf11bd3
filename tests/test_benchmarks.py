"""Fast coverage of the benchmark scripts' own logic (their end-to-end runs are the `slow` tier in
tests/test_scripts.py; what they drive — sweeps, caches, pipelines — is tested by the pipeline tests)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*/bench_*.py"))


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.parent.name for p in SCRIPTS])
def test_every_benchmark_script_parses_its_command_line_and_writes_beside_its_readme(script: Path, monkeypatch,
                                                                                      capsys):
    module = load(script)
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out
    assert (script.parent / "README.md").is_file()
    assert "results" in script.read_text()  # the default output folder is benchmarks/<name>/results


def test_da_summary_gap_closure_is_measured_against_source_only_and_oracle():
    bench_da = load(BENCHMARKS / "da" / "bench_da.py")
    rows = []
    for method, accs in {"source_only": [0.2, 0.4], "dann": [0.5, 0.7], "oracle": [0.9, 0.9]}.items():
        for seed, acc in enumerate(accs):
            rows.append(dict(pair="a→b", method=method, seed=seed, status="ok", target_acc=acc, mmd_before=1.0,
                             mmd_after=0.5, a_dist_before=2.0, a_dist_after=1.5, domain_acc_last=0.6,
                             disc_active_last=0.4 if method == "dann" else float("nan")))
    rows.append(dict(pair="a→b", method="dann", seed=2, status="failed", target_acc=0.0))
    table = pd.DataFrame(bench_da.summarize(pd.DataFrame(rows))).set_index("method")
    assert table.loc["dann", "gap_closure"] == "50%"  # (0.6 - 0.3) / (0.9 - 0.3)
    assert table.loc["dann", "seeds"] == 2  # the failed seed is left out, not averaged as 0
    assert table.loc["dann", "target_acc"].startswith("60.00 ±")
    assert table.loc["dann", "disc. acc / active"] == "0.60 / 0.40"
    assert table.loc["source_only", "gap_closure"] == "" and table.loc["oracle", "mmd before→after"] == ""


def test_collapse_summary_pairs_each_run_with_source_only_of_its_seed(monkeypatch):
    bench = load(BENCHMARKS / "da" / "bench_collapse.py")
    accuracy = {("source_only", 0): 0.50, ("source_only", 1): 0.60, ("dann", 0): 0.55, ("dann", 1): 0.58}
    runs = pd.DataFrame([{"target": "cvdigits", "method": m, "warmup": "none" if m == "source_only" else "source",
                          "seed": seed, "status": "ok", "target_acc": acc, "target_acc_last": acc,
                          "source_test_acc": 0.9, "source_val_acc_last": 0.9, "alignment_start_epoch": 3,
                          "collapsed": False} for (m, seed), acc in accuracy.items()])
    table = bench.summarize(runs).set_index("method")
    assert table.loc["dann", "vs source-only, paired"] == "+1.5 ± 4.9 (1/2 ≥ 0)"  # +5.0 and -2.0 points
    assert table.loc["source_only", "vs source-only, paired"] == "-"
    # Each cell names its warm-up on the command line: the table does not depend on tlrun's default.
    keys = {warmup: [a for a in bench.command(Path("src"), ["data.target=cvdigits"], "dann", warmup, 0, 12, Path("run"))
                     if a.startswith("adaptation.warmup")] for warmup in ("off", "joint", "source")}
    assert keys == {"off": ["adaptation.warmup_epochs=0", "adaptation.warmup_source_acc=0"],
                    "joint": ["adaptation.warmup_batch_norm=joint"], "source": ["adaptation.warmup_batch_norm=source"]}
    monkeypatch.setattr(sys, "argv", ["bench_collapse.py", "--cells", "dann:sometimes"])
    with pytest.raises(SystemExit) as exit_info:  # refused before any data is written
        bench.main()
    assert exit_info.value.code == 2


def test_da_cells_of_the_new_methods_and_the_lambda_sweep_compose(tmp_path: Path):
    """Each benchmark cell's tlrun command composes into the method it names (the configs, not just strings)."""
    from tlrun.cli import compose_config

    bench_da = load(BENCHMARKS / "da" / "bench_da.py")
    expected = {"cdan": ("cdan", {"entropy": False}), "cdan_e": ("cdan", {"entropy": True}),
                "mcc": ("mcc", {}), "dann_mcc": ("dann", {"mcc_weight": 1.0}),
                "dann_w0.3": ("dann", {"weight": 0.3, "discriminator_width": 100}),
                "source_only": ("none", {})}
    for method, (name, keys) in expected.items():
        command = bench_da.command("cvdigits", "cvdigits_m", method, 0, 2, tmp_path / method, [])
        overrides = command[command.index("tlrun") + 1:]
        cfg = compose_config([o for o in overrides if not o.startswith("hydra.")])
        assert cfg.adaptation.method == name and cfg.data.target == "cvdigits_m", method
        assert {key: cfg.adaptation[key] for key in keys} == keys, method
        if name != "none":  # the committed tables align from the first step
            assert cfg.adaptation.warmup_epochs == 0 and cfg.adaptation.warmup_source_acc == 0
        for warmup in ("source", "joint"):  # the methods tables' warm-ups, named whatever tlrun's default is
            command = bench_da.command("cvdigits", "cvdigits_m", method, 0, 2, tmp_path / method, [], warmup=warmup)
            assert ("adaptation.warmup_batch_norm=" + warmup in command) == (name != "none"), method
            cfg = compose_config([o for o in command[command.index("tlrun") + 1:] if not o.startswith("hydra.")])
            if name != "none":
                assert cfg.adaptation.warmup_epochs == 1 and cfg.adaptation.warmup_batch_norm == warmup, method


def test_da_validator_table_scores_picks_and_rank_correlation(tmp_path: Path):
    """validator_table reads each run's picks and history: pick accuracy, its difference to source-val
    selection, and Spearman's ρ (pooled and within runs), with min-mode validators turned so higher = better."""
    import json

    bench_da = load(BENCHMARKS / "da" / "bench_da.py")
    target = {"a": [0.2, 0.5, 0.4], "b": [0.3, 0.6, 0.7]}
    # entropy falls as target accuracy rises (a perfect min-mode validator); val_acc peaks early in run b.
    histories = {"a": {"val_acc": [0.5, 0.9, 0.8], "target_entropy": [2.0, 1.0, 1.5]},
                 "b": {"val_acc": [0.5, 0.9, 0.8], "target_entropy": [2.0, 1.0, 0.5]}}
    jobs = []
    for run, columns in histories.items():
        run_dir = tmp_path / run
        run_dir.mkdir()
        pd.DataFrame({"epoch": [1, 2, 3], "target_acc": target[run], **columns}).to_csv(run_dir / "ft_history.csv")
        picks = {"source_val": 2, "entropy": 2 if run == "a" else 3, "last": 3}
        (run_dir / "metrics.json").write_text(json.dumps({"status": "ok", "validator_picks": {
            name: {"epoch": epoch, "target_acc": target[run][epoch - 1]} for name, epoch in picks.items()}}))
        jobs.append({"method": "dann", "run_dir": run_dir})
    jobs.append({"method": "oracle", "run_dir": tmp_path / "missing"})  # left out
    table = bench_da.validator_table(jobs).set_index("select_by")
    assert table.loc["source_val", "target_acc of picks"] == "55.00"  # (0.5 + 0.6) / 2
    assert table.loc["entropy", "target_acc of picks"] == "60.00" and table.loc["entropy", "vs source_val"] == "+5.00"
    assert table.loc["target oracle", "target_acc of picks"] == "60.00"  # max per run: 0.5, 0.7
    assert table.loc["entropy", "spearman (within runs)"] == "1.000"  # ranks equal in both runs
    assert float(table.loc["entropy", "spearman (all epochs)"]) > 0.8
    assert table.loc["last", "runs"] == 2 and table.loc["last", "spearman (all epochs)"] == ""


def test_kd_student_recipes_share_the_teacher_and_differ_only_in_the_method():
    bench_kd = load(BENCHMARKS / "kd" / "bench_kd.py")
    args = bench_kd.argparse.Namespace(temperature=4.0, alpha=0.9, teacher_logits="auto", kd_extra="train.epochs=3",
                                       dkd_extra="distill.beta=2", fitnet_extra="distill.hint_epochs=1",
                                       student_layer="conv2", teacher_layer="features.13")
    recipes = bench_kd.student_recipes(args)
    assert recipes["student_alone"] == ["distill=none"]
    for method in ("kd", "dkd", "fitnet"):
        assert recipes[method][0] == f"distill={method}"
        assert {"distill.teacher={teacher}", "distill.temperature=4", "distill.teacher_logits=auto"} <= set(recipes[method])
    assert "distill.alpha=0.9" in recipes["kd"] and not any(a.startswith("distill.alpha") for a in recipes["dkd"])
    assert recipes["dkd"][-1] == "distill.beta=2" and "train.epochs=3" not in recipes["dkd"]
    assert {"distill.student_layer=conv2", "distill.teacher_layer=features.13", "train.epochs=3",
            "distill.hint_epochs=1"} <= set(recipes["fitnet"])


def test_kd_sweep_cost_counts_teacher_work_in_the_job_logs(tmp_path: Path):
    bench_kd = load(BENCHMARKS / "kd" / "bench_kd.py")
    for job, lines in {"0": ["Teacher stage: fine-tuning lenet into x", "Teacher logits (train): computing 10"],
                       "1": ["Teacher stage: cache hit, reusing x", "Teacher logits (train): cache hit (k.pt)"],
                       "2": ["Teacher stage: cache hit, reusing x", "Teacher logits (train): cache hit (k.pt)"]}.items():
        (tmp_path / job).mkdir()
        (tmp_path / job / "tlrun.log").write_text("\n".join(lines) + "\n")
    assert bench_kd.count_in_logs(tmp_path, r"Teacher stage: fine-tuning") == 1
    assert bench_kd.count_in_logs(tmp_path, r"Teacher stage: cache hit") == 2
    assert bench_kd.count_in_logs(tmp_path, r"Teacher logits \(train\): cache hit") == 2


def test_finetune_summary_compares_each_recipe_with_the_probe_and_exports_cvdigits(tmp_path: Path):
    bench = load(BENCHMARKS / "finetune" / "bench_finetune.py")
    rows = [dict(dataset="d", freeze="all", recipe="new", seed=s, status="ok", test_acc=a, last_val_acc=a,
                 process_wall_s=1.0) for s, a in enumerate([0.7, 0.8])]
    rows += [dict(dataset="d", freeze="none", recipe="old", seed=s, status="ok", test_acc=a, last_val_acc=a - 0.1,
                  process_wall_s=3.0) for s, a in enumerate([0.5, 0.7])]
    rows.append(dict(dataset="d", freeze="none", recipe="old", seed=2, status="failed"))
    table = bench.summarise(pd.DataFrame(rows)).set_index(["freeze", "recipe"])
    assert table.loc[("none", "old"), "vs freeze=all"] == "-15.00" and table.loc[("none", "old"), "seeds"] == 2
    assert table.loc[("none", "old"), "test_acc"] == "60.00 ± 10.00"
    assert [cell for cell in bench.CELLS if cell[0] == "none"] == [("none", "old"), ("none", "new"), ("none", "lpft")]
    from tlrun.data.sources import OPENCV_DIGITS

    if OPENCV_DIGITS.is_file():  # 3 images per digit, 20 px, from OpenCV's sheet
        root = bench.export_cvdigits(tmp_path / "cv", per_class=3)
        assert sorted(p.name for p in root.iterdir()) == [str(d) for d in range(10)]
        assert all(len(list((root / str(d)).glob("*.png"))) == 3 for d in range(10))
