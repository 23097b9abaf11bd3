#!/usr/bin/env python
"""Fine-tuning defaults: does partial / full fine-tuning beat the linear probe at equal epochs?

    python benchmarks/finetune/bench_finetune.py [--datasets fashion,cvdigits] [--seeds 0,1,2] [--epochs 6]
                                                 [--image-size 160] [--per-class 30] [--out DIR]

For each real image folder (exported offline into a temp folder: Fashion-MNIST from Debian's
dataset-fashion-mnist, OpenCV's handwritten digits.png), ImageNet MobileNetV2 is fine-tuned with
freeze=all (the probe) and freeze=partial / none under three recipes:

- ``old``: one lr for backbone and head (``freeze.backbone_lr_mult=1``, tlrun 0.1's default);
- ``new``: today's default, the pretrained backbone at 0.1 x the head's lr;
- ``lpft``: the new default plus LP-FT (``freeze.head_warmup_epochs``: the head alone first).

Every cell is a normal tlrun run folder under --out; bench_finetune.csv (one row per run) and the
summary table (mean +- std over seeds of the best-val checkpoint's test accuracy, and of the last
epoch's val accuracy) are written there.
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

from tlrun.data.sources import OPENCV_DIGITS
from tlrun.report import markdown_table

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE.parent.parent / "scripts"  # export_fashion_mnist.py

RECIPES = {"old": ["freeze.backbone_lr_mult=1.0"], "new": [], "lpft": ["freeze.head_warmup_epochs={warmup}"]}
CELLS = [("all", "new"), *((freeze, recipe) for freeze in ("partial", "none") for recipe in RECIPES)]


def export_cvdigits(root: Path, per_class: int) -> Path:
    """OpenCV's digits.png (50 rows x 100 columns of 20x20 digits, 5 rows per digit) as a PNG folder."""
    from PIL import Image

    sheet = Image.open(OPENCV_DIGITS).convert("L")
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True, exist_ok=True)
        cells = [(row, col) for row in range(digit * 5, digit * 5 + 5) for col in range(100)]
        for index, (row, col) in enumerate(cells[:: max(1, len(cells) // per_class)][:per_class]):
            cell = sheet.crop((col * 20, row * 20, col * 20 + 20, row * 20 + 20)).convert("RGB")
            cell.save(root / str(digit) / f"{row:02d}_{col:03d}.png")
    return root


def export(name: str, per_class: int) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"{name}-png-"))
    if name == "fashion":
        subprocess.run([sys.executable, str(SCRIPTS / "export_fashion_mnist.py"), str(root), "--per-class",
                        str(per_class)], check=True, capture_output=True)
        return root
    if name == "cvdigits":
        return export_cvdigits(root, per_class)
    raise SystemExit(f"bench_finetune: unknown dataset {name}; use fashion or cvdigits")


def run_cell(args: argparse.Namespace, dataset: str, root: Path, freeze: str, recipe: str, seed: str) -> dict:
    run_dir = args.out / dataset / f"{freeze}-{recipe}-s{seed}"
    overrides = [o.format(warmup=args.warmup) for o in RECIPES[recipe]]
    command = [sys.executable, "-m", "tlrun", "model=mobilenet_v2", f"freeze={freeze}", "data=imagefolder",
               f"data.root={root}", f"data.split=[{args.split}]", f"data.image_size={args.image_size}",
               f"train.epochs={args.epochs}", f"seed={seed}", "train.progress=none", f"hydra.run.dir={run_dir}",
               *overrides, *args.extra.split()]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    row = {"dataset": dataset, "freeze": freeze, "recipe": recipe, "seed": int(seed),
           "process_wall_s": round(time.perf_counter() - started, 1)}
    if result.returncode != 0:
        print(f"FAILED {dataset} {freeze} {recipe} seed {seed}: {result.stderr.strip().splitlines()[-1:]}",
              file=sys.stderr)
        return {**row, "status": "failed"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = pd.read_csv(run_dir / "ft_history.csv")
    return {**row, "status": "ok", "test_acc": metrics["test_acc"], "best_epoch": metrics["best_epoch"],
            "best_val_acc": metrics["best_val_acc"], "last_val_acc": float(history["val_acc"].iloc[-1]),
            "backbone_lr_mult": metrics["backbone_lr_mult"], "head_warmup_epochs": metrics["head_warmup_epochs"],
            "params_trainable": metrics["params_trainable"], "train_size": metrics["train_size"],
            "test_size": metrics["test_size"]}


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean +- std over seeds per dataset x freeze x recipe, and the gap to freeze=all's mean test accuracy."""
    ok = runs[runs["status"] == "ok"]
    rows = []
    for (dataset, freeze, recipe), cell in ok.groupby(["dataset", "freeze", "recipe"], sort=False):
        probe = ok[(ok["dataset"] == dataset) & (ok["freeze"] == "all")]["test_acc"].mean()
        rows.append({"dataset": dataset, "freeze": freeze, "recipe": recipe, "seeds": len(cell),
                     "test_acc": f"{100 * cell['test_acc'].mean():.2f} ± {100 * cell['test_acc'].std(ddof=0):.2f}",
                     "last_val_acc": f"{100 * cell['last_val_acc'].mean():.2f} ± "
                                     f"{100 * cell['last_val_acc'].std(ddof=0):.2f}",
                     "vs freeze=all": f"{100 * (cell['test_acc'].mean() - probe):+.2f}",
                     "wall_s": round(cell["process_wall_s"].mean(), 1)})
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="fashion,cvdigits")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2, help="LP-FT: head-only epochs of --epochs")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--split", default="0.5,0.25,0.25", help="train,val,test fractions")
    parser.add_argument("--cells", default=None, help="freeze:recipe pairs (default: all, and partial/none x "
                                                      "old,new,lpft)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--extra", default="", help="more tlrun overrides, space separated")
    args = parser.parse_args()
    cells = [tuple(cell.split(":")) for cell in args.cells.split(",")] if args.cells else CELLS

    rows = []
    for dataset in args.datasets.split(","):
        root = export(dataset, args.per_class)
        for seed in args.seeds.split(","):
            for freeze, recipe in cells:
                rows.append(run_cell(args, dataset, root, freeze, recipe, seed))
                print(json.dumps(rows[-1]), flush=True)
    runs = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(args.out / "bench_finetune.csv", index=False)
    summary = summarise(runs)
    summary.to_csv(args.out / "bench_finetune_summary.csv", index=False)
    print(f"MobileNetV2 (ImageNet), {args.image_size} px, {args.epochs} epochs (LP-FT: {args.warmup} head-only), "
          f"{args.per_class} images per class split {args.split}")
    print(markdown_table(summary))
    return 0 if (runs["status"] == "ok").all() else 1


if __name__ == "__main__":
    sys.exit(main())
