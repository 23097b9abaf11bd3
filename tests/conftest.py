"""Shared test helpers: run the `tlrun` command (in this process, or as a real process where the
process is the point), make tiny image folders."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest

# Tiny, fast settings for end-to-end runs on 2 CPU cores.
TINY = ["train.progress=none", "train.plots=false", "device=cpu", "device.threads=1"]
# The plots themselves: tests that check them add PLOTS after TINY (the later override wins).
PLOTS = ["train.plots=true"]
_DEBUG_VARIABLES = ("HYDRA_FULL_ERROR", "TLRUN_DEBUG")


# Tests stay offline: the Hugging Face Hub (timm weights) fails at once instead of retrying for ~45 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long process tests first (their modules first, under --dist loadscope): pytest-xdist hands
    tests out in this order, so the short ones fill the end and the workers finish together."""
    items.sort(key=lambda item: item.get_closest_marker("process") is None)


@pytest.fixture
def single_thread():
    """One torch thread for a test of tiny tensors: OpenMP threads only add synchronisation on a busy
    2-core box (BatchNorm ~1000x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_tlrun(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``tlrun ARGS`` run in this process by the real entry point (``tlrun.cli.main``: the same argument
    checks, Hydra composition, run folder and job as the console script), with its own working folder,
    environment, argv and captured output; the exit code is what the process would exit with. Saves the
    ~5 s of imports a fresh interpreter pays. ``timeout`` is kept for the signature of run_tlrun_process."""
    from hydra.core.global_hydra import GlobalHydra
    import torch

    from tlrun.cli import main

    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_threads = torch.get_num_threads()
    stdout, stderr = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    try:
        for name in _DEBUG_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(env or {})
        os.chdir(cwd)
        sys.argv = ["tlrun", *args]
        GlobalHydra.instance().clear()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                main()
            except SystemExit as exit_:
                code = exit_.code
            except BaseException:  # what the interpreter would print before exiting 1
                traceback.print_exc(file=sys.stderr)
                code = 1
    finally:
        GlobalHydra.instance().clear()
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        for handler in root.handlers[:]:  # Hydra's job logging replaced pytest's handlers
            if handler not in saved_handlers:
                root.removeHandler(handler)
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        torch.use_deterministic_algorithms(False)  # device.deterministic=true is process-wide
        torch.set_num_threads(saved_threads)
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, exit 1
        stderr.write(f"{code}\n")
        code = 1
    return subprocess.CompletedProcess(["tlrun", *args], code, stdout.getvalue(), stderr.getvalue())


def sigterm_after(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, when=lambda *args, **kwargs: True,
                  signum: int = 15) -> None:
    """Send this process ``signum`` (SIGTERM) right after ``owner.name`` returns from a call for which
    ``when(*args, **kwargs)`` holds: a preemption at an exact point of an in-process ``run_tlrun`` (tlrun's
    own handlers are installed then, in the main thread, where pytest-xdist runs tests too). The real-process
    versions of the same scenarios (``sigterm_when`` in test_trust) are in the slow tier."""
    import signal

    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            os.kill(os.getpid(), signal.Signals(signum))
        return result

    monkeypatch.setattr(owner, name, wrapper)


def history_written(rows: int, run_dir_part: str = ""):
    """For sigterm_after on Engine.write_history: true once an engine whose run folder contains
    ``run_dir_part`` has just written its ``rows``-th epoch (once: a resumed engine passes that count only once too)."""
    return lambda engine, *_, **__: run_dir_part in str(engine.run_dir) and len(engine.history) == rows


def run_tlrun_process(args: list[str], cwd: Path, env: dict | None = None,
                      timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m tlrun ARGS`` as a real process: for what only a process shows (the interpreter's own
    exit, signals, imports of a fresh interpreter, packaging)."""
    full_env = {k: v for k, v in os.environ.items() if k not in _DEBUG_VARIABLES}
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
