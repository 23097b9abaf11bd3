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
