#!/usr/bin/env python
"""Speed of tlrun against a plain PyTorch loop, on the same model, data, batch size, epochs and seed.

    python benchmarks/speed/bench_speed.py [--root DIR] [--benches all,partial,none,kd] [--epochs-all 10]
                                           [--epochs 3] [--batch-size 32] [--threads 1] [--repeats 1] [--out DIR]

The reference is written the way tutorials write it: torchvision ImageFolder + transforms (the
JPEG/PNG files decoded every epoch), a DataLoader, model.train(), forward/backward/step, a
validation pass per epoch keeping the best weights, then the test set. It uses the same pretrained
MobileNetV2 file, the same train/val/test folders, optimizer (AdamW, per-step cosine), batch size,
epochs, seed and thread count as tlrun, and BatchNorm layers of frozen blocks stay in eval mode as
in tlrun (``--ref-frozen-bn train`` keeps the tutorial's train mode there).

Same seed is not the same random stream: the reference's ``for batch in loader`` resumes the
sampler once more at the end of each epoch (drawing a permutation it does not use), tlrun's engine
takes exactly its steps per epoch, so from epoch 2 on the shuffles differ (so do dropout draws).
With 40 validation images the best-epoch pick then moves, and test accuracy with it: compare
accuracies over several ``--seed`` values, not one run.

Every run is a child process (interpreter start, imports, data loading and model building count),
timed end to end, its peak RSS read from ``os.wait4``. Runs of a benchmark alternate
reference/tlrun (ABBA over ``--repeats``), so two runs share the machine's load as equally as
they can; each side reports its upper-median run (with 2 repeats, its slower one). Both sides time their model work the same way (wall clock around the training
forward+backward+optimizer step and the validation forward): ``loop overhead`` is the share of
the epochs' time outside it, ``e2e overhead`` the share of the whole process.

Without --root, exports Fashion-MNIST (10 classes x 30, 16 train / 4 val / 10 test each, 224x224
JPEG) to OUT/data first. Writes OUT/bench_speed.csv and .json, prints a markdown table. Default OUT:
benchmarks/speed/results/ beside this script (the committed CSV).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPLITS = {"train": 16, "val": 4, "test": 10}  # images per class in each split folder


# --- data ------------------------------------------------------------------------------------------

def export_folder(out: Path, size: int, fmt: str, seed: int) -> Path:
    """Fashion-MNIST photos of clothes (Debian's dataset-fashion-mnist), upsampled to size x size RGB,
    as out/{train,val,test}/<class>/<n>.<fmt>: a real image folder both sides read as it is."""
    import numpy as np
    from PIL import Image

    from tlrun.data.sources import DataRequest, default_cache_dir, load_source

    if (out / "train").is_dir():
        return out
    source = load_source(DataRequest("fashion_mnist", None, default_cache_dir()))
    train = source.parts["train"]
    rng = np.random.default_rng(seed)
    for label, name in enumerate(source.classes):
        members = rng.permutation(np.flatnonzero(train.labels == label))[: sum(SPLITS.values())]
        start = 0
        for split, count in SPLITS.items():
            folder = out / split / name.replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            for index in members[start:start + count]:
                image = Image.fromarray(train.pixels[index, 0].numpy()).convert("RGB").resize((size, size), Image.BICUBIC)
                image.save(folder / f"{index:05d}.{fmt}", **({"quality": 90} if fmt == "jpg" else {}))
            start += count
    return out


# --- the plain reference loop (runs in a child process) ----------------------------------------------

def reference(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    import torchvision
    from torch import nn
    from torchvision import datasets, transforms

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    started = time.perf_counter()

    # MobileNetV2 IMAGENET1K_V1's own preprocessing, the tutorial's Compose.
    preprocess = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                     transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    image_sets = {split: datasets.ImageFolder(str(args.root / split), preprocess) for split in SPLITS}
    loaders = {split: torch.utils.data.DataLoader(image_sets[split], batch_size=args.batch_size if split == "train"
                                                  else args.eval_batch_size, shuffle=split == "train",
                                                  num_workers=args.workers,
                                                  # PyTorch's reproducibility recipe: a seeded generator for the
                                                  # shuffle (tlrun seeds its loader the same way).
                                                  generator=torch.Generator().manual_seed(args.seed)
                                                  if split == "train" else None)
               for split in SPLITS}

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(weights_file(), weights_only=True))
    model.classifier[1] = nn.Linear(model.last_channel, len(image_sets["train"].classes))
    frozen = frozen_modules(model, args.freeze)
    for name in frozen:
        for p in model.get_submodule(name).parameters():
            p.requires_grad = False
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    total = args.epochs * len(loaders["train"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    criterion = nn.CrossEntropyLoss()

    best_acc, best_epoch, best_weights, val_history = -1.0, 0, copy.deepcopy(model.state_dict()), []
    epoch_s = compute_s = data_s = 0.0
    for epoch in range(args.epochs):
        epoch_start = time.perf_counter()
        model.train()
        if args.ref_frozen_bn == "eval":
            for name in frozen:
                model.get_submodule(name).eval()
        tick = time.perf_counter()
        for images, labels in loaders["train"]:
            fetched = time.perf_counter()
            data_s += fetched - tick
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            scheduler.step()
            tick = time.perf_counter()
            compute_s += tick - fetched
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in loaders["val"]:
                forward_start = time.perf_counter()
                logits = model(images)
                compute_s += time.perf_counter() - forward_start
                correct += (logits.argmax(1) == labels).sum().item()
        acc = correct / len(image_sets["val"])
        val_history.append(acc)
        if acc > best_acc:
            best_acc, best_epoch, best_weights = acc, epoch + 1, copy.deepcopy(model.state_dict())
        epoch_s += time.perf_counter() - epoch_start
    model.load_state_dict(best_weights)
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in loaders["test"]:
            correct += (model(images).argmax(1) == labels).sum().item()
    return {"test_acc": correct / len(image_sets["test"]), "epoch_s": epoch_s, "compute_s": compute_s,
            "data_s": data_s, "train_size": len(image_sets["train"]), "in_process_s": time.perf_counter() - started,
            "best_epoch": best_epoch, "val_acc": val_history}


def weights_file() -> Path:
    import torchvision

    from tlrun.models.weights import find_local

    name = Path(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url).name
    found = find_local(name)
    if found is None:
        sys.exit(f"bench_speed: {name} is not on this machine")
    return found.path


def frozen_modules(model, strategy: str) -> list[str]:
    """The modules tlrun's freeze=<strategy> freezes (the same stages; the loop stays plain)."""
    from tlrun.freeze import make_plan

    if strategy == "none":
        return []
    probe = copy.deepcopy(model)
    plan = make_plan(probe, "classifier.1", strategy, 224)
    return list(plan.frozen_modules)


def teacher_forward(args: argparse.Namespace) -> dict:
    """What an online teacher costs per epoch: its forward over the training images (stored in memory)."""
    import torch

    from tlrun.artifacts import load_run_model
    from tlrun.data.datasets import ImageDataset, in_memory
    from tlrun.data.loaders import make_loader
    from tlrun.data.splits import load_run_data
    from tlrun.data.transforms import build_transform
    from omegaconf import OmegaConf

    torch.set_num_threads(args.threads)
    teacher = load_run_model(args.teacher / "ft_model.pt", torch.device("cpu"))
    data_cfg = OmegaConf.create(teacher_data_cfg(args.root))
    train = in_memory(load_run_data(data_cfg, args.seed).splits["train"], teacher.geometry, 1 << 20)
    loader = make_loader(ImageDataset(train, build_transform(teacher.geometry, None, train=False)),
                         args.batch_size, False, args.seed)
    model = teacher.model.eval().to(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for _ in range(args.epochs):
            started = time.perf_counter()
            for images, _labels in loader:
                model(images.contiguous(memory_format=torch.channels_last))
            times.append(time.perf_counter() - started)
    return {"teacher_forward_epoch_s": sorted(times)[len(times) // 2], "train_size": len(train)}


def teacher_data_cfg(root: Path) -> dict:
    from dataclasses import asdict

    from tlrun.config import DataConfig

    cfg = asdict(DataConfig())
    cfg.update(name="imagefolder", root=str(root))
    return cfg


def data_path_bench(args: argparse.Namespace) -> list[dict]:
    """One epoch of the training loader (no model): the in-memory uint8 store vs streaming the files
    (0 or 1 persistent worker), without and with random augmentation (random resized crop + flip)."""
    import statistics

    import torch
    from omegaconf import OmegaConf

    from tlrun.data.datasets import ImageDataset, in_memory
    from tlrun.data.loaders import make_loader
    from tlrun.data.splits import load_run_data
    from tlrun.data.transforms import ImageGeometry, build_transform
    from tlrun.models.factory import Preprocess

    torch.set_num_threads(args.threads)
    data_cfg = OmegaConf.create(teacher_data_cfg(args.root))
    files = load_run_data(data_cfg, args.seed).splits["train"]
    geometry = ImageGeometry.resolve(Preprocess(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), data_cfg)
    started = time.perf_counter()
    stored = in_memory(files, geometry, 1 << 20)
    store_s = time.perf_counter() - started
    rows = []
    for augmented in (False, True):
        augment = OmegaConf.create({**data_cfg.augment, "random_resized_crop": augmented, "hflip": augmented})
        transform = build_transform(geometry, augment, train=True)
        loaders = {"in-memory store": make_loader(ImageDataset(stored, transform), args.batch_size, True, 0),
                   "stream files, 0 workers": make_loader(ImageDataset(files, transform), args.batch_size, True, 0),
                   "stream files, 1 persistent worker": make_loader(ImageDataset(files, transform), args.batch_size,
                                                                    True, 0, num_workers=1)}
        times: dict[str, list[float]] = {name: [] for name in loaders}
        for _ in range(4):  # interleaved; the first round warms workers up and is dropped
            for name, loader in loaders.items():
                tick = time.perf_counter()
                for _batch in loader:
                    pass
                times[name].append(time.perf_counter() - tick)
        for name, measured in times.items():
            epoch = statistics.median(measured[1:])
            rows.append({"bench": "data path", "side": f"{name}{', augmented' if augmented else ''}", "epochs": 1,
                         "time_s": epoch, "img_per_s": len(files) / epoch,
                         "note": f"store built once in {store_s:.2f} s" if name.startswith("in-memory") else ""})
    return rows


def layout_bench(args: argparse.Namespace) -> list[dict]:
    """MobileNetV2 training steps (forward + backward, batch --batch-size, 224 px) on this CPU: NCHW vs
    channels_last, float32 vs bf16 autocast; interleaved, median of 3 after a warm-up."""
    import statistics

    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    images = torch.randn(args.batch_size, 3, 224, 224)
    labels = torch.randint(0, 10, (args.batch_size,))
    settings = [(layout, amp) for layout in ("contiguous", "channels_last") for amp in ("off", "bf16")]
    models, times = {}, {setting: [] for setting in settings}
    for layout, amp in settings:
        model = torchvision.models.mobilenet_v2(num_classes=10).train()
        models[(layout, amp)] = model.to(memory_format=getattr(torch, layout.replace("contiguous", "contiguous_format")))
    for _ in range(4):
        for (layout, amp), model in models.items():
            x = images.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else images
            tick = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
                loss = torch.nn.functional.cross_entropy(model(x).float(), labels)
            loss.backward()
            times[(layout, amp)].append(time.perf_counter() - tick)
    base = statistics.median(times[("contiguous", "off")][1:])
    rows = []
    for (layout, amp), measured in times.items():
        step = statistics.median(measured[1:])
        rows.append({"bench": "cpu layout/amp", "side": f"{layout}, amp={amp}", "epochs": 1, "time_s": step,
                     "img_per_s": args.batch_size / step, "speedup": base / step, "note": "one training step"})
    return rows


# --- the driver -------------------------------------------------------------------------------------

def run_child(command: list[str], log_file: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB, return code) of one child process."""
    started = time.perf_counter()
    with log_file.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - started, usage.ru_maxrss / 1024, process.returncode


def tlrun_command(args: argparse.Namespace, freeze: str, epochs: int, run_dir: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "tlrun", "model=mobilenet_v2", f"freeze={freeze}", "data=imagefolder",
            f"data.root={args.root}", f"train.epochs={epochs}", f"train.batch_size={args.batch_size}",
            f"train.eval_batch_size={args.eval_batch_size}", f"train.lr={args.lr}", f"seed={args.seed}",
            f"device.threads={args.threads}", f"device.num_workers={args.workers}", "device.type=cpu",
            "train.progress=none", f"data.cache_dir={run_dir}-cache",  # a fresh cache: no hit from an earlier run
            f"hydra.run.dir={run_dir}", *extra]


def tlrun_side(args: argparse.Namespace, freeze: str, epochs: int, run_dir: Path) -> dict:
    import pandas as pd

    wall, rss, code = run_child(tlrun_command(args, freeze, epochs, run_dir, args.extra.split()), Path(f"{run_dir}.log"))
    if code != 0:
        raise SystemExit(f"bench_speed: tlrun failed, see {run_dir}.log")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = pd.read_csv(run_dir / "ft_history.csv")
    return {"wall_s": wall, "rss_mb": rss, "test_acc": metrics["test_acc"], "epoch_s": history["epoch_time_s"].sum(),
            "compute_s": history["compute_time_s"].sum(), "data_s": history["data_time_s"].sum(),
            "train_size": metrics["train_size"], "feature_cache": metrics.get("feature_cache", {}).get("mode", "-"),
            "best_epoch": metrics["best_epoch"], "val_acc": history["val_acc"].round(4).tolist()}


def reference_side(args: argparse.Namespace, freeze: str, epochs: int, out: Path) -> dict:
    result = out.with_suffix(".json")
    command = [sys.executable, __file__, "--worker", "reference", "--freeze", freeze, "--epochs", str(epochs),
               "--result", str(result), *common_flags(args)]
    wall, rss, code = run_child(command, out.with_suffix(".log"))
    if code != 0:
        raise SystemExit(f"bench_speed: the reference loop failed, see {out.with_suffix('.log')}")
    return {"wall_s": wall, "rss_mb": rss, "feature_cache": "-", **json.loads(result.read_text())}


def common_flags(args: argparse.Namespace) -> list[str]:
    return ["--root", str(args.root), "--batch-size", str(args.batch_size), "--eval-batch-size",
            str(args.eval_batch_size), "--threads", str(args.threads), "--workers", str(args.workers),
            "--seed", str(args.seed), "--lr", str(args.lr), "--ref-frozen-bn", args.ref_frozen_bn]


def row(bench: str, side: str, epochs: int, result: dict) -> dict:
    images = result["train_size"] * epochs
    return {"bench": bench, "side": side, "epochs": epochs, "time_s": result["wall_s"],
            "img_per_s": images / result["wall_s"], "test_acc": result["test_acc"],
            "loop_overhead": 1 - result["compute_s"] / result["epoch_s"],
            "e2e_overhead": 1 - result["compute_s"] / result["wall_s"],
            "data_s": result["data_s"], "peak_rss_mb": result["rss_mb"], "feature_cache": result["feature_cache"]}


def compare(args: argparse.Namespace, bench: str, freeze: str, epochs: int) -> list[dict]:
    """Reference and tlrun, alternating ABBA over the repeats; the ratio of their median times."""
    import statistics

    results: dict[str, list[dict]] = {"reference": [], "tlrun": []}
    for repeat in range(args.repeats):
        order = ("reference", "tlrun") if repeat % 2 == 0 else ("tlrun", "reference")
        for side in order:
            where = args.out / "runs" / f"{freeze}-{side}-{repeat}"
            print(f"[{time.strftime('%H:%M:%S')}] {bench}: {side} (repeat {repeat + 1}/{args.repeats})", flush=True)
            result = tlrun_side(args, freeze, epochs, where) if side == "tlrun" else \
                reference_side(args, freeze, epochs, where)
            results[side].append(result)
            print(f"    {result['wall_s']:.1f} s, test acc {result['test_acc']:.3f} (best val epoch "
                  f"{result['best_epoch']}, val acc per epoch {result['val_acc']})", flush=True)
    rows = []
    for side in ("reference", "tlrun"):
        runs = sorted(results[side], key=lambda r: r["wall_s"])
        rows.append(row(bench, side, epochs, runs[len(runs) // 2]))
    ref_time = rows[0]["time_s"]
    for r in rows:
        r["speedup"] = ref_time / r["time_s"]
        r["acc_diff_pts"] = 100 * (r["test_acc"] - rows[0]["test_acc"])
    return rows


def kd_bench(args: argparse.Namespace, teacher: Path) -> list[dict]:
    """Student epochs with cached teacher logits (tlrun's distill=kd) vs the same plus an online teacher
    forward per epoch. tlrun has no online-teacher mode here, so that cost is the teacher's forward over the
    training images, timed in its own process, added to the student's epoch time."""
    import pandas as pd

    run_dir = args.out / "runs" / "kd-tlrun"
    wall, rss, code = run_child(tlrun_command(args, "none", args.epochs, run_dir,
                                              ["distill=kd", f"distill.teacher={teacher}", f"model={args.kd_student}",
                                               "model.weights=null", *args.extra.split()]), Path(f"{run_dir}.log"))
    if code != 0:
        raise SystemExit(f"bench_speed: the KD run failed, see {run_dir}.log")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = pd.read_csv(run_dir / "ft_history.csv")
    student_epoch = float(history["epoch_time_s"].median())
    result = args.out / "runs" / "kd-teacher-forward.json"
    command = [sys.executable, __file__, "--worker", "teacher-forward", "--teacher", str(teacher), "--epochs", "3",
               "--result", str(result), *common_flags(args)]
    _wall, teacher_rss, code = run_child(command, result.with_suffix(".log"))
    if code != 0:
        raise SystemExit(f"bench_speed: timing the teacher failed, see {result.with_suffix('.log')}")
    teacher_epoch = json.loads(result.read_text())["teacher_forward_epoch_s"]
    images = metrics["train_size"]
    rows = [
        {"bench": "kd", "side": "online teacher (student epoch + teacher forward)", "epochs": 1,
         "time_s": student_epoch + teacher_epoch, "img_per_s": images / (student_epoch + teacher_epoch),
         "test_acc": float("nan"), "peak_rss_mb": max(rss, teacher_rss)},
        {"bench": "kd", "side": f"tlrun cached teacher logits ({args.kd_student} student)", "epochs": 1,
         "time_s": student_epoch, "img_per_s": images / student_epoch, "test_acc": metrics["test_acc"],
         "peak_rss_mb": rss},
    ]
    for r in rows:
        r["speedup"] = rows[0]["time_s"] / r["time_s"]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="image folder with train/ val/ test/ class folders")
    parser.add_argument("--benches", default="all,partial,none,kd,data,layout",
                        help="all/partial/none: tlrun vs the reference; kd; data: the data path; layout: CPU layout/amp")
    parser.add_argument("--epochs-all", type=int, default=10, help="epochs of the freeze=all benchmark")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of freeze=partial/none and KD")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers, both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg")
    parser.add_argument("--ref-frozen-bn", choices=("eval", "train"), default="eval")
    parser.add_argument("--kd-student", default="small_resnet")
    parser.add_argument("--extra", default="", help="more tlrun overrides, space separated")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    # internal: the child processes
    parser.add_argument("--worker", choices=("reference", "teacher-forward"), help=argparse.SUPPRESS)
    parser.add_argument("--freeze", default="all", help=argparse.SUPPRESS)
    parser.add_argument("--teacher", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = reference(args) if args.worker == "reference" else teacher_forward(args)
        args.result.write_text(json.dumps(result))
        return 0

    import pandas as pd

    from tlrun.report import markdown_table

    args.out = args.out.resolve()
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    args.root = (args.root or export_folder(args.out / "data", 224, args.format, args.seed)).resolve()
    benches = args.benches.split(",")
    rows: list[dict] = []
    if "data" in benches:
        print(f"[{time.strftime('%H:%M:%S')}] data path", flush=True)
        rows += data_path_bench(args)
    if "layout" in benches:
        print(f"[{time.strftime('%H:%M:%S')}] cpu layout/amp", flush=True)
        rows += layout_bench(args)
    for bench, freeze, epochs in (("all", "all", args.epochs_all), ("partial", "partial", args.epochs),
                                  ("none", "none", args.epochs)):
        if bench in benches:
            rows += compare(args, f"freeze={freeze}", freeze, epochs)
    if "kd" in benches:
        teacher = args.out / "runs" / "none-tlrun-0"
        if not (teacher / "ft_model.pt").is_file():
            print(f"[{time.strftime('%H:%M:%S')}] kd: training the teacher (tlrun freeze=none)", flush=True)
            tlrun_side(args, "none", args.epochs, teacher)
        rows += kd_bench(args, teacher)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "bench_speed.csv", index=False)
    (args.out / "bench_speed.json").write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                           "rows": rows}, indent=1, default=str))
    columns = ["bench", "side", "epochs", "time_s", "img_per_s", "test_acc", "speedup", "acc_diff_pts",
               "loop_overhead", "e2e_overhead", "peak_rss_mb", "feature_cache", "note"]
    shown = table[[c for c in columns if c in table]].copy()
    for column in ("img_per_s", "speedup", "peak_rss_mb", "acc_diff_pts"):
        if column in shown:
            shown[column] = shown[column].round(1)
    for column in ("time_s", "test_acc", "loop_overhead", "e2e_overhead"):
        if column in shown:
            shown[column] = shown[column].round(3)
    print(f"\ndata: {args.root} ({', '.join(f'{s} {n}/class' for s, n in SPLITS.items())}); "
          f"batch {args.batch_size}; {args.threads} thread(s); {args.workers} workers; seed {args.seed}; "
          f"repeats {args.repeats}; results in {args.out}")
    print(markdown_table(shown, floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
