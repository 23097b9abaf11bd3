"""The shell scripts users copy to GPU boxes, each run with tiny settings (set -euo pipefail, env knobs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import make_image_folder, read_metrics, run_tlrun
from tlrun.data.sources import FASHION_DIRS, OPENCV_DIGITS

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
BENCHMARKS = ROOT / "benchmarks"  # benchmarks/<name>/bench_<name>.py (+ .sh), each beside its README
TLRUN = f"{sys.executable} -m tlrun"


def run_script(name: str, env: dict, *args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, "TLRUN": TLRUN, "PYTHONWARNINGS": "ignore", **env}
    script = ROOT / name if "/" in name else SCRIPTS / name  # "benchmarks/da/bench_da.sh" or a scripts/ name
    return subprocess.run(["bash", str(script), *args], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=timeout)


def recording_tlrun(tmp_path: Path) -> tuple[Path, Path]:
    """An executable that stands in for ``tlrun``: it writes the arguments a script gave it to a JSON file
    and exits 0, in a few ms (no torch import). The fast script tests check the script's own logic (its env
    knobs, refusals and the command line it builds) and then run that command line in-process."""
    argv = tmp_path / "tlrun_argv.json"
    recorder = tmp_path / "record_tlrun"
    recorder.write_text(f"#!{sys.executable}\nimport json, sys\n"
                        f"open({str(argv)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    recorder.chmod(0o755)
    return recorder, argv


def recorded(argv: Path) -> list[str]:
    return json.loads(argv.read_text())


FOLDER_KNOBS = {"MODEL": "lenet", "EPOCHS": "1", "DEVICE": "cpu", "FREEZE": "none"}
FOLDER_EXTRA = ("data.image_size=16", "train.progress=none", "device.threads=1")


def test_finetune_folder_script_builds_the_tlrun_command_and_it_runs(tmp_path: Path):
    folder = make_image_folder(tmp_path / "shapes", per_class=8)
    recorder, argv = recording_tlrun(tmp_path)
    missing = run_script("finetune_folder.sh", {"DATA_ROOT": "", "TLRUN": str(recorder)}, cwd=tmp_path)
    assert missing.returncode == 2 and "set DATA_ROOT" in missing.stderr and not argv.exists()
    defaults = run_script("finetune_folder.sh", {"DATA_ROOT": str(folder), "TLRUN": str(recorder)}, cwd=tmp_path)
    assert defaults.returncode == 0, defaults.stderr
    assert recorded(argv) == ["data=imagefolder", f"data.root={folder}", "model=mobilenet_v2", "freeze=partial",
                              "train.epochs=10", "train.batch_size=64", "device=auto", "device.amp=off"]
    knobs = run_script("finetune_folder.sh", {"DATA_ROOT": str(folder), "TLRUN": str(recorder), **FOLDER_KNOBS},
                       *FOLDER_EXTRA, cwd=tmp_path)
    assert knobs.returncode == 0, knobs.stderr
    command = recorded(argv)
    assert command[2:5] == ["model=lenet", "freeze=none", "train.epochs=1"] and command[-3:] == list(FOLDER_EXTRA)
    result = run_tlrun([*command, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)  # what the script would run
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_metrics(tmp_path / "run")["model"] == "lenet"


@pytest.mark.slow  # fast coverage: test_finetune_folder_script_builds_the_tlrun_command_and_it_runs
@pytest.mark.process
def test_finetune_folder_script(tmp_path: Path):
    folder = make_image_folder(tmp_path / "shapes", per_class=8)
    result = run_script("finetune_folder.sh", {"DATA_ROOT": str(folder), **FOLDER_KNOBS}, *FOLDER_EXTRA, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (metrics,) = tmp_path.glob("outputs/*/*/metrics.json")
    assert json.loads(metrics.read_text())["model"] == "lenet"


@pytest.mark.skipif(not OPENCV_DIGITS.is_file(), reason="opencv-doc is not installed")
@pytest.mark.slow  # fast coverage: tests/test_benchmarks.py and the pipeline tests
def test_bench_da_script(tmp_path: Path):
    env = {"PAIRS": "cvdigits:cvdigits_m", "SEEDS": "0", "EPOCHS": "1", "JOBS": "2", "OUT": str(tmp_path / "da"),
           "EXTRA": "data.max_per_class=8 data.image_size=16"}
    result = run_script("benchmarks/da/bench_da.sh", env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = pd.read_csv(tmp_path / "da" / "bench_da.csv")
    assert sorted(runs["method"]) == ["coral", "dann", "mmd", "oracle", "source_only"]
    assert "| pair | method |" in result.stdout
    dann = runs[runs["method"] == "dann"].iloc[0]
    dann_metrics = read_metrics(tmp_path / "da" / "cvdigits-cvdigits_m" / "dann-s0")  # the CSV copies the run's
    assert dann["domain_acc_last"] == pytest.approx(dann_metrics["domain_acc_last"])
    assert dann["disc_active_last"] == pytest.approx(dann_metrics["discriminator_active_last"])
    assert dann["target_acc"] == pytest.approx(dann_metrics["target_acc"])
    assert runs[runs["method"] != "dann"]["disc_active_last"].isna().all()
    # Every method runs the same optimiser recipe (default adam), over the DANN experiment's SGD.
    for method in ("dann", "oracle"):
        run_dir = tmp_path / "da" / "cvdigits-cvdigits_m" / f"{method}-s0"
        train = OmegaConf.load(run_dir / ".hydra" / "config.yaml").train
        assert (train.optimizer, train.lr, train.scheduler) == ("adam", 1e-3, "none")


@pytest.mark.slow  # fast coverage: tests/test_benchmarks.py and the pipeline tests
def test_bench_kd_script_trains_the_sweep_teacher_once(tmp_path: Path):
    env = {"DATA": "digits", "SEEDS": "0", "EPOCHS": "1", "OUT": str(tmp_path / "kd"), "DEVICE": "cpu",
           "EXTRA": "data.max_per_class=8 device.threads=1", "TEACHER_EPOCHS": "1", "TEACHER_SIZE": "32",
           "SWEEP_EPOCHS": "1", "KD_EXTRA": "distill.transfer_images=30 train.epochs=1",
           "STUDENTS": "student_alone,kd,dkd,fitnet"}
    result = run_script("benchmarks/kd/bench_kd.sh", env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert pd.read_csv(tmp_path / "kd" / "bench_kd.csv")["method"].tolist() == ["student_alone", "kd", "dkd", "fitnet"]
    assert read_metrics(tmp_path / "kd" / "runs" / "fitnet-seed0")["hint_regressor"].startswith("conv1x1")  # hints ran
    assert read_metrics(tmp_path / "kd" / "runs" / "kd-seed0")["transfer_images"] == 30  # KD_EXTRA: KD only
    assert "transfer_images" not in read_metrics(tmp_path / "kd" / "runs" / "student_alone-seed0")
    cost = json.loads((tmp_path / "kd" / "bench_kd_sweep.json").read_text())
    assert cost["jobs"] == 16 and cost["jobs_ok"] == 16
    assert cost["teacher_trainings"] == 1 and cost["teacher_logit_computations"] == 1
    assert cost["teacher_stage_hits"] == 15 and cost["teacher_logit_hits"] == 15
    assert cost["teacher_logits"] == "cached"


@pytest.mark.slow  # fast coverage: tests/test_benchmarks.py and the pipeline tests
def test_bench_meta_script(tmp_path: Path):
    env = {"DATA": "digits", "EPOCHS": "1", "EPISODES": "3", "OUT": str(tmp_path / "meta"), "DEVICE": "cpu",
           "EXTRA": "data.max_per_class=60 data.image_size=16 device.threads=1 distill.episodes_per_epoch=4 "
                    "distill.meta_batch=2 distill.val_episodes=2 distill.inner_steps=1 distill.eval_inner_steps=1 "
                    "distill.teacher_model=lenet distill.teacher_epochs=1 distill.teacher_image_size=16 "
                    "distill.n_query=3"}
    result = run_script("benchmarks/meta/bench_meta.sh", env, "--only", "0,1,3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(tmp_path / "meta" / "bench_meta.csv")
    assert table["mode"].tolist() == ["maml", "meta_distill", "protonet"]
    assert {"5way_1shot_acc", "5way_5shot_acc"} <= set(table.columns)


SLURM_KNOBS = {"LAUNCHER": "submitit_local", "MODELS": "lenet", "FREEZES": "all", "SEEDS": "0", "EPOCHS": "1",
               "DEVICE": "cpu"}
SLURM_EXTRA = ("data.image_size=16", "data.max_per_class=5", "train.progress=none", "device.threads=1")


def launcher_target(overrides: list[str]) -> str:
    """The Hydra launcher class a command line selects, from Hydra's own composition of its config."""
    from hydra import compose, initialize_config_module

    from tlrun.config import register_configs

    register_configs()
    with initialize_config_module(config_module="tlrun.conf", version_base=None):
        config = compose("config", overrides=overrides, return_hydra_config=True)
    return config.hydra.launcher._target_


def test_sweep_slurm_script_builds_the_sweep_and_it_runs(tmp_path: Path):
    recorder, argv = recording_tlrun(tmp_path)
    refused = run_script("sweep_slurm.sh", {"LAUNCHER": "slurm_gpu", "PARTITION": "", "TLRUN": str(recorder)},
                         cwd=tmp_path)
    assert refused.returncode == 2 and "PARTITION" in refused.stderr and not argv.exists()
    cluster = run_script("sweep_slurm.sh", {"PARTITION": "gpu", "DATA_ROOT": "/data/x", "TLRUN": str(recorder)},
                         cwd=tmp_path)
    assert cluster.returncode == 0, cluster.stderr
    command = recorded(argv)
    assert command == ["-m", "hydra/launcher=slurm_gpu", "model=mobilenet_v2,efficientnet_lite0",
                       "freeze=all,partial", "seed=0,1,2", "train.epochs=10", "device=auto",
                       "hydra.launcher.partition=gpu", "data=imagefolder", "data.root=/data/x"]
    assert launcher_target(command[1:2]).endswith("SlurmLauncher")  # submitit's plugin is installed
    local = run_script("sweep_slurm.sh", {**SLURM_KNOBS, "TLRUN": str(recorder)}, *SLURM_EXTRA, cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    command = recorded(argv)
    assert command[:2] == ["-m", "hydra/launcher=submitit_local"] and command[-4:] == list(SLURM_EXTRA)
    assert launcher_target(command[1:2]).endswith("LocalLauncher")
    # The same sweep in-process with Hydra's basic launcher (the submitit one: the slow test below).
    result = run_tlrun([word for word in command if not word.startswith("hydra/launcher=")], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (summary,) = tmp_path.glob("multirun/*/*/sweep_summary.csv")
    assert pd.read_csv(summary)[["model", "freeze", "status"]].values.tolist() == [["lenet", "all", "ok"]]


@pytest.mark.slow  # fast coverage: test_sweep_slurm_script_builds_the_sweep_and_it_runs
@pytest.mark.process
def test_sweep_slurm_script_with_the_local_submitit_launcher(tmp_path: Path):
    # One job: the launcher, the script's sweep axes and the summary (sweeps of many jobs: test_sweep.py).
    result = run_script("sweep_slurm.sh", SLURM_KNOBS, *SLURM_EXTRA, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (summary,) = tmp_path.glob("multirun/*/*/sweep_summary.csv")
    frame = pd.read_csv(summary)
    assert frame[["model", "freeze", "status"]].values.tolist() == [["lenet", "all", "ok"]]
    assert list(tmp_path.glob("multirun/*/*/.submitit/*/*_submitted.pkl"))  # it went through submitit


def test_joblib_launcher_is_selectable():
    assert launcher_target(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]).endswith("JoblibLauncher")


@pytest.mark.slow  # fast coverage: test_joblib_launcher_is_selectable, sweeps in-process in test_sweep.py
@pytest.mark.process
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path: Path):
    cmd = [sys.executable, "-m", "tlrun", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=lenet",
           "data=digits", "data.image_size=16", "data.max_per_class=5", "train.epochs=1", "train.progress=none",
           "device=cpu", "device.threads=1", "seed=0,1"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-2000:]
    (summary,) = tmp_path.glob("multirun/*/*/sweep_summary.csv")
    frame = pd.read_csv(summary)
    assert sorted(frame["seed"].tolist()) == [0, 1] and (frame["status"] == "ok").all()
    hydra_files = list(tmp_path.glob("multirun/*/*/*/.hydra/hydra.yaml"))
    assert len(hydra_files) == 2 and all("JoblibLauncher" in path.read_text() for path in hydra_files)


def make_split_folder(root: Path, per_class: int) -> Path:
    """train/ val/ test/ class folders of shape images (the layout bench_speed.py expects)."""
    for index, split in enumerate(("train", "val", "test")):
        make_image_folder(root / split, per_class=per_class, seed=index)
    return root


@pytest.mark.slow  # fast coverage: tests/test_benchmarks.py and the pipeline tests
def test_bench_speed_script(tmp_path: Path):
    root = make_split_folder(tmp_path / "shapes", per_class=4)
    out = tmp_path / "speed"
    result = subprocess.run([sys.executable, str(BENCHMARKS / "speed" / "bench_speed.py"), "--root", str(root),
                             "--out", str(out), "--benches", "all,kd,data,layout", "--epochs-all", "1", "--epochs", "1",
                             "--batch-size", "4", "--eval-batch-size", "8", "--kd-student", "lenet"],
                            capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(out / "bench_speed.csv")
    assert set(table["bench"]) == {"freeze=all", "kd", "data path", "cpu layout/amp"}
    assert (table["time_s"] > 0).all()
    tlrun_row = table[(table["bench"] == "freeze=all") & table["side"].str.contains("tlrun")].iloc[0]
    reference = table[table["bench"] == "freeze=all"].iloc[0]  # the row every freeze=all speedup is against
    assert tlrun_row["speedup"] == pytest.approx(reference["time_s"] / tlrun_row["time_s"], rel=1e-3)
    assert "| bench | side |" in result.stdout


@pytest.mark.slow  # fast coverage: tests/test_benchmarks.py and the pipeline tests
def test_bench_imagefolder_script(tmp_path: Path):
    root = make_image_folder(tmp_path / "shapes", per_class=8)
    out = tmp_path / "imagefolder"
    result = subprocess.run([sys.executable, str(BENCHMARKS / "imagefolder" / "bench_imagefolder.py"), "--root",
                             str(root), "--models", "lenet", "--freezes", "none", "--epochs", "1", "--out", str(out),
                             "--extra", "device=cpu device.threads=1 data.image_size=16"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(out / "bench_imagefolder.csv")
    assert table[["model", "freeze", "status"]].values.tolist() == [["lenet", "none", "ok"]]
    assert json.loads((out / "lenet-none-s0" / "metrics.json").read_text())["test_acc"] == table["test_acc"][0]


@pytest.mark.skipif(not OPENCV_DIGITS.is_file(), reason="opencv-doc is not installed")
@pytest.mark.slow  # fast coverage: tests/test_benchmarks.py, tests/test_freeze.py (backbone lr, LP-FT)
def test_bench_finetune_script(tmp_path: Path):
    out = tmp_path / "finetune"
    result = subprocess.run([sys.executable, str(BENCHMARKS / "finetune" / "bench_finetune.py"), "--datasets",
                             "cvdigits", "--seeds", "0", "--epochs", "2", "--warmup", "1", "--per-class", "4",
                             "--image-size", "32", "--cells", "all:new,none:old,none:lpft", "--out", str(out),
                             "--extra", "device=cpu device.threads=1"],
                            capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-2000:]
    runs = pd.read_csv(out / "bench_finetune.csv")
    assert runs[["freeze", "recipe"]].values.tolist() == [["all", "new"], ["none", "old"], ["none", "lpft"]]
    assert runs["backbone_lr_mult"].tolist() == [0.1, 1.0, 0.1] and runs["head_warmup_epochs"].tolist() == [0, 0, 1]
    assert "| dataset | freeze | recipe |" in result.stdout


@pytest.mark.slow  # fast coverage: tests/test_benchmarks.py and the pipeline tests
def test_bench_rank_script(tmp_path: Path):
    out = tmp_path / "rank"
    result = subprocess.run([sys.executable, str(BENCHMARKS / "rank" / "bench_rank.py"), "--data", "digits", "--models",
                             "mobilenet_v2", "--image-size", "32", "--max-per-class", "6", "--epochs", "1",
                             "--out", str(out)],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(out / "bench_rank.csv")
    assert len(table) == 2 and table["weights"].str.startswith("null").sum() == 1
    assert table["freeze_all_test_acc"].between(0, 1).all()
    assert "kendall_tau_logme" in result.stdout


@pytest.mark.skipif(not any(path.is_dir() for path in FASHION_DIRS), reason="dataset-fashion-mnist is not installed")
def test_export_fashion_mnist_script(tmp_path: Path):
    from PIL import Image

    result = subprocess.run([sys.executable, str(SCRIPTS / "export_fashion_mnist.py"), str(tmp_path / "png"),
                             "--per-class", "2", "--size", "16"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    images = sorted((tmp_path / "png").glob("*/*.png"))
    assert len(images) == 20 and len({path.parent for path in images}) == 10
    with Image.open(images[0]) as image:
        assert image.size == (16, 16) and image.mode == "RGB"


QUICK = ("model=lenet", "data=digits", "data.image_size=16", "data.max_per_class=5", "train.epochs=1",
         "train.progress=none", "device=cpu", "device.threads=1")


def test_quickstart_script_runs_setup_then_tlrun(tmp_path: Path):
    # A venv that setup.sh finds complete (its python, the stamp of this checkout's last install), whose
    # tlrun is the recorder: the script's order (setup, then tlrun with the user's arguments) without the runs.
    real_venv = Path(sys.executable).parent.parent
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    stamp = real_venv / ".tlrun-setup"
    if not stamp.is_file():
        pytest.skip("this venv was not set up by scripts/setup.sh")
    (venv / ".tlrun-setup").write_text(stamp.read_text())
    recorder, argv = recording_tlrun(tmp_path)
    (venv / "bin" / "tlrun").symlink_to(recorder)
    result = run_script("quickstart.sh", {"VENV": str(venv), "SKIP_APT": "1"}, *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "setup: packages up to date" in result.stdout and "setup: done" in result.stdout
    assert recorded(argv) == list(QUICK)
    run = run_tlrun([*recorded(argv), f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert read_metrics(tmp_path / "run")["model"] == "lenet"


@pytest.mark.slow  # fast coverage: test_quickstart_script_runs_setup_then_tlrun
@pytest.mark.process
def test_quickstart_script_sets_up_and_runs(tmp_path: Path):
    # setup.sh on the venv running this test: everything is installed already, so it only re-checks.
    venv = Path(sys.executable).parent.parent
    result = run_script("quickstart.sh", {"VENV": str(venv), "SKIP_APT": "1"}, *QUICK,
                        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "setup: done" in result.stdout
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["model"] == "lenet"
