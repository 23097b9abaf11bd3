"""``tlrun-rank``: which pretrained backbone will transfer best to a dataset, before any training.

Kept light at import (torch loads only once the arguments are valid), so --help answers quickly.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from tlrun.errors import ConfigError
from tlrun.paths import output_dir
from tlrun.config import check_arg_ranges
from tlrun.config.schema import TEXT_DATASETS

PROG = "tlrun-rank"
RANK_FILE = "rank.csv"
# Allowed range of every numeric argument (argparse dest -> (low, high), None = open), checked right after
# parsing: a new numeric argument gets its check by adding a row (tests/test_companion_errors.py enforces it).
# They match the run config's data.image_size, data.max_per_class, seed and device.threads.
ARG_RANGES: dict[str, tuple[Optional[float], Optional[float]]] = {
    "image_size": (8, None), "max_per_class": (1, None), "seed": (0, 2**32 - 1), "batch_size": (1, None),
    "threads": (1, None)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Score candidate models on a dataset from one forward pass of frozen features: "
                               "LogME (You et al. 2021), LEEP (Nguyen et al. 2020) and, with --source, the "
                               "multi-kernel MMD between source and target features.",
        epilog="examples:\n  tlrun-rank digits --models mobilenet_v2 efficientnet_lite0 mobilenet_v2:null "
               "efficientnet_lite0:null --image-size 64\n"
               "  tlrun-rank ~/data/flowers --models resnet18 efficientnet_b0 --max-per-class 50\n"
               "  tlrun-rank digits_m --source digits --models mobilenet_v2 --image-size 64",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="a dataset name (data= option: digits, cvdigits, fashion_mnist, ...) "
                                     "or an image folder (class sub-folders, or train/ val/ test/)")
    parser.add_argument("--models", nargs="+", required=True, metavar="MODEL[:WEIGHTS]",
                        help="candidates: name (its default pretrained weights), name:null (random init) "
                             "or name:<weights enum, e.g. IMAGENET1K_V1>")
    parser.add_argument("--source", default=None, help="a source dataset or folder: adds the MMD column")
    parser.add_argument("--split", default="train", choices=("train", "val", "test", "all"),
                        help="which split of the data is scored (default train, as a run would train on)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size, >= 8 (default: each model's own, e.g. 224)")
    parser.add_argument("--max-per-class", type=int, default=None,
                        help="cap images per class, >= 1 (quick ranking)")
    parser.add_argument("--by", default="logme", choices=("logme", "leep", "mmd"), help="ranking score")
    parser.add_argument("--seed", type=int, default=0, help="split seed, as tlrun's seed= (0 to 2**32-1, default 0)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward pass (>= 1, default 128)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (>= 1; default: torch's)")
    parser.add_argument("--out", default=None, help=f"folder for {RANK_FILE} (default rank/<date>_<time>)")
    return parser


def _data_spec(text: str) -> tuple[str, Optional[str]]:
    """(data name, root): a folder becomes data=imagefolder data.root=<folder>."""
    path = Path(text).expanduser()
    if path.is_dir():
        return "imagefolder", str(path)
    if "/" in text or text.startswith("."):
        raise ConfigError(f"{text} is not a folder; give an image folder or a dataset name such as digits")
    if text in TEXT_DATASETS:  # LogME/LEEP here score the frozen features of image backbones
        raise ConfigError(f"{text} is text data; tlrun-rank ranks image backbones on image datasets. Compare text "
                          "encoders by fine-tuning each with freeze=all (a linear probe): tlrun -m data=" + text +
                          " model=hf model.name=<a,b> freeze=all")
    return text, None


def _check_models(candidates: list) -> None:
    import difflib

    from tlrun.models.factory import known_models
    from tlrun.models.timm_backbones import is_timm

    known = known_models()
    for candidate in candidates:
        if candidate.model not in known and not is_timm(candidate.model):  # timm checks its own names
            close = difflib.get_close_matches(candidate.model, known, n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ConfigError(f"unknown model '{candidate.model}': {hint}use a torchvision classifier name, "
                              "efficientnet_lite0, lenet, small_resnet, conv4 or timm/<a timm model>")


def run(args: argparse.Namespace) -> int:
    check_arg_ranges(args, ARG_RANGES)
    name, root = _data_spec(args.data)  # path checks only: before torch loads
    source_name, source_root = _data_spec(args.source) if args.source else (None, None)
    out = output_dir(args.out, "rank", RANK_FILE)
    import torch

    from tlrun.rank import Candidate, data_config, rank
    from tlrun.report import markdown_table

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    candidates = [Candidate.parse(text) for text in args.models]
    _check_models(candidates)
    from tlrun.data.sources import dataset_builder

    dataset_builder(name, "--data")  # an unknown dataset fails here, before any model is built
    data_cfg = data_config(name, root, args.image_size, args.max_per_class)
    source_cfg = None
    if source_name is not None:
        dataset_builder(source_name, "--source")
        source_cfg = data_config(source_name, source_root, args.image_size, args.max_per_class)
    table = rank(candidates, data_cfg, args.seed, args.split, source_cfg, args.by, batch_size=args.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / RANK_FILE, index=False)
    print(markdown_table(table))
    print(f"ranked by {args.by} on {args.data} ({args.split} split) -> {out / RANK_FILE}")
    return 0


def main(argv: Optional[list[str]] = None) -> None:
    from tlrun.cli import run_command

    args = build_parser().parse_args(argv)
    run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    main()
