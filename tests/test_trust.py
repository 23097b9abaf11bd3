"""Fault injection: the promises a hostile-but-ordinary user tests. Crafted pickles run no code, bad
values are one line, caches are verified, run folders are unique and never rewritten by a refused
command, resume works from any interruption, and a sweep survives a crashing job.

Most cases run in-process (the config composed as the CLI composes it, the job run by the runner's
own ``_run``); real processes only where the process is the point (exit codes, signals)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (PLOTS, TINY, assert_one_line_error, history_written, make_image_folder, read_metrics, run_dirs,
                      run_tlrun, sigterm_after)
from tlrun import cache, checkpoint
from tlrun.artifacts import load_run_model
from tlrun.cli import check_overrides, quote_path_values
from tlrun.errors import CheckpointError, ConfigError, DataError, WeightsError

LENET = ["model=lenet", "data.image_size=16", "data.max_per_class=12", "train.epochs=1", *TINY]
KD_STAGE = ["distill=kd", "model=lenet", "distill.teacher_model=lenet", "distill.teacher_epochs=2",
            "train.epochs=2", "data.image_size=16", "data.max_per_class=12", *TINY]


# --- helpers ----------------------------------------------------------------------------------

class CodeRunner:
    """Unpickling this object runs a shell command (what a crafted checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickle(path: Path, marker: Path, **extra) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "tlrun-model/1", "state_dict": CodeRunner(marker), **extra}, path)


def compose_run(overrides: list[str]):
    """The job config exactly as the CLI composes and validates it."""
    from tlrun.cli import validate_composed
    from tlrun.config import expand_paths, register_configs
    from hydra import compose, initialize_config_module

    register_configs()
    validate_composed(overrides)
    with initialize_config_module("tlrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    expand_paths(cfg)
    return cfg


def run_in_process(overrides: list[str], run_dir: Path) -> dict:
    from tlrun.runner import _run

    run_dir.mkdir(parents=True, exist_ok=True)
    return _run(compose_run(overrides), run_dir)


def tree_checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def state_dict(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "ft_model.pt", weights_only=True)["state_dict"]


def same_weights(first: Path, second: Path) -> bool:
    a, b = state_dict(first), state_dict(second)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One tiny finished LeNet run (in-process): a predict member, a teacher, a resume target."""
    root = tmp_path_factory.mktemp("finished")
    run_in_process([*LENET, f"data.cache_dir={root / 'cache'}"], root / "run")
    return root / "run"


# --- 1. safe loading ------------------------------------------------------------------------------

def test_crafted_model_file_runs_no_code_in_predict(tmp_path: Path, capsys):
    from tlrun import predict_cli

    marker = tmp_path / "pwned"
    plant_pickle(tmp_path / "evil" / "ft_model.pt", marker)
    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main([str(tmp_path / "evil"), "split:test", "--out", str(tmp_path / "pred")])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tlrun-predict: error:")]
    assert len(errors) == 1 and "refusing to load" in errors[0] and "TLRUN_TRUST_UNSAFE_FILES" in errors[0]
    assert not marker.exists() and not (tmp_path / "pred").exists()


def test_crafted_teacher_and_checkpoint_run_no_code(tmp_path: Path, finished_run: Path):
    marker = tmp_path / "pwned"
    plant_pickle(tmp_path / "teacher" / "ft_model.pt", marker)
    with pytest.raises(WeightsError, match="refusing to load"):
        load_run_model(tmp_path / "teacher")  # what distill.teacher=<folder> calls
    # train.resume=<run> with a crafted last.pt: refused through the real command, before any code runs.
    run = tmp_path / "resumable"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 1, "model": CodeRunner(marker)}, run / "checkpoints" / "last.pt")
    result = run_tlrun([*LENET, f"train.resume={run}"], tmp_path)
    assert_one_line_error(result, "refusing to load", "last.pt")
    assert result.returncode == 2 and not marker.exists()
    assert not (run / "metrics.json").exists()


def test_trust_flag_loads_a_legacy_file_only_when_set(tmp_path: Path, monkeypatch):
    legacy = tmp_path / "legacy.pt"
    torch.save({"numpy": np.random.get_state()}, legacy)  # tlrun 0.1 stored NumPy RNG states like this
    with pytest.raises(CheckpointError, match="TLRUN_TRUST_UNSAFE_FILES=1"):
        checkpoint.load_file(legacy, "a tlrun checkpoint")
    monkeypatch.setenv(checkpoint.TRUST_ENV, "1")
    assert checkpoint.load_file(legacy, "a tlrun checkpoint")["numpy"][0] == "MT19937"


def test_checkpoints_hold_only_what_the_safe_unpickler_reads(finished_run: Path):
    state = torch.load(finished_run / "checkpoints" / "last.pt", weights_only=True)  # raises if not
    assert state["epoch"] == 1 and isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    checkpoint.restore_rng(state["rng"])  # the stored states restore
    truncated = finished_run.parent / "truncated.pt"
    truncated.write_bytes((finished_run / "ft_model.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.load_file(truncated, "a tlrun model file")


def test_planted_teacher_stage_and_logit_cache_are_rebuilt_not_run(tmp_path: Path, caplog):
    marker = tmp_path / "pwned"
    cache_dir = tmp_path / "cache"
    overrides = [*KD_STAGE, f"data.cache_dir={cache_dir}"]
    first = run_in_process(overrides, tmp_path / "first")
    (stage,) = (cache_dir / "teachers").glob("lenet-*/")
    plant_pickle(stage / "ft_model.pt", marker, model_name="lenet")  # the stage hash is predictable
    for logits in (cache_dir / "teacher_logits").glob("*.pt"):
        torch.save(CodeRunner(marker), logits)
    second = run_in_process(overrides, tmp_path / "second")
    assert not marker.exists()
    assert second["teacher_source"] == "stage trained" and second["teacher_logits_cache"] == "miss"
    assert "Ignoring teacher stage model" in caplog.text and "Ignoring teacher-logit cache" in caplog.text
    assert second["student_test_acc"] == first["student_test_acc"]  # rebuilt exactly as it was


# --- 2. one validation layer -------------------------------------------------------------------

@pytest.mark.parametrize("override, needle", [
    ("train.grad_clip=-1", "train.grad_clip: -1; it must be > 0"),
    ("data.max_per_class=-3", "data.max_per_class: -3; it must be >= 1"),
    ("data.max_per_class=0", "it must be >= 1"),
    ("train.early_stopping.patience=-1", "train.early_stopping.patience"),
    ("data.image_size=0", "data.image_size: 0; it must be >= 8"),
    ("data.image_size=-8", "data.image_size"),
    ("data.resize_size=-1", "data.resize_size"),
    ("data.mean=[0.5,0.5]", "give 1 value (every channel) or 3"),
    ("data.std=[0.2,0.0,0.2]", "every std must be > 0"),
    ("device.threads=-1", "device.threads: -1; it must be >= 1"),
    ("seed=-1", "seed"),
])
def test_out_of_range_values_are_refused(override: str, needle: str):
    with pytest.raises(ConfigError, match="invalid value") as info:
        check_overrides([override])
    assert needle in str(info.value)


def test_every_numeric_key_declares_its_range():
    from tlrun.config import numeric_fields_without_range

    assert numeric_fields_without_range() == []


def test_negative_grad_clip_through_the_real_command_leaves_nothing(tmp_path: Path):
    result = run_tlrun([*LENET, "train.grad_clip=-1"], tmp_path)
    assert_one_line_error(result, "train.grad_clip")
    assert result.returncode == 2 and not (tmp_path / "outputs").exists()


def test_cross_key_refusal_happens_before_hydra_writes_anything(tmp_path: Path):
    result = run_tlrun([*LENET, "adaptation=dann", "distill=kd"], tmp_path)
    assert_one_line_error(result, "cannot be combined")
    assert list(tmp_path.iterdir()) == []  # not even outputs/<date>/


# --- 3. run folders unique, records immutable ----------------------------------------------------

def test_claimed_folders_never_collide(tmp_path: Path):
    from tlrun.rundir import claim_new_dir

    base = str(tmp_path / "outputs" / "day" / "10-00-00")
    claimed = [claim_new_dir(base) for _ in range(3)]
    assert [Path(c).name for c in claimed] == ["10-00-00", "10-00-00_1", "10-00-00_2"]


CLAIM_RACE = """
import sys, time
from tlrun.rundir import claim_new_dir
start = float(sys.argv[2])
while time.time() < start:  # every process claims at the same instant
    pass
print("\\n".join(claim_new_dir(sys.argv[1]) for _ in range(20)))
"""


def test_processes_claiming_the_same_folder_at_once_never_share_one(tmp_path: Path):
    # The race two `tlrun` launched in the same second run: four processes, 20 claims each, one instant.
    base, start = str(tmp_path / "outputs" / "day" / "10-00-00"), str(time.time() + 1.5)
    processes = [subprocess.Popen([sys.executable, "-c", CLAIM_RACE, base, start], stdout=subprocess.PIPE, text=True)
                 for _ in range(4)]
    claimed = [line for process in processes for line in process.communicate(timeout=60)[0].split()]
    assert all(process.returncode == 0 for process in processes)
    assert len(claimed) == 80 and len(set(claimed)) == 80


def test_two_default_runs_in_the_same_second_get_two_folders(tmp_path: Path):
    # Make the collision certain: every second of the next minute already has a folder.
    now = time.time()
    for offset in range(60):
        stamp = time.localtime(now + offset)
        (tmp_path / "outputs" / time.strftime("%Y-%m-%d", stamp) / time.strftime("%H-%M-%S", stamp)).mkdir(
            parents=True, exist_ok=True)
    for seed in (0, 1):  # the real entry point's default run folder, twice (the race itself: the test above)
        result = run_tlrun([*LENET, f"seed={seed}"], tmp_path)
        assert result.returncode == 0, result.stderr
    finished = [d for d in run_dirs(tmp_path) if (d / "metrics.json").is_file()]
    assert len(finished) == 2 and all(d.name.count("_") == 1 for d in finished)
    assert sorted(read_metrics(d)["seed"] for d in finished) == [0, 1]


def test_refused_resumes_change_nothing_on_disk(tmp_path: Path, finished_run: Path):
    before = tree_checksums(finished_run)
    finished = run_tlrun([*LENET, f"train.resume={finished_run}", "train.epochs=3"], tmp_path)
    assert_one_line_error(finished, "already finished")
    # An interrupted run resumed with other overrides: the differences are named.
    interrupted = tmp_path / "interrupted"
    (interrupted / ".hydra").mkdir(parents=True)
    (interrupted / ".hydra" / "overrides.yaml").write_text("- model=lenet\n- train.epochs=1\n")
    (interrupted / "metrics.json").write_text('{"status": "interrupted"}\n')
    marks = tree_checksums(interrupted)
    wrong = run_tlrun(["model=lenet", "train.epochs=3", *TINY, f"train.resume={interrupted}"], tmp_path)
    assert_one_line_error(wrong, "differs from the run it resumes", "train.epochs=3 (the run has 1)")
    assert tree_checksums(finished_run) == before and tree_checksums(interrupted) == marks
    assert not (tmp_path / "outputs").exists()


def test_an_occupied_run_dir_is_refused_before_hydra_writes(tmp_path: Path, finished_run: Path):
    before = tree_checksums(finished_run)
    result = run_tlrun([*LENET, f"hydra.run.dir={finished_run}"], tmp_path)
    assert_one_line_error(result, "already holds results")
    assert tree_checksums(finished_run) == before


def test_run_dir_that_cannot_be_created_is_one_line(tmp_path: Path, monkeypatch):
    from tlrun.cli import check_new_run

    afile = tmp_path / "a_file"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_new_run([f"hydra.run.dir={afile / 'run'}"])
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # root ignores chmod: simulate a read-only disk
    with pytest.raises(ConfigError, match="read-only"):
        check_new_run([f"hydra.run.dir={tmp_path / 'ro' / 'run'}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


# --- 4. content-keyed stages, cache-state independence -------------------------------------------

def test_kd_fresh_and_warm_cache_give_identical_students(tmp_path: Path):
    overrides = [*KD_STAGE, f"data.cache_dir={tmp_path / 'cache'}"]
    fresh = run_in_process(overrides, tmp_path / "fresh")
    warm = run_in_process(overrides, tmp_path / "warm")
    assert fresh["teacher_source"] == "stage trained" and warm["teacher_source"] == "stage cache hit"
    assert same_weights(tmp_path / "fresh", tmp_path / "warm")
    assert fresh["student_test_acc"] == warm["student_test_acc"]


def test_teacher_stage_is_keyed_by_the_images(tmp_path: Path):
    root = make_image_folder(tmp_path / "shapes", per_class=8, size=24)
    overrides = [*KD_STAGE, "data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"]
    first = run_in_process(overrides, tmp_path / "first")
    # Swap two classes' images under the same file names (same sizes, mtimes kept by rename).
    circle, square = root / "circle", root / "square"
    circle.rename(root / "tmp")
    square.rename(circle)
    (root / "tmp").rename(square)
    second = run_in_process(overrides, tmp_path / "second")
    assert first["teacher_source"] == "stage trained" and second["teacher_source"] == "stage trained"
    assert len(list((tmp_path / "cache" / "teachers").glob("lenet-*/"))) == 2


def test_corrupt_cache_entries_are_rebuilt(tmp_path: Path, caplog):
    cache_dir = tmp_path / "cache"
    features = ["model=lenet", "data.image_size=16", "data.max_per_class=12", "train.epochs=1", "freeze=all",
                f"data.cache_dir={cache_dir}", *TINY]
    first = run_in_process(features, tmp_path / "first")
    assert first["feature_cache"]["train"]["status"] == "miss"
    train_npy = Path(first["feature_cache"]["train"]["file"])
    stored = np.load(train_npy)
    np.save(train_npy, np.full_like(stored, 7.0))  # finite garbage of the same size
    second = run_in_process(features, tmp_path / "second")
    assert second["feature_cache"]["train"]["status"] == "miss" and "do not match the checksum" in caplog.text
    assert second["test_acc"] == first["test_acc"]
    train_npy.write_bytes(b"")  # zero bytes
    third = run_in_process(features, tmp_path / "third")
    assert third["feature_cache"]["train"]["status"] == "miss" and third["test_acc"] == first["test_acc"]


def test_same_size_corruption_of_the_domain_cache_is_rebuilt(tmp_path: Path, caplog):
    from tlrun.data.splits import load_run_data
    from tlrun.rank import data_config

    cfg = data_config("digits_m", None, 16, None, str(tmp_path / "cache"))
    clean = load_run_data(cfg, 0).splits["train"].pixels.clone()
    (entry,) = (tmp_path / "cache" / "domains").glob("digits_m-*.pt")
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 4096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    entry.write_bytes(bytes(raw))
    again = load_run_data(cfg, 0).splits["train"].pixels
    assert torch.equal(again, clean) and "do not match the checksum" in caplog.text


def test_wrong_teacher_logits_of_the_right_shape_are_rebuilt(tmp_path: Path, caplog):
    overrides = [*KD_STAGE, f"data.cache_dir={tmp_path / 'cache'}"]
    first = run_in_process(overrides, tmp_path / "first")
    for logits in (tmp_path / "cache" / "teacher_logits").glob("*.pt"):
        torch.save(torch.randn_like(torch.load(logits, weights_only=True)), logits)
    second = run_in_process(overrides, tmp_path / "second")
    assert second["teacher_logits_cache"] == "miss" and second["student_test_acc"] == first["student_test_acc"]
    for logits in (tmp_path / "cache" / "teacher_logits").glob("*.pt"):  # truncated to nothing
        logits.write_bytes(b"")
    third = run_in_process(overrides, tmp_path / "third")
    assert third["teacher_logits_cache"] == "miss" and third["student_test_acc"] == first["student_test_acc"]


def test_unwritable_cache_dir_is_one_line(tmp_path: Path):
    afile = tmp_path / "cache_is_a_file"
    afile.write_text("x")
    with pytest.raises(DataError, match="data.cache_dir=<a writable folder>"):
        with cache.locked(afile / "features" / "x.lock"):
            pass


# --- 5. resume everywhere -------------------------------------------------------------------------

def start(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "TLRUN_DEBUG")}
    full.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "tlrun", *args], cwd=cwd, env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def sigterm_when(process: subprocess.Popen, ready, timeout: float = 240) -> subprocess.CompletedProcess:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None and not ready():
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before the point where it was to be interrupted"
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def history_rows(path_glob, cwd: Path) -> int:
    found = list(cwd.glob(path_glob))
    return len(found[0].read_text().splitlines()) - 1 if found else 0


RESUMABLE = ["model=lenet", "data.image_size=32", "data.max_per_class=60", "train.epochs=4", "seed=5", *TINY]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The RESUMABLE run without any interruption: what every resumed run must equal bit for bit."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    assert run_tlrun([*RESUMABLE, f"hydra.run.dir={cwd / 'run'}"], cwd).returncode == 0
    return cwd / "run"


def resubmit_until_finished(tmp_path: Path, reference: Path, preempted_submit) -> None:
    """A cluster job on a fixed run folder: the same line on every submit (train.resume=D or auto); the first
    starts the run in D, the next ones resume it, each preempted (``preempted_submit(args, epochs)`` stops it
    once ``epochs`` epochs are in its history) until the last one finishes, bit for bit the reference."""
    run = tmp_path / "cluster_run"
    submits = {resume: [*RESUMABLE, f"hydra.run.dir={run}", f"train.resume={resume}"] for resume in (run, "auto")}
    for resume in (run, "auto"):
        target = max(2, history_rows("cluster_run/ft_history.csv", tmp_path) + 1)  # one more epoch this time
        stopped = preempted_submit(submits[resume], target)
        assert stopped.returncode == 75, stopped.stderr
        assert "continue with: tlrun" in stopped.stderr and read_metrics(run)["status"] == "interrupted"
        assert history_rows("cluster_run/ft_history.csv", tmp_path) == target
    (run / "checkpoints" / ".last.pt.tmp-999999999").write_bytes(b"torn")  # a writer SIGKILLed mid-write
    resumed = run_tlrun(submits[run], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(run, reference) and read_metrics(run)["test_acc"] == read_metrics(reference)["test_acc"]
    assert not (run / "checkpoints" / ".last.pt.tmp-999999999").exists()
    again = run_tlrun([*RESUMABLE, f"hydra.run.dir={run}", "train.resume=auto"], tmp_path)
    assert_one_line_error(again, "already finished")


def test_fixed_run_dir_resubmit_resumes_bit_exactly(tmp_path: Path, uninterrupted: Path, monkeypatch):
    from tlrun.engine import Engine

    def preempted_submit(args: list[str], epochs: int) -> subprocess.CompletedProcess:
        with monkeypatch.context() as patch:
            sigterm_after(patch, Engine, "write_history", history_written(epochs))
            return run_tlrun(args, tmp_path)

    resubmit_until_finished(tmp_path, uninterrupted, preempted_submit)


@pytest.mark.slow  # fast coverage: the in-process SIGTERM version above
@pytest.mark.process
def test_fixed_run_dir_resubmit_of_real_processes_resumes_bit_exactly(tmp_path: Path, uninterrupted: Path):
    def preempted_submit(args: list[str], epochs: int) -> subprocess.CompletedProcess:
        return sigterm_when(start(args, tmp_path), lambda: history_rows("cluster_run/ft_history.csv", tmp_path) >= epochs)

    resubmit_until_finished(tmp_path, uninterrupted, preempted_submit)


KD_RESUMABLE = ["distill=kd", "model=lenet", "distill.teacher_model=lenet", "distill.teacher_epochs=3",
                "train.epochs=3", *TINY]
# A real process is signalled by polling its history: its epochs must outlast the poll (and the start-up).
PROCESS_SIZE = ["data.image_size=32", "data.max_per_class=60"]
IN_PROCESS_SIZE = ["data.image_size=16", "data.max_per_class=20"]


def kd_interrupted_twice_then_finished(tmp_path: Path, preempted, size: list[str]) -> None:
    """KD stopped in its teacher stage, then in the student; the third submit finishes bit for bit as an
    uninterrupted run, teacher stage included. ``preempted(args, stage)`` stops a submit once the teacher
    stage ("teacher") or the student ("student") has one epoch in its history."""
    reference = tmp_path / "reference"
    ref = run_tlrun([*KD_RESUMABLE, *size, f"data.cache_dir={tmp_path / 'ref_cache'}",
                     f"hydra.run.dir={reference}"], tmp_path)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "kd"
    args = [*KD_RESUMABLE, *size, f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}",
            f"train.resume={run}"]
    in_stage = preempted(args, "teacher")
    assert in_stage.returncode == 75, in_stage.stderr
    assert "no epoch of this run was saved yet" in in_stage.stderr
    in_student = preempted(args, "student")
    assert in_student.returncode == 75, in_student.stderr
    assert "Teacher stage: resuming" in in_student.stdout + in_student.stderr
    done = run_tlrun(args, tmp_path)
    assert done.returncode == 0, done.stderr
    assert read_metrics(run)["teacher_source"] == "stage cache hit"
    assert same_weights(run, reference)
    (stage,) = (tmp_path / "cache" / "teachers").glob("lenet-*/")
    (ref_stage,) = (tmp_path / "ref_cache" / "teachers").glob("lenet-*/")
    assert same_weights(stage, ref_stage)


def test_kd_interrupted_in_the_stage_and_in_the_student_resumes_bit_exactly(tmp_path: Path, monkeypatch):
    from tlrun.engine import Engine

    def preempted(args: list[str], stage: str) -> subprocess.CompletedProcess:
        where = "teachers" if stage == "teacher" else str(tmp_path / "kd")
        with monkeypatch.context() as patch:
            sigterm_after(patch, Engine, "write_history", history_written(1, where))
            return run_tlrun(args, tmp_path)

    kd_interrupted_twice_then_finished(tmp_path, preempted, IN_PROCESS_SIZE)


@pytest.mark.slow  # fast coverage: the in-process SIGTERM version above
@pytest.mark.process
def test_kd_processes_interrupted_in_the_stage_and_in_the_student_resume_bit_exactly(tmp_path: Path):
    def preempted(args: list[str], stage: str) -> subprocess.CompletedProcess:
        history = "cache/teachers/lenet-*/ft_history.csv" if stage == "teacher" else "kd/ft_history.csv"
        return sigterm_when(start(args, tmp_path), lambda: history_rows(history, tmp_path) >= 1)

    kd_interrupted_twice_then_finished(tmp_path, preempted, PROCESS_SIZE)


def fault_wrapper(tmp_path: Path, patch: str) -> Path:
    """A `tlrun` entry point with one function patched (fault injection at an exact point of the job)."""
    script = tmp_path / "faulty_tlrun.py"
    script.write_text("import os, signal, sys\n" + patch + "\nfrom tlrun.cli import main\nsys.argv[0] = 'tlrun'\nmain()\n")
    return script


def run_wrapper(script: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "TLRUN_DEBUG")}
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("where, module, function", [("data loading", "tlrun.pipelines.finetune", "load_run_data"),
                                                     ("plots after the last epoch", "tlrun.pipelines.common", "plot_curves")])
def test_sigterm_outside_training_is_exit_75_and_resumable(tmp_path: Path, monkeypatch, where: str, module: str,
                                                           function: str):
    import importlib

    run = tmp_path / "run"
    args = [*LENET, "train.epochs=2", *PLOTS, f"hydra.run.dir={run}"]
    with monkeypatch.context() as patch:
        sigterm_after(patch, importlib.import_module(module), function)
        stopped = run_tlrun(args, tmp_path)
    check_interrupted_then_resumed(run, stopped, args, tmp_path)


def check_interrupted_then_resumed(run: Path, stopped: subprocess.CompletedProcess, args: list[str],
                                   tmp_path: Path) -> None:
    assert stopped.returncode == 75, stopped.stderr
    assert "Traceback" not in stopped.stderr and read_metrics(run)["status"] == "interrupted"
    resumed = run_tlrun([*args, f"train.resume={run}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "status" not in read_metrics(run) and (run / "ft_model.pt").is_file()  # a finished run's metrics
    assert len(read_metrics(run)) > 10 and list(np.loadtxt(run / "ft_history.csv", delimiter=",", skiprows=1,
                                                          usecols=0, ndmin=1)) == [1, 2]


@pytest.mark.slow  # fast coverage: the in-process version above
@pytest.mark.process
@pytest.mark.parametrize("where, patch", [
    ("data loading", "import tlrun.data.splits as p\n_load = p.load_run_data\n"
                     "def load(*a, **k):\n    os.kill(os.getpid(), signal.SIGTERM)\n    return _load(*a, **k)\n"
                     "p.load_run_data = load\nimport tlrun.pipelines.finetune as f\nf.load_run_data = load\n"),
    ("plots after the last epoch", "import tlrun.pipelines.common as c\n_plot = c.plot_curves\n"
                                   "def plot(*a, **k):\n    os.kill(os.getpid(), signal.SIGTERM)\n    return _plot(*a, **k)\n"
                                   "c.plot_curves = plot\n"),
])
def test_sigterm_outside_training_of_a_process_is_exit_75_and_resumable(tmp_path: Path, where: str, patch: str):
    run = tmp_path / "run"
    args = [*LENET, "train.epochs=2", *PLOTS, f"hydra.run.dir={run}"]
    check_interrupted_then_resumed(run, run_wrapper(fault_wrapper(tmp_path, patch), args, tmp_path), args, tmp_path)


def test_sweep_survives_a_job_that_crashes(tmp_path: Path, monkeypatch):
    import tlrun.pipelines.finetune as finetune
    from tlrun.pipelines.common import PIPELINES

    real = finetune.run_finetune

    def run(ctx, data=None):  # a bug in one job of the sweep
        if ctx.cfg.seed == 1:
            raise TypeError("a bug in one job")
        return real(ctx, data)

    monkeypatch.setitem(PIPELINES._items, "finetune", run)
    result = run_tlrun(["-m", *LENET, "seed=0,1,2"], tmp_path)
    assert result.returncode == 2, result.stderr
    (sweep,) = (tmp_path / "multirun").glob("*/*")
    failure = json.loads((sweep / "1" / "failed.json").read_text())
    assert "unexpected TypeError: a bug in one job" in failure["error"]
    assert (sweep / "0" / "metrics.json").is_file() and (sweep / "2" / "metrics.json").is_file()
    summary = (sweep / "sweep_summary.csv").read_text().splitlines()
    assert len(summary) == 4 and "failed" in summary[2]
    assert "a bug in one job" in (sweep / "1" / "tlrun.log").read_text()  # the traceback is kept


# --- 6. writes that fail, paths that need quoting -------------------------------------------------

def test_disk_full_while_checkpointing_names_the_disk(tmp_path: Path, monkeypatch):
    def torn_write(obj, handle):
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 8448 vs 8342")

    class Full:
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(checkpoint.torch, "save", torn_write)
    monkeypatch.setattr(checkpoint.os, "statvfs", lambda _path: Full())
    with pytest.raises(CheckpointError, match="the disk is full"):
        checkpoint.save_atomic({"epoch": 2}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_failed_writes_outside_checkpoints_are_one_line():
    from tlrun.runner import describe_failure

    message, code = describe_failure(OSError(errno.ENOSPC, "No space left on device", "/runs/x/ft_history.csv"))
    assert code == 2 and "ft_history.csv" in message and "the disk is full" in message
    message, code = describe_failure(PermissionError(errno.EACCES, "Permission denied", "/ro/metrics.json"))
    assert code == 2 and "permission denied" in message


def test_paths_with_tilde_and_spaces_are_taken_as_typed(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert quote_path_values(["data.root=~/my data (2)", "data.cache_dir=~/c", "train.lr=0.1"]) == \
        [f"data.root='{tmp_path}/my data (2)'", f"data.cache_dir={tmp_path}/c", "train.lr=0.1"]
    with pytest.raises(ConfigError, match="quote a value") as info:
        check_overrides(["train.optimizer=ad(am"])
    assert "'data.root=\"~/my data\"'" in str(info.value)
    root = make_image_folder(tmp_path / "my photos (1)", per_class=6, size=24)
    result = run_tlrun(["data=imagefolder", "data.root=~/my photos (1)", "model=lenet", "data.image_size=16",
                        "train.epochs=1", *TINY], tmp_path, env={"HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert read_metrics(run_dirs(tmp_path)[0])["train_size"] > 0


# --- 7. what an adversarial pass found after the first fixes --------------------------------------

def test_resume_of_a_folder_with_spaces_and_a_shell_safe_resume_command(tmp_path: Path, monkeypatch):
    import shlex

    import tlrun.pipelines.common as common

    run = tmp_path / "a b (1)"
    with monkeypatch.context() as patch:
        sigterm_after(patch, common, "plot_curves")
        stopped = run_tlrun([*LENET, *PLOTS, f"hydra.run.dir={run}"], tmp_path)
    assert stopped.returncode == 75, stopped.stderr
    command = shlex.split(read_metrics(run)["resume_with"])  # what the user pastes into a shell
    assert command[0] == "tlrun" and command[-1] == f"train.resume={run}"
    resumed = run_tlrun(command[1:], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "ft_model.pt").is_file() and "status" not in read_metrics(run)


def test_a_full_disk_at_a_checkpoint_leaves_a_run_that_resumes_to_the_end(tmp_path: Path, monkeypatch):
    from tlrun import engine as engine_module

    run = tmp_path / "run"
    args = [*LENET, "train.epochs=3", f"hydra.run.dir={run}"]
    real_save = engine_module.save_atomic

    def full_at_epoch_two(obj, path):  # the first checkpoint write of epoch 2 (best.pt if it improved)
        if obj["epoch"] >= 2:
            raise CheckpointError(f"could not write {path}: the disk is full (nothing was written)")
        real_save(obj, path)

    monkeypatch.setattr(engine_module, "save_atomic", full_at_epoch_two)
    failed = run_tlrun(args, tmp_path)
    assert_one_line_error(failed, "the disk is full")
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (run / "checkpoints" / "best.pt").is_file() and state["best"]["epoch"] <= state["epoch"]
    monkeypatch.setattr(engine_module, "save_atomic", real_save)  # space freed
    resumed = run_tlrun([*args, f"train.resume={run}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert len((run / "ft_history.csv").read_text().splitlines()) == 4  # header + 3 epochs, none twice


@pytest.mark.process
def test_a_second_signal_while_stopping_still_exits_75(tmp_path: Path):
    run = tmp_path / "run"
    process = start([*LENET, "train.epochs=500", f"hydra.run.dir={run}"], tmp_path)  # tiny epochs, stopped in the 2nd
    deadline = time.time() + 120
    while time.time() < deadline and history_rows("run/ft_history.csv", tmp_path) < 1:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr
    assert read_metrics(run)["status"] == "interrupted"


def test_resume_refusals_found_later(tmp_path: Path, finished_run: Path):
    from tlrun.rundir import override_differences

    # A sweep cannot resume one folder.
    swept = run_tlrun(["-m", *LENET, f"train.resume={finished_run}"], tmp_path)
    assert_one_line_error(swept, "drop -m")
    assert not (tmp_path / "multirun").exists()
    # A fine-tuning checkpoint placed by hand is not continued as a KD run.
    placed = tmp_path / "placed"
    (placed / "checkpoints").mkdir(parents=True)
    (placed / "checkpoints" / "last.pt").write_bytes((finished_run / "checkpoints" / "last.pt").read_bytes())
    kd = run_tlrun([*KD_STAGE, f"data.cache_dir={tmp_path / 'cache'}", f"train.resume={placed}"], tmp_path)
    assert_one_line_error(kd, "written by the finetune pipeline, not kd")
    # Harmless spellings of the same run are not differences.
    assert override_differences(["model=lenet", "train.lr=1e-3"], ["model=lenet", "train.lr=0.001", "seed=0"]) == []
    assert override_differences(["model=lenet"], ["model=lenet", "seed=1"]) == ["seed=1 (the run has 0)"]


@pytest.mark.parametrize("override, needle", [
    ("data.split=[nan,0.5,0.5]", "finite"),
    ("adaptation.mmd_multipliers=[-1]", "positive bandwidth"),
    ("adaptation.mmd_multipliers=[]", "positive bandwidth"),
    ("data.std=[inf]", "finite"),
    ("data.mean=[nan]", "finite"),
    ("train.progressive_resizing=[{image_size:16,epochs:1,lr:nan}]", "lr must be > 0"),
    ("train.lr=nan", "finite"),
])
def test_non_finite_and_empty_values_are_refused(override: str, needle: str):
    with pytest.raises(ConfigError, match=needle):
        check_overrides(["adaptation=mmd", override] if override.startswith("adaptation.") else [override])


def test_too_few_images_to_split_is_one_line(tmp_path: Path):
    root = make_image_folder(tmp_path / "two", classes=("circle", "square"), per_class=1, size=24)
    result = run_tlrun(["data=imagefolder", f"data.root={root}", *LENET], tmp_path)
    assert_one_line_error(result, "too few to split")
    assert run_dirs(tmp_path) == []


def test_resealed_wrong_cache_entries_are_rebuilt_not_trusted(tmp_path: Path, caplog):
    marker = tmp_path / "pwned"
    cache_dir = tmp_path / "cache"
    features = ["model=lenet", "data.image_size=16", "data.max_per_class=12", "train.epochs=1", "freeze=all",
                f"data.cache_dir={cache_dir}", *TINY]
    first = run_in_process(features, tmp_path / "first")
    train_npy = Path(first["feature_cache"]["train"]["file"])
    np.save(train_npy, np.zeros((3, 4), dtype=np.float32))  # the wrong shape, resealed as if written by tlrun
    cache.seal(train_npy)
    second = run_in_process(features, tmp_path / "second")
    assert second["feature_cache"]["train"]["status"] == "miss" and second["test_acc"] == first["test_acc"]
    kd = [*KD_STAGE, f"data.cache_dir={cache_dir}"]
    run_in_process(kd, tmp_path / "kd1")
    for logits in (cache_dir / "teacher_logits").glob("*.pt"):
        torch.save(CodeRunner(marker), logits)
        cache.seal(logits)
    (stage,) = (cache_dir / "teachers").glob("lenet-*/")
    plant_pickle(stage / "ft_model.pt", marker, model_name="lenet")
    cache.seal(stage / "ft_model.pt")
    again = run_in_process(kd, tmp_path / "kd2")
    assert not marker.exists() and again["teacher_logits_cache"] == "miss"
    assert "Ignoring teacher stage" in caplog.text
