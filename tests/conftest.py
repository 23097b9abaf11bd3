"""Shared test helpers: run the real `tlrun` command in a subprocess, make tiny image folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Tiny, fast settings for end-to-end runs on 2 CPU cores.
TINY = ["train.progress=none", "device=cpu", "device.threads=1"]


def run_tlrun(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "TLRUN_DEBUG")}
    full_env.update({"PYTHONWARNINGS": "ignore", **(env or {})})
    return subprocess.run([sys.executable, "-m", "tlrun", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def run_dirs(cwd: Path) -> list[Path]:
    return sorted(p.parent for p in (cwd / "outputs").glob("*/*/.hydra")) if (cwd / "outputs").exists() else []


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("tlrun: error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in errors[0], errors[0]


def make_image_folder(root: Path, classes=("circle", "square", "cross"), per_class: int = 12,
                      size: int = 40, seed: int = 0) -> Path:
    """Class folders of PNGs whose classes differ by shape, so a model can learn them."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 80, 3)))
            draw = ImageDraw.Draw(image)
            lo, hi = int(rng.integers(4, 10)), int(size - rng.integers(4, 10))
            colour = tuple(int(v) for v in rng.integers(150, 255, 3))
            if label % 3 == 0:
                draw.ellipse([lo, lo, hi, hi], outline=colour, width=3)
            elif label % 3 == 1:
                draw.rectangle([lo, lo, hi, hi], outline=colour, width=3)
            else:
                draw.line([lo, lo, hi, hi], fill=colour, width=3)
                draw.line([lo, hi, hi, lo], fill=colour, width=3)
            image.save(folder / f"{name}_{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "shapes")
