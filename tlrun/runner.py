"""One job: validate the composed config, pick the pipeline, run it, report errors in one line."""

from __future__ import annotations

import errno
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from tlrun.config import expand_paths, validate_config
from tlrun.errors import ConfigError, RunInterrupted, TlrunError
from tlrun.interrupts import INTERRUPTS
from tlrun.report import write_json
from tlrun.rundir import check_run_dir, has_checkpoint, remove_created_parents, run_status

log = logging.getLogger("tlrun")

# What Hydra writes before the job starts: a failed job that leaves only these is removed.
_HYDRA_OWN = {".hydra", "tlrun.log"}


def select_pipeline(cfg: DictConfig) -> str:
    adaptation, distill = cfg.adaptation.method, cfg.distill.method
    adapting = adaptation != "none" or cfg.data.target is not None or cfg.data.target_root is not None
    from tlrun.methods import ADAPTATION, DISTILL

    if adapting and distill != "none":
        what = f"adaptation={adaptation}" if adaptation != "none" else "data.target"
        raise ConfigError(f"{what} and distill={distill} cannot be combined in one run; "
                          "set adaptation=none (and no data.target) or distill=none")
    if adapting:
        return ADAPTATION.spec(adaptation).pipeline  # adaptation=none with a target: the source-only baseline
    return DISTILL.spec(distill).pipeline  # distill=none: fine-tuning


def resolve_device(device_cfg: DictConfig):
    import torch

    wanted = device_cfg.type
    if device_cfg.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    if device_cfg.threads:
        torch.set_num_threads(int(device_cfg.threads))
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    elif wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but this machine has no usable CUDA GPU; use device=auto or device=cpu")
    elif wanted == "mps" and not mps_ok:
        raise ConfigError("device=mps but Apple's MPS backend is not available; use device=auto or device=cpu")
    if wanted == "cuda" and device_cfg.gpu_per_job:
        from hydra.core.hydra_config import HydraConfig

        job = HydraConfig.get().job.num if HydraConfig.initialized() and HydraConfig.get().job.num is not None else 0
        index = int(job) % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if device_cfg.amp == "fp16" and wanted == "cpu":
        raise ConfigError("device.amp=fp16 needs a GPU (float16 on CPU is slow and imprecise); use device.amp=bf16 "
                          "on CPU, or device.amp=off")
    return torch.device(wanted)


def one_line(message: str) -> str:
    """The user-facing line of an error, also when a DataLoader worker wrapped it in its traceback."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in message:
        return lines[-1].split(": ", 1)[-1]
    return " ".join(line.strip() for line in lines)


def _record_interruption(run_dir: Path, exc: RunInterrupted) -> str:
    """metrics.json says the run stopped and how to continue it (the folder stays resumable); returns the
    line printed for the user."""
    from hydra.core.hydra_config import HydraConfig

    import shlex

    overrides = [a for a in HydraConfig.get().overrides.task if not a.startswith(("train.resume=", "hydra."))]
    command = " ".join(["tlrun", *map(shlex.quote, overrides), shlex.quote(f"train.resume={run_dir}")])
    saved = "checkpoints/last.pt keeps the last completed epoch" if has_checkpoint(run_dir) else \
        "no epoch of this run was saved yet, so the resume starts its training again (a teacher stage " \
        "resumes from its own checkpoint)"
    write_json({"status": "interrupted", "signal": exc.signal_name, "epochs_done": exc.epochs_done,
                "resume_with": command}, run_dir / "metrics.json")
    return f"tlrun: {exc}; {saved}; continue with: {command}"


def _remove_if_empty(run_dir: Path) -> None:
    """A job that failed before producing anything leaves no run folder behind (nor the date folder
    that the folder's claim created)."""
    from tlrun.tracking import TRACKING_FILE

    produced = {p.name for p in run_dir.iterdir() if not (p.is_dir() and not any(p.iterdir()))} if run_dir.is_dir() else set()
    # tracking.json only links the folder to its tracker run (which records the failure itself).
    if run_dir.is_dir() and produced <= _HYDRA_OWN | {TRACKING_FILE}:
        shutil.rmtree(run_dir, ignore_errors=True)
        remove_created_parents(run_dir)


def _record_failure(run_dir: Path, message: str, code: int) -> None:
    import json

    from hydra.core.hydra_config import HydraConfig

    from tlrun.sweep import FAILED_FILE

    job = HydraConfig.get().job
    (run_dir / FAILED_FILE).write_text(json.dumps({"job": job.num, "overrides": " ".join(job.override_dirname.split(",")),
                                                   "error": message, "exit_code": code}, indent=2) + "\n")


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _update_sweep_summary() -> None:
    """Each sweep job rewrites the sweep's summary when it ends: it is there even when Hydra stops
    early (a crashed job, a killed launcher) and never waits for the last job."""
    if not _is_multirun():
        return
    from hydra.core.hydra_config import HydraConfig

    from tlrun.sweep import write_report

    try:
        write_report(Path(HydraConfig.get().sweep.dir), final=False)
    except Exception as exc:  # a summary problem must not fail a finished job
        log.warning("could not update the sweep summary: %s", exc)


# A write that failed because of the file system, not of tlrun: the user frees space or points elsewhere.
_WRITE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied", errno.ENOTDIR: "a part of the path is a file"}


def describe_failure(exc: BaseException) -> Optional[tuple[str, int]]:
    """(one line, exit code) for failures a user can act on; None: a bug, keep the traceback."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        where = f" {exc.filename}" if exc.filename else ""
        return (f"could not write{where}: {_WRITE_ERRNOS[exc.errno]}; free space or point hydra.run.dir / "
                "data.cache_dir at a writable disk"), 2
    if isinstance(exc, FloatingPointError):
        return f"{exc}; lower train.lr or set train.grad_clip", 3
    if isinstance(exc, TlrunError):
        return one_line(str(exc)), exc.exit_code
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return ("the GPU ran out of memory; lower train.batch_size (and train.eval_batch_size), use device.amp=bf16 "
                "or fp16, or a smaller data.image_size"), 4
    return None


def run_job(cfg: DictConfig) -> dict:
    """Run one job; user-fixable failures become one line (a sweep job records them and the sweep goes on)."""
    from hydra.core.hydra_config import HydraConfig

    from tlrun.cli import debug_mode

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with INTERRUPTS.job():
            validate_config(cfg)
            expand_paths(cfg)
            if _launch_rank() == 0:  # torchrun's other ranks write only into their scratch folders
                check_run_dir(run_dir, resume=bool(cfg.train.resume))
            metrics = _run(cfg, run_dir)
        _update_sweep_summary()
        return metrics
    except RunInterrupted as exc:
        if debug_mode():
            raise
        with INTERRUPTS.shielded():  # a second signal while the interruption is recorded must not cut it short
            if run_status(run_dir) == "ok":  # the signal came after the results were complete: keep them
                print(f"tlrun: {exc}, after the run had finished; its results in {run_dir} are complete",
                      file=sys.stderr)
                return json.loads((run_dir / "metrics.json").read_text())
            message = _record_interruption(run_dir, exc)
            _update_sweep_summary()
            print(message, file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - every failure is reported; bugs keep their traceback
        described = describe_failure(exc)
        if debug_mode() or (described is None and not _is_multirun()):
            raise
        if described is None:  # a bug in one sweep job: its traceback goes to the job's log, the sweep goes on
            log.exception("job failed with an unexpected error")
            described = (f"unexpected {type(exc).__name__}: {one_line(str(exc))[:300]} (traceback in "
                         f"{run_dir / 'tlrun.log'})", 1)
        message, code = described
        if _is_multirun():
            # The sweep goes on; the job folder keeps failed.json and SweepStatus reports it at the end.
            log.error(message)
            _record_failure(run_dir, message, code)
            _update_sweep_summary()
            return {"status": "failed", "error": message}
        _remove_if_empty(run_dir)
        print(f"tlrun: error: {message}", file=sys.stderr)
        sys.exit(code)
    except KeyboardInterrupt:  # a second Ctrl-C while training stops at once
        if debug_mode():
            raise
        print("tlrun: error: interrupted", file=sys.stderr)
        sys.exit(130)


def _launch_rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def _run(cfg: DictConfig, run_dir: Path) -> dict:
    from tlrun import distributed
    from tlrun.checkpoint import seed_everything
    from tlrun.pipelines import get_pipeline
    from tlrun.pipelines.common import RunContext
    from tlrun.tracking import open_tracker

    device = resolve_device(cfg.device)
    rank_device = distributed.init(device.type)
    if rank_device is not None:
        device = rank_device
        shared = distributed.broadcast_object(str(run_dir))
        log.info("torchrun rank %d of %d on %s; run folder %s", distributed.rank(), distributed.world_size(),
                 device, shared)
        if not distributed.is_main():
            try:
                seed_everything(cfg.seed)
                return get_pipeline(select_pipeline(cfg))(RunContext(cfg, run_dir, device))
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)  # a scratch folder: rank 0 writes the results
    name = select_pipeline(cfg)
    pipeline = get_pipeline(name)
    tracker = open_tracker(cfg, run_dir)  # before any training: an unreachable tracker fails fast
    seed_everything(cfg.seed)
    log.info("tlrun %s pipeline -> %s", name, run_dir)
    try:
        metrics = pipeline(RunContext(cfg, run_dir, device, tracker=tracker))
    except BaseException as exc:
        tracker.close(exc)
        raise
    tracker.close()
    return metrics
