#!/usr/bin/env python
"""Does the transferability ranking predict real results? Rank candidates with tlrun-rank, then train each
with freeze=all (a linear probe on the same frozen features) and compare: Kendall's tau between each score
and the measured test accuracy, and whether every pretrained model outranks its random-init twin.

    python benchmarks/rank/bench_rank.py [--data fashion_mnist,digits] [--models mobilenet_v2,efficientnet_lite0]
                                         [--image-size 64] [--max-per-class 200] [--epochs 5] [--out DIR]

Each candidate is its pretrained weights plus the same architecture at random init (model.weights=null).
Runs are normal `tlrun` runs under --out (re-running the script reuses finished ones); writes bench_rank.csv
there (default --out: benchmarks/rank/results/ beside this script, the committed CSV).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from tlrun.rank import Candidate, data_config, kendall_tau, rank
from tlrun.report import markdown_table

HERE = Path(__file__).resolve().parent


def train_probe(candidate: Candidate, data: str, args: argparse.Namespace) -> dict:
    run_dir = args.out / "runs" / data / candidate.label.replace(":", "-")
    if not (run_dir / "metrics.json").is_file():
        command = [sys.executable, "-m", "tlrun", f"model={candidate.model}",
                   f"model.weights={candidate.weights or 'null'}", "freeze=all", f"data={data}",
                   f"data.image_size={args.image_size}", f"data.max_per_class={args.max_per_class}",
                   f"train.epochs={args.epochs}", "train.progress=none", "device=cpu",
                   f"device.threads={args.threads}", f"hydra.run.dir={run_dir}"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"run failed: {' '.join(command)}\n{result.stderr.strip().splitlines()[-1:]}")
    return json.loads((run_dir / "metrics.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion_mnist,digits")
    parser.add_argument("--models", default="mobilenet_v2,efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--max-per-class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    candidates = []
    for model in args.models.split(","):
        candidates += [Candidate.parse(model), Candidate.parse(f"{model}:null")]
    tables, summary = [], []
    for data in args.data.split(","):
        started = time.perf_counter()
        table = rank(candidates, data_config(data, None, args.image_size, args.max_per_class))
        rank_s = time.perf_counter() - started
        accuracies = {}
        for candidate in candidates:
            metrics = train_probe(candidate, data, args)
            accuracies[(candidate.model, candidate.weights or "null (random init)")] = metrics["test_acc"]
        table["freeze_all_test_acc"] = [accuracies[(m, w)] for m, w in zip(table["model"], table["weights"])]
        table.insert(0, "data", data)
        tables.append(table)
        pretrained_first = all(
            table.loc[(table.model == m) & ~table.weights.str.startswith("null"), "logme"].item()
            > table.loc[(table.model == m) & table.weights.str.startswith("null"), "logme"].item()
            for m in args.models.split(","))
        summary.append({"data": data, "candidates": len(table),
                        "kendall_tau_logme": kendall_tau(table.logme.tolist(), table.freeze_all_test_acc.tolist()),
                        "kendall_tau_leep": kendall_tau(table.leep.tolist(), table.freeze_all_test_acc.tolist()),
                        "pretrained_above_random_logme": pretrained_first, "rank_s": round(rank_s, 1)})
    frame = pd.concat(tables, ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "bench_rank.csv", index=False)
    print(markdown_table(frame.drop(columns=["images", "feature_dim"])))
    print()
    print(markdown_table(pd.DataFrame(summary), floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
