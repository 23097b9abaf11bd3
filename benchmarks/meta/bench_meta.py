#!/usr/bin/env python
"""Few-shot benchmark on held-out classes: MAML, meta-distillation, ProtoNet on the teacher, KD-then-finetune.

    python benchmarks/meta/bench_meta.py [--data fashion_mnist] [--epochs 5] [--episodes 200] [--out DIR]
                                         [--extra "k=v ..."]

Each row is one `tlrun distill=meta distill.meta_mode=<mode>` run: meta-train on the first half of the
classes, meta-test on the other half (5-way, 1- and 5-shot, the same --episodes episodes for every
mode), mean accuracy ± 95% CI. The teacher (MobileNetV2, ImageNet weights, 64 px) is trained on the
meta-train classes only; ProtoNet is shown for a fine-tuned teacher and for a linear-probe teacher
(freeze=all: ImageNet features kept), since fine-tuning on few classes can collapse the features
that new classes need. Writes bench_meta.csv (default --out: benchmarks/meta/results/ beside this script,
the committed CSV) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from tlrun.report import markdown_table

HERE = Path(__file__).resolve().parent

STUDENT = ["model=conv4", "data.image_size=28", "train.lr=1e-3", "train.optimizer=adam", "train.weight_decay=0"]
TEACHER = ["distill.teacher_model=mobilenet_v2", "distill.teacher_epochs=4", "distill.teacher_image_size=64"]
ROWS = [  # (label, mode, overrides)
    ("MAML (no teacher)", "maml", []),
    ("meta-distill (fine-tuned teacher)", "meta_distill", ["distill.teacher_freeze=none"]),
    ("meta-distill (linear-probe teacher)", "meta_distill", ["distill.teacher_freeze=all"]),
    ("ProtoNet on fine-tuned teacher", "protonet", ["distill.teacher_freeze=none"]),
    ("ProtoNet on linear-probe teacher", "protonet", ["distill.teacher_freeze=all"]),
    ("KD then finetune (fine-tuned teacher)", "kd_finetune", ["distill.teacher_freeze=none"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=200, help="meta-test episodes per shot setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--extra", default="", help="more tlrun overrides for every run")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, mps")
    parser.add_argument("--only", default="", help="comma-separated row numbers to run (default: all)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    wanted = {int(i) for i in args.only.split(",") if i} or set(range(len(ROWS)))
    records = []
    for number, (label, mode, overrides) in enumerate(ROWS):
        if number not in wanted:
            continue
        run_dir = out / "runs" / f"{number}-{mode}"
        if not (run_dir / "metrics.json").is_file():
            command = [sys.executable, "-m", "tlrun", f"data={args.data}", "distill=meta", f"distill.meta_mode={mode}",
                       *STUDENT, *TEACHER, *overrides, f"train.epochs={args.epochs}",
                       f"distill.eval_episodes={args.episodes}", f"seed={args.seed}", "train.progress=none",
                       f"device={args.device}", f"data.cache_dir={out / 'cache'}", f"hydra.run.dir={run_dir}",
                       *shlex.split(args.extra)]
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"bench_meta: {label} failed:\n{result.stderr[-2000:]}")
            print(f"  {label}: {time.perf_counter() - started:.0f} s", flush=True)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        record = {"method": label, "mode": mode}
        for key, cell in metrics["few_shot"].items():
            record[key.replace("_", " ")] = f"{100 * cell['acc']:.2f} ± {100 * cell['ci95']:.2f}"
            record[f"{key}_acc"] = cell["acc"]
        record["wall_s"] = metrics["wall_time_s"]
        records.append(record)
    frame = pd.DataFrame(records)
    frame.to_csv(out / "bench_meta.csv", index=False)
    shown = [c for c in frame.columns if not c.endswith("_acc") and c != "mode"]
    print(f"\nFew-shot accuracy (%) on held-out classes of {args.data}, mean ± 95% CI over {args.episodes} episodes")
    print(markdown_table(frame[shown], floatfmt=".0f"))


if __name__ == "__main__":
    main()
