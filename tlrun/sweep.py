"""Sweep summaries: one row per job of a ``tlrun -m`` sweep, and a heatmap over two swept keys.

Built by reading the job folders (``.hydra/overrides.yaml`` + ``metrics.json`` or ``failed.json``),
so it works for any past sweep (``tlrun-report <sweep dir>``), for parallel launchers, and when
some jobs failed: every job rewrites the summary when it ends, under a lock, atomically.
No torch import here: the report command answers quickly.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd
import yaml

SUMMARY_FILE = "sweep_summary.csv"
HEATMAP_FILE = "sweep_heatmap.png"
FAILED_FILE = "failed.json"
# Metrics copied into the summary when a job reports them (first found = default heatmap metric).
SUMMARY_METRICS = ("test_acc", "target_acc", "target_acc_last", "student_test_acc", "teacher_test_acc",
                   "few_shot_5way_5shot_acc", "few_shot_5way_1shot_acc", "best_val_acc", "best_epoch",
                   "test_loss", "params_trainable", "wall_time_s")


@dataclass
class SweepReport:
    summary: Path
    heatmap: Optional[Path]
    jobs: int
    failed: int
    swept: list[str]


def _parse_override(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def _typed(value: str) -> Any:
    """'0.5' -> 0.5, '3' -> 3, anything else stays a string (so numeric keys sort numerically)."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Job folders of a sweep: those holding Hydra's .hydra/overrides.yaml (any depth below the root)."""
    return sorted({p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml") if p.parent.parent != sweep_dir},
                  key=lambda p: (len(p.parts), _typed(p.name) if isinstance(_typed(p.name), int) else 1 << 30, str(p)))


def read_job(job_dir: Path, final: bool) -> dict[str, Any]:
    overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
    row: dict[str, Any] = {"job": job_dir.name}
    row.update({key: _typed(value) for key, value in map(_parse_override, overrides)})
    metrics_file, failed_file = job_dir / "metrics.json", job_dir / FAILED_FILE
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        row["status"] = metrics.get("status", "ok")
        row.update({key: metrics[key] for key in SUMMARY_METRICS if key in metrics})
    elif failed_file.is_file():
        failure = json.loads(failed_file.read_text())
        row.update(status="failed", error=failure.get("error", ""))
    else:  # still running (a parallel job) or killed before it could write anything
        row["status"] = "incomplete" if final else "running"
    row["run_dir"] = str(job_dir)
    return row


def collect(sweep_dir: Path, final: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """The summary table and the swept keys (override keys whose value differs between jobs)."""
    jobs = find_jobs(sweep_dir)
    rows = [read_job(job, final) for job in jobs]
    frame = pd.DataFrame(rows)
    override_keys: list[str] = []
    for job in jobs:
        for text in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []:
            key = _parse_override(text)[0]
            if key not in override_keys:
                override_keys.append(key)
    swept = [key for key in override_keys if key in frame and frame[key].astype(str).nunique(dropna=False) > 1]
    if len(jobs) == 1:
        swept = override_keys
    constant = [key for key in override_keys if key not in swept]
    leading = ["job", *swept, "status"]
    metrics = [key for key in SUMMARY_METRICS if key in frame]
    trailing = [key for key in ("error", "run_dir") if key in frame]
    frame = frame.drop(columns=constant)[leading + metrics + trailing] if len(frame) else frame
    return frame, swept


def _heat_keys(frame: pd.DataFrame, swept: list[str]) -> list[str]:
    """The two swept keys for the heatmap (prefer numeric ones, skip seeds: seeds are averaged)."""
    keys = [k for k in swept if k != "seed"] or list(swept)
    numeric = [k for k in keys if pd.api.types.is_numeric_dtype(frame[k])]
    ordered = numeric + [k for k in keys if k not in numeric]
    return ordered[:2]


def plot_heatmap(frame: pd.DataFrame, swept: list[str], metric: str, path: Path) -> Optional[Path]:
    """Mean of ``metric`` over every other swept key (e.g. seeds) for each pair of the two keys."""
    keys = _heat_keys(frame, swept)
    if not keys or metric not in frame:
        return None
    from tlrun.report import _pyplot

    plt = _pyplot()
    rows_key, cols_key = (keys + [None])[:2]
    values = frame.assign(_value=pd.to_numeric(frame[metric], errors="coerce"))
    if cols_key is None:
        grid = values.groupby(rows_key)["_value"].mean().to_frame(metric)
    else:
        grid = values.pivot_table(index=rows_key, columns=cols_key, values="_value", aggfunc="mean", dropna=False)
    cells = grid.to_numpy(dtype=float)
    middle = float(np.nanmean(cells)) if np.isfinite(cells).any() else 0.0
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * cells.shape[1], 1.2 + 0.6 * cells.shape[0]))
    image = ax.imshow(cells, cmap="viridis", aspect="auto")
    ax.set_xticks(range(cells.shape[1]), [str(c) for c in grid.columns])
    ax.set_yticks(range(cells.shape[0]), [str(r) for r in grid.index])
    ax.set_xlabel(cols_key or "")
    ax.set_ylabel(rows_key)
    for (i, j), value in np.ndenumerate(cells):  # failed/missing jobs show as such, not as a colour
        ax.text(j, i, "failed" if math.isnan(value) else f"{value:.3f}", ha="center", va="center", fontsize=8,
                color="dimgray" if math.isnan(value) else "black" if value >= middle else "white")
    averaged = [k for k in swept if k not in keys]
    title = metric + (f" (mean over {', '.join(averaged)})" if averaged else "")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


@contextlib.contextmanager
def _locked(sweep_dir: Path) -> Iterator[None]:
    with open(sweep_dir / ".sweep_summary.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_report(sweep_dir: Path, metric: Optional[str] = None, final: bool = True) -> SweepReport:
    """Write sweep_summary.csv and sweep_heatmap.png at the sweep root (safe with parallel jobs)."""
    sweep_dir = Path(sweep_dir)
    with _locked(sweep_dir):
        frame, swept = collect(sweep_dir, final)
        summary = sweep_dir / SUMMARY_FILE
        tmp = summary.with_suffix(".csv.tmp")
        frame.to_csv(tmp, index=False)
        tmp.replace(summary)
        metric = metric or next((m for m in SUMMARY_METRICS if m in frame), None)
        heatmap = plot_heatmap(frame, swept, metric, sweep_dir / HEATMAP_FILE) if metric and len(frame) else None
    failed = int((frame["status"] == "failed").sum()) if "status" in frame else 0
    return SweepReport(summary, heatmap, len(frame), failed, swept)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="tlrun-report",
                                     description="Rebuild sweep_summary.csv and sweep_heatmap.png of a tlrun sweep.")
    parser.add_argument("sweep_dir", help="the sweep root (e.g. multirun/2026-11-25/10-00-00)")
    parser.add_argument("--metric", help=f"heatmap metric (default: the first of {', '.join(SUMMARY_METRICS[:4])} "
                                         "that the jobs report)")
    args = parser.parse_args(argv)
    sweep_dir = Path(args.sweep_dir)
    if not sweep_dir.is_dir():
        parser.exit(2, f"tlrun-report: error: {sweep_dir} is not a folder; pass the root of a tlrun -m sweep\n")
    if not find_jobs(sweep_dir):
        parser.exit(2, f"tlrun-report: error: no sweep jobs (*/.hydra/overrides.yaml) under {sweep_dir}; "
                       "pass the root of a tlrun -m sweep\n")
    if args.metric:
        reported = [c for c in collect(sweep_dir)[0].columns if c in SUMMARY_METRICS]
        if args.metric not in reported:
            parser.exit(2, f"tlrun-report: error: no job reports metric '{args.metric}'; "
                           f"choose one of {', '.join(reported) or '(none: no job finished)'}\n")
    report = write_report(sweep_dir, args.metric)
    frame = pd.read_csv(report.summary)
    from tlrun.report import markdown_table

    print(markdown_table(frame.drop(columns=["run_dir"])))
    print(f"\n{report.jobs} jobs ({report.failed} failed); swept: {', '.join(report.swept) or '-'}")
    print(f"summary: {report.summary}")
    print(f"heatmap: {report.heatmap or '- (no metric to plot)'}")
    if report.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
