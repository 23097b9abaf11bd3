"""``tlrun-predict``: apply finished runs (one, or several as an ensemble) to images.

Kept light at import (torch loads only once the arguments are valid), so --help answers quickly.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

from tlrun.config import check_arg_ranges
from tlrun.errors import ConfigError
from tlrun.paths import output_dir, run_model_file

PROG = "tlrun-predict"
TTA_CHOICES = ("none", "flip", "flip+crops")
GRID_FILE, TABLE_FILE, SUMMARY_FILE, CONFUSION_FILE = ("predictions.png", "predictions.csv", "summary.json",
                                                       "confusion_matrix.png")
# Allowed range of every numeric argument (argparse dest -> (low, high), None = open), checked right after
# parsing: a new numeric argument gets its check by adding a row (tests/test_companion_errors.py enforces it).
ARG_RANGES: dict[str, tuple[Optional[float], Optional[float]]] = {
    "top_k": (1, None), "grid": (0, None), "threads": (1, None), "workers": (0, None), "weights": (0, None)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Predict images with a finished tlrun run (or an ensemble of runs), using each "
                               "run's own preprocessing.",
        epilog="examples:\n  tlrun-predict outputs/2024-05-01/10-00-00 photos/\n"
               "  tlrun-predict RUN split:test --tta flip          (the run's own test split: its test_acc)\n"
               "  tlrun-predict RUN_A RUN_B RUN_C data/test --weight-by best_val_acc   (ensemble)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="RUN... IMAGES",
                        help="one or more run folders (or ft_model.pt files), then the images: an image file, a "
                             "folder (class sub-folders named like the run's classes = labelled), or "
                             "split:train|val|test (the run's own split)")
    parser.add_argument("--tta", choices=TTA_CHOICES, default="none",
                        help="test-time augmentation: average softmax over views (default: none)")
    parser.add_argument("--top-k", type=int, default=5, help="classes listed in the top_k column (>= 1, default 5)")
    parser.add_argument("--out", default=None, help="output folder (default predictions/<date>_<time>); "
                                                    "never overwritten")
    weighting = parser.add_mutually_exclusive_group()
    weighting.add_argument("--weights", type=float, nargs="+", default=None,
                           help="ensemble weights, one per run, each >= 0 and not all 0 (default: equal)")
    weighting.add_argument("--weight-by", default=None, metavar="METRIC",
                           help="weight each run by a metrics.json value, e.g. best_val_acc")
    parser.add_argument("--grid", type=int, default=16, help="images shown in predictions.png (default 16, 0 = none)")
    parser.add_argument("--device", choices=("cpu", "cuda", "mps", "auto"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (>= 1; default: torch's)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    return parser


def _check_weights(weights: Optional[Sequence[float]], runs: int) -> None:
    """What the range table cannot say about --weights (each >= 0 is checked there)."""
    if weights is None:
        return
    if len(weights) != runs:
        raise ConfigError(f"--weights gives {len(weights)} number{'s' * (len(weights) != 1)} for {runs} "
                          f"run{'s' * (runs != 1)}; give one per run")
    if sum(weights) <= 0:
        raise ConfigError("--weights are all 0; give at least one positive weight (they are normalised by their sum)")


def check_args(args: argparse.Namespace) -> None:
    """Every argument check that needs no file: before torch loads and before any folder is made."""
    check_arg_ranges(args, ARG_RANGES)
    if len(args.inputs) < 2:
        raise ConfigError("give at least one run folder and then the images, e.g. tlrun-predict RUN photos/")
    _check_weights(args.weights, len(args.inputs) - 1)


def run(args: argparse.Namespace) -> int:
    check_args(args)
    out = output_dir(args.out, "predictions", TABLE_FILE)
    for run_path in args.inputs[:-1]:  # a mistyped run answers at once, not after torch has loaded
        run_model_file(run_path)
    import torch

    from tlrun.predict import check_tta, load_members, predict, resolve_images
    from tlrun.config import DeviceConfig
    from tlrun.runner import resolve_device

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from omegaconf import OmegaConf

    device = resolve_device(OmegaConf.structured(DeviceConfig(type=args.device)))
    members = load_members(args.inputs[:-1], args.weights, args.weight_by)
    for member in members:
        check_tta(member, args.tta)
    images = resolve_images(args.inputs[-1], members)
    started = time.perf_counter()
    result = predict(members, images, args.tta, args.top_k, device, args.workers)
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out / TABLE_FILE, index=False)
    classes = members[0].loaded.classes
    summary = {"images": images.description, "count": len(result.table), "tta": args.tta,
               "members": result.summary.to_dict(orient="records"), "seconds": round(seconds, 2)}
    if result.labels is not None:
        from tlrun.report import plot_confusion

        final_acc = float((result.final.argmax(axis=1) == result.labels).mean())
        summary["accuracy"] = final_acc
        plot_confusion(result.labels, result.final.argmax(axis=1), classes, out / CONFUSION_FILE,
                       title=f"confusion matrix (acc {final_acc:.4f}, tta {args.tta})")
    if args.grid > 0 and getattr(images.images, "texts", None) is None:  # a grid of images; texts have none
        _write_grid(out / GRID_FILE, images.images, result, classes, args.grid)
    from tlrun.report import markdown_table, write_json

    write_json(summary, out / SUMMARY_FILE)
    print(markdown_table(result.summary.drop(columns=["source"])))
    for member in members:
        print(f"{member.name}: {member.source}")
    if "accuracy" in summary:
        print(f"accuracy {summary['accuracy']:.4f} on {images.description}, tta {args.tta}")
    print(f"{len(result.table)} predictions in {seconds:.1f}s -> {out / TABLE_FILE}")
    return 0


def _write_grid(path: Path, images, result, classes: list[str], count: int) -> None:
    import numpy as np

    from tlrun.data.datasets import ImageDataset
    from tlrun.report import plot_prediction_grid

    rng = np.random.default_rng(0)
    picks = sorted(rng.permutation(len(images))[:count].tolist())
    raw = ImageDataset(images, transform=None)
    pictures = [raw.raw(i).permute(1, 2, 0).numpy() for i in picks]
    table = result.table
    truths = [table["true_class"].iloc[i] for i in picks] if "true_class" in table else None
    plot_prediction_grid(pictures, [table["predicted_class"].iloc[i] for i in picks],
                         [float(table["probability"].iloc[i]) for i in picks], truths, path)


def main(argv: Optional[list[str]] = None) -> None:
    from tlrun.cli import run_command

    args = build_parser().parse_args(argv)
    run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    main()
