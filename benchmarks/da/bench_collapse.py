#!/usr/bin/env python
"""Alignment collapse benchmark: source-only, DANN and MMD with the source warm-up off and in its two forms.

    python benchmarks/da/bench_collapse.py [--targets cvdigits,colour_digits_m] [--seeds 0,1,2] [--epochs 12]
        [--per-class 300] [--jobs 2] [--out DIR] [--cells source_only:none,dann:source,...]

Source: 3,000 synthetic colour digits (benchmarks/da/colour_digits.py, written once under --out). Targets:
cvdigits (OpenCV's handwritten digits: another glyph style) and colour_digits_m (3,000 other colour digits
blended into photo patches, the MNIST-M construction: the same glyphs on another texture). The recipe of the
collapse report: LeNet at 32 px, Adam lr 1e-3 (constant, no weight decay), 12 epochs, every other setting at
its default (DANN: the 1024x1024 BatchNorm discriminator on the pooled features). ``off`` is
adaptation.warmup_epochs=0 adaptation.warmup_source_acc=0 (alignment from the first step); ``source`` is the default
warm-up (adaptation.warmup_batch_norm=source: warm-up steps are source-only steps); ``joint`` is the same warm-up with
adaptation.warmup_batch_norm=joint (the target batch passes through BatchNorm meanwhile); ``dann_lambda0`` is DANN
with adaptation.weight=0 (no domain loss, but BatchNorm over the joint source + target batch: from the first step
with ``joint``, once the warm-up is over with ``source``). Both warm-ups are named on the command line, so the table
does not depend on which one is tlrun's default. Source-only has no warm-up, so it runs once per seed. Writes
bench_collapse.csv (one row per run) beside the run folders' parent (default: benchmarks/da/results/) and prints the
summary table; rerunning with the same --out reuses finished cells.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from colour_digits import make_colour_digits  # noqa: E402

from tlrun.report import markdown_table  # noqa: E402

RECIPE = ["data=imagefolder", "model=lenet", "data.image_size=32", "train.optimizer=adam",
          "train.lr=1e-3", "train.weight_decay=0", "train.scheduler=none", "train.progress=none", "device=cpu",
          "device.threads=1"]
WARMUP_OFF = ["adaptation.warmup_epochs=0", "adaptation.warmup_source_acc=0"]
CELLS = (("source_only", "none"), ("dann", "off"), ("dann", "joint"), ("dann", "source"), ("mmd", "off"),
         ("mmd", "joint"), ("mmd", "source"), ("dann_lambda0", "joint"), ("dann_lambda0", "source"))
METHOD_ARGS = {"source_only": ["adaptation=none"], "dann": ["adaptation=dann"], "mmd": ["adaptation=mmd"],
               "dann_lambda0": ["adaptation=dann", "adaptation.weight=0"]}
TARGETS = ("cvdigits", "colour_digits_m")


def target_args(target: str, base: Path, per_class: int) -> list[str]:
    """The data.target keys of a target domain; colour_digits_m is written under ``base`` once."""
    if target != "colour_digits_m":
        return [f"data.target={target}"]
    root = base / f"colour_digits_m_{per_class}"
    if not (root / "9").is_dir() or len(list((root / "9").glob("*.png"))) != per_class:
        make_colour_digits(root, per_class=per_class, seed=1, on_photos=True)  # seed 1: other digits than the source's
    return ["data.target=imagefolder", f"data.target_root={root}"]


def command(root: Path, target: list[str], method: str, warmup: str, seed: int, epochs: int,
            run_dir: Path) -> list[str]:
    args = [f"data.root={root}", *target, *METHOD_ARGS[method]]
    if warmup == "off":
        args += WARMUP_OFF
    elif warmup in ("joint", "source"):  # the default warm-up's epochs and threshold, either form
        args += [f"adaptation.warmup_batch_norm={warmup}"]
    return [sys.executable, "-m", "tlrun", *RECIPE, *args, f"train.epochs={epochs}", f"seed={seed}",
            f"hydra.run.dir={run_dir}"]


def finished(run_dir: Path) -> bool:
    path = run_dir / "metrics.json"
    return path.is_file() and json.loads(path.read_text()).get("status", "ok") == "ok"


def run_one(job: dict) -> dict:
    row = {k: job[k] for k in ("target", "method", "warmup", "seed")}
    run_dir = job["run_dir"]
    started = time.perf_counter()
    if not finished(run_dir):
        result = subprocess.run(job["command"], capture_output=True, text=True)
        if result.returncode != 0:
            row["status"] = "failed: " + (result.stderr.strip().splitlines() or ["?"])[-1][:200]
            return row
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = pd.read_csv(run_dir / "ft_history.csv")
    last = history.iloc[-1]
    log = (run_dir / "tlrun.log").read_text() if (run_dir / "tlrun.log").is_file() else ""
    row.update(status="ok",
               target_acc=metrics["target_acc"],  # the best source-val checkpoint
               target_acc_last=metrics["target_acc_last"],  # the last epoch
               source_test_acc=metrics["source_test_acc"],  # the best source-val checkpoint, source test split
               source_val_acc_last=float(last["val_acc"]),  # the last epoch, source val split
               source_train_acc_last=float(last["train_acc"]),
               alignment_start_epoch=metrics.get("alignment_start_epoch"),
               collapsed=metrics.get("collapsed"),
               warned="Adaptation collapsed" in log,
               feature_std_last=float(last["feature_std"]) if "feature_std" in history else float("nan"),
               domain_acc_last=metrics.get("domain_acc_last", float("nan")),
               wall_s=metrics.get("wall_time_s", round(time.perf_counter() - started, 1)))
    return row


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    ok = runs[runs["status"] == "ok"]
    rows = []
    for (target, method, warmup), group in ok.groupby(["target", "method", "warmup"], sort=False):
        def pct(column: str) -> str:
            return f"{100 * group[column].mean():.1f} ± {100 * group[column].std():.1f}"

        aligned = method in ("dann", "mmd")  # dann_lambda0's warm-up ends too, but its weight stays 0
        starts = group["alignment_start_epoch"].dropna().astype(int).astype(str) if aligned else []
        # Paired by seed (a method's run and source-only's share the run's random stream): method − source-only.
        baseline = ok[(ok["target"] == target) & (ok["method"] == "source_only")].set_index("seed")["target_acc"]
        paired = (group.set_index("seed")["target_acc"] - baseline).dropna()
        rows.append({"target": target, "method": method, "warm-up": warmup, "seeds": len(group),
                     "target acc (best)": pct("target_acc"),
                     "vs source-only, paired": "-" if method == "source_only" or paired.empty else
                     f"{100 * paired.mean():+.1f} ± {100 * paired.std():.1f} ({int((paired >= 0).sum())}/{len(paired)} ≥ 0)",
                     "target acc (last)": pct("target_acc_last"),
                     "source test (best)": pct("source_test_acc"), "source val (last)": pct("source_val_acc_last"),
                     "alignment starts": ", ".join(starts) if len(starts) else "-",
                     "collapsed": f"{int(group['collapsed'].fillna(False).astype(bool).sum())}/{len(group)}"
                     if aligned else "-"})
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(TARGETS), help="target domains, comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--per-class", type=int, default=300, help="source images per digit")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (each uses one CPU thread)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--cells", default=",".join(f"{m}:{w}" for m, w in CELLS),
                        help="method:warm-up cells to run, comma-separated (default: all nine)")
    args = parser.parse_args()
    cells = [tuple(cell.split(":")) for cell in args.cells.split(",")]
    unknown = [":".join(cell) for cell in cells if cell not in CELLS]
    if unknown:
        parser.error(f"unknown cells {', '.join(unknown)}; choose from {', '.join(f'{m}:{w}' for m, w in CELLS)}")

    base = args.out / "collapse"
    root = base / f"colour_digits_{args.per_class}"
    if not (root / "9").is_dir() or len(list((root / "9").glob("*.png"))) != args.per_class:
        make_colour_digits(root, per_class=args.per_class, seed=0)
    jobs = []
    for target in args.targets.split(","):
        keys = target_args(target, base, args.per_class)
        for seed in map(int, args.seeds.split(",")):
            for method, warmup in cells:
                run_dir = base / target / f"{method}-{warmup}-s{seed}"
                jobs.append({"target": target, "method": method, "warmup": warmup, "seed": seed, "run_dir": run_dir,
                             "command": command(root, keys, method, warmup, seed, args.epochs, run_dir)})
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = pd.DataFrame(list(pool.map(run_one, jobs)))
    if "alignment_start_epoch" in runs:  # source-only has none: keep the others whole numbers
        runs["alignment_start_epoch"] = runs["alignment_start_epoch"].astype("Int64")
    runs.to_csv(args.out / "bench_collapse.csv", index=False)
    print(f"{len(runs)} runs, {time.perf_counter() - started:.0f} s, {args.jobs} in parallel; runs in {base}")
    failed = runs[runs["status"] != "ok"]
    for _, row in failed.iterrows():
        print(f"FAILED {row['target']} {row['method']} warm-up {row['warmup']} seed {row['seed']}: {row['status']}",
              file=sys.stderr)
    print(markdown_table(summarize(runs)))
    return 0 if failed.empty else 1


if __name__ == "__main__":
    sys.exit(main())
