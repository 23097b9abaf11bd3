"""Sweep summaries: one row per job of a ``tlrun -m`` sweep, and a heatmap over two swept keys.

Built by reading the job folders (``.hydra/overrides.yaml`` + ``metrics.json`` or ``failed.json``),
so it works for any past sweep (``tlrun-report <sweep dir>``), for parallel launchers, and when
some jobs failed: every job rewrites the summary when it ends, under a lock, atomically.
A job whose files cannot be read (e.g. a truncated metrics.json) is a row with status ``unreadable``
and an ``error`` naming the file; the other jobs are summarised as usual.
No torch import here: the report command answers quickly.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import yaml

from tlrun.paths import atomic_path, locked

from tlrun.errors import ConfigError

PROG = "tlrun-report"
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
    unreadable: int = 0  # jobs whose overrides.yaml / metrics.json / failed.json could not be read


class UnreadableFile(Exception):
    """A job file that exists but cannot be read or parsed; the message names the file."""


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


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise UnreadableFile(f"{path} is not text") from None
    except OSError as exc:
        raise UnreadableFile(f"cannot read {path} ({exc.strerror or exc})") from None


def read_json_object(path: Path) -> dict[str, Any]:
    """A job's metrics.json / failed.json; UnreadableFile if it is unreadable, not JSON or not an object."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:  # e.g. truncated: the job was killed while writing it
        raise UnreadableFile(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") \
            from None
    if not isinstance(data, dict):
        raise UnreadableFile(f"{path} is not a JSON object")
    return data


def read_overrides(job_dir: Path) -> list[str]:
    """The job's Hydra overrides; UnreadableFile if .hydra/overrides.yaml is not a YAML list."""
    path = job_dir / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(_read_text(path)) or []
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UnreadableFile(f"{path} is not valid YAML" + (f" (line {mark.line + 1})" if mark else "")) from None
    if not isinstance(overrides, list):
        raise UnreadableFile(f"{path} is not a YAML list of overrides")
    return [str(text) for text in overrides]


def read_job(job_dir: Path, final: bool) -> dict[str, Any]:
    """One summary row. A file that cannot be read makes the row status=unreadable (error names the file)
    instead of stopping the report: the other jobs are still summarised."""
    row: dict[str, Any] = {"job": job_dir.name}
    try:
        row.update({key: _typed(value) for key, value in map(_parse_override, read_overrides(job_dir))})
        metrics_file, failed_file = job_dir / "metrics.json", job_dir / FAILED_FILE
        if metrics_file.is_file():
            metrics = read_json_object(metrics_file)
            row["status"] = metrics.get("status", "ok")
            row.update({key: metrics[key] for key in SUMMARY_METRICS if key in metrics})
        elif failed_file.is_file():
            failure = read_json_object(failed_file)
            row.update(status="failed", error=failure.get("error", ""))
        else:  # still running (a parallel job) or killed before it could write anything
            row["status"] = "incomplete" if final else "running"
    except UnreadableFile as exc:
        row.update(status="unreadable", error=f"{exc}; rerun this job or repair the file")
    row["run_dir"] = str(job_dir)
    return row


def _overrides_or_none(job_dir: Path) -> list[str]:
    try:
        return read_overrides(job_dir)
    except UnreadableFile:  # already reported in the job's row
        return []


def collect(sweep_dir: Path, final: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """The summary table and the swept keys (override keys whose value differs between jobs)."""
    jobs = find_jobs(sweep_dir)
    rows = [read_job(job, final) for job in jobs]
    frame = pd.DataFrame(rows)
    override_keys: list[str] = []
    for job in jobs:
        for text in _overrides_or_none(job):
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
    try:
        fig.savefig(path, dpi=120, format="png")  # write_report passes a temporary path
    finally:
        plt.close(fig)
    return path


def write_report(sweep_dir: Path, metric: Optional[str] = None, final: bool = True) -> SweepReport:
    """Write sweep_summary.csv and sweep_heatmap.png at the sweep root (safe with parallel jobs).

    An OSError (e.g. a read-only sweep folder) propagates with no half-written file left behind."""
    sweep_dir = Path(sweep_dir)
    with locked(sweep_dir / ".sweep_summary.lock"):  # parallel jobs rewrite it in turn
        frame, swept = collect(sweep_dir, final)
        summary, heatmap = sweep_dir / SUMMARY_FILE, sweep_dir / HEATMAP_FILE
        metric = metric or next((m for m in SUMMARY_METRICS if m in frame), None)
        # Both written to temporary files first: a failed write (full disk...) leaves the previous ones as they were.
        with atomic_path(summary) as summary_tmp, atomic_path(heatmap) as heatmap_tmp:
            frame.to_csv(summary_tmp, index=False)
            drawn = plot_heatmap(frame, swept, metric, heatmap_tmp) if metric and len(frame) else None
    return SweepReport(summary, heatmap if drawn else None, len(frame), _count(frame, "failed"), swept,
                       _count(frame, "unreadable"))


def _count(frame: pd.DataFrame, status: str) -> int:
    return int((frame["status"] == status).sum()) if "status" in frame else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Rebuild sweep_summary.csv and sweep_heatmap.png of a tlrun sweep and print the "
                               "summary table.",
        epilog="exit status: 0 every job summarised; 1 some job failed or has unreadable files (status=failed / "
               "unreadable in the table, which is still written); 2 bad arguments, or the sweep folder cannot be "
               "written (read-only...): then the table is printed but not saved, and no half-written file is left.")
    parser.add_argument("sweep_dir", help="the sweep root (e.g. multirun/2026-11-25/10-00-00)")
    parser.add_argument("--metric", help=f"heatmap metric (default: the first of {', '.join(SUMMARY_METRICS[:4])} "
                                         "that the jobs report)")
    return parser


def _print_table(frame: pd.DataFrame, swept: list[str], failed: int, unreadable: int) -> None:
    from tlrun.report import markdown_table

    print(markdown_table(frame.drop(columns=["run_dir"], errors="ignore")))
    problems = f"{failed} failed" + (f", {unreadable} unreadable" if unreadable else "")
    print(f"\n{len(frame)} jobs ({problems}); swept: {', '.join(swept) or '-'}")


def _as_written(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as sweep_summary.csv would hold it (same printed table when the file cannot be written)."""
    return pd.read_csv(io.StringIO(frame.to_csv(index=False)))


def run(args: argparse.Namespace) -> int:
    """tlrun-report's work: exit code 0, or 1 when a job failed or is unreadable. Bad input raises ConfigError
    (one line, exit 2 via run_command); so does a sweep folder that cannot be written, after the table has
    been printed to stdout (reading a read-only archived sweep is still useful)."""
    sweep_dir = Path(args.sweep_dir).expanduser()
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir} is not a folder; pass the root of a tlrun -m sweep")
    if not find_jobs(sweep_dir):
        raise ConfigError(f"no sweep jobs (*/.hydra/overrides.yaml) under {sweep_dir}; "
                          "pass the root of a tlrun -m sweep")
    if args.metric:
        reported = [c for c in collect(sweep_dir)[0].columns if c in SUMMARY_METRICS]
        if args.metric not in reported:
            raise ConfigError(f"no job reports metric '{args.metric}'; "
                              f"choose one of {', '.join(reported) or '(none: no job finished)'}")
    try:
        report = write_report(sweep_dir, args.metric)
    except OSError as exc:  # read-only folder, full disk...: still show the table, then say what was not saved
        frame, swept = collect(sweep_dir)
        _print_table(_as_written(frame), swept, _count(frame, "failed"), _count(frame, "unreadable"))
        raise ConfigError(f"sweep folder {sweep_dir} cannot be written ({exc.strerror or exc}): the table above "
                          f"was not saved as {SUMMARY_FILE}; make the folder writable, or copy the sweep to a "
                          "writable place and run tlrun-report there") from exc
    _print_table(pd.read_csv(report.summary), report.swept, report.failed, report.unreadable)
    print(f"summary: {report.summary}")
    print(f"heatmap: {report.heatmap or '- (no metric to plot)'}")
    return 1 if report.failed or report.unreadable else 0  # a script can tell that some job did not finish well


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point (``tlrun-report``); errors are one ``tlrun-report: error:`` line (see --help)."""
    from tlrun.cli import run_command

    args = build_parser().parse_args(argv)
    run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    main()
