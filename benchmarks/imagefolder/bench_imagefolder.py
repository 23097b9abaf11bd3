#!/usr/bin/env python
"""Fine-tune pretrained backbones on a real image folder and print a result table.

    python benchmarks/imagefolder/bench_imagefolder.py [--root DIR] [--models mobilenet_v2,efficientnet_lite0]
                                                       [--freezes all,partial] [--epochs 5] [--seeds 0]

Without --root, exports Fashion-MNIST (40 per class, 64x64 PNG) to a temp folder first.
Each run is a normal `tlrun` run (folders under --out); the table reads their metrics.json and is written to
bench_imagefolder.csv there (default --out: benchmarks/imagefolder/results/ beside this script, the committed CSV).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from tlrun.report import markdown_table

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE.parent.parent / "scripts"  # export_fashion_mnist.py


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path)
    parser.add_argument("--models", default="mobilenet_v2,efficientnet_lite0")
    parser.add_argument("--freezes", default="all,partial")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--extra", default="", help="more tlrun overrides, space separated")
    args = parser.parse_args()

    root = args.root
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="fashion-png-"))
        subprocess.run([sys.executable, str(SCRIPTS / "export_fashion_mnist.py"), str(root),
                        "--per-class", str(args.per_class)], check=True)
    rows = []
    for model in args.models.split(","):
        for freeze in args.freezes.split(","):
            for seed in args.seeds.split(","):
                run_dir = args.out / f"{model}-{freeze}-s{seed}"
                command = [sys.executable, "-m", "tlrun", f"model={model}", f"freeze={freeze}", "data=imagefolder",
                           f"data.root={root}", f"train.epochs={args.epochs}", f"seed={seed}",
                           "train.progress=none", f"hydra.run.dir={run_dir}", *args.extra.split()]
                started = time.perf_counter()
                result = subprocess.run(command, capture_output=True, text=True)
                wall = time.perf_counter() - started
                if result.returncode != 0:
                    print(f"FAILED {model} {freeze} seed {seed}: {result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                    rows.append({"model": model, "freeze": freeze, "seed": seed, "status": "failed"})
                    continue
                metrics = json.loads((run_dir / "metrics.json").read_text())
                rows.append({"model": model, "freeze": freeze, "seed": seed, "status": "ok",
                             "test_acc": metrics["test_acc"], "best_val_acc": metrics["best_val_acc"],
                             "params_trainable": metrics["params_trainable"], "image_size": metrics["image_size"],
                             "train_size": metrics["train_size"], "test_size": metrics["test_size"],
                             "process_wall_s": round(wall, 1)})
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "bench_imagefolder.csv", index=False)
    print(f"data: {root}  epochs: {args.epochs}")
    print(markdown_table(table))
    return 0 if (table["status"] == "ok").all() else 1


if __name__ == "__main__":
    sys.exit(main())
