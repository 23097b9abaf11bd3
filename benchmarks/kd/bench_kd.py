#!/usr/bin/env python
"""Knowledge-distillation benchmark: student alone vs KD over seeds, and the 4×4 T×α sweep's cost.

    python benchmarks/kd/bench_kd.py [--data digits] [--seeds 0,1,2] [--epochs 10] [--out DIR] [--extra "k=v ..."]

1. A teacher run: --teacher-model (ImageNet weights) fine-tuned at --teacher-size px for --teacher-epochs,
   with the same data overrides (--extra: augmentation too) as the students; seed 0 only, or with
   --teacher-per-seed one teacher per seed, trained on that seed's own training split (the seed also
   draws the images with data.max_per_class: a seed-0 teacher has seen labelled images that another
   seed's student never gets).
2. The --students recipes for each seed: student alone (distill=none), KD from that teacher
   (distill.teacher=<its folder>, --temperature, --alpha, distill.teacher_logits=--teacher-logits), DKD
   (same teacher and T, the paper's α=1, β=8) and FitNet (hints --student-layer ← --teacher-layer, then
   the KD student's recipe): test accuracy mean ± std and each method's gain per seed.
3. `tlrun -m distill=kd distill.temperature=1,3,5,10 distill.alpha=0.3,0.5,0.7,0.9` in one process with a
   fresh cache and distill.teacher_logits=--sweep-teacher-logits (default cached: the teacher's train
   logits computed once): how often the teacher is trained and its train-set logits computed (read
   from the job logs), the teacher stage's time, and the sweep's wall time without it versus a 16-job
   student-alone sweep run the same way (`-m seed=0..15`).
Every run is a normal tlrun run under --out (default: benchmarks/kd/results/ beside this script, where the
committed CSV lives); writes bench_kd.csv and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pandas as pd

from tlrun.report import markdown_table

HERE = Path(__file__).resolve().parent

STUDENT = ["model=lenet", "data.image_size=32", "train.lr=3e-3", "train.batch_size=64"]
# The sweep's own teacher stage (trained inside the sweep, once).
SWEEP_TEACHER = ["distill.teacher_model=mobilenet_v2", "distill.teacher_epochs=4", "distill.teacher_image_size=64"]
QUIET = ["train.progress=none"]


def tlrun(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tlrun", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench_kd: tlrun {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started, result


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def finished(run_dir: Path) -> bool:
    """A completed run (an interrupted one also writes metrics.json, with status "interrupted")."""
    return (run_dir / "metrics.json").is_file() and "test_acc" in metrics(run_dir)


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def train_teacher(out: Path, common: list[str], size: int, epochs: int, model: str = "mobilenet_v2",
                  seed: Optional[int] = None) -> Path:
    """The seed-0 teacher (runs/teacher), or with ``seed`` that seed's own (runs/teacher-seed<seed>)."""
    run_dir = out / "runs" / ("teacher" if seed is None else f"teacher-seed{seed}")
    if not finished(run_dir):
        wall, _ = tlrun([*common, f"model={model}", f"data.image_size={size}", f"train.epochs={epochs}",
                         "train.lr=3e-3", f"seed={seed or 0}", f"hydra.run.dir={run_dir}"], out)
        print(f"  teacher{'' if seed is None else f' seed {seed}'}: test_acc {metrics(run_dir)['test_acc']:.4f} "
              f"({wall:.0f} s)", flush=True)
    return run_dir


def compare_seeds(out: Path, common: list[str], seeds: list[int], teachers: dict[int, Path],
                  students: dict[str, list[str]]) -> pd.DataFrame:
    """Each student recipe (method -> its distill overrides; "{teacher}" stands for the seed's teacher
    folder) trained for each seed; one row per run."""
    rows = []
    for seed in seeds:
        for method, extra in students.items():
            run_dir = out / "runs" / f"{method}-seed{seed}"
            if not finished(run_dir):
                tlrun([*common, *(arg.replace("{teacher}", str(teachers[seed])) for arg in extra), f"seed={seed}",
                       f"hydra.run.dir={run_dir}", f"data.cache_dir={out / 'cache'}"], out)
            m = metrics(run_dir)
            rows.append({"method": method, "seed": seed, "test_acc": m["test_acc"],
                         "teacher_test_acc": m.get("teacher_test_acc"), "params": m["params_total"],
                         "params_teacher": m.get("params_teacher"), "latency_ms_student": m.get("latency_ms_student"),
                         "latency_ms_teacher": m.get("latency_ms_teacher"), "wall_time_s": m["wall_time_s"],
                         "best_val_acc": m["best_val_acc"], "teacher_logits": m.get("teacher_logits"),
                         "epoch_time_s_mean": m.get("epoch_time_s_mean")})
            print(f"  {method} seed {seed}: test_acc {m['test_acc']:.4f}", flush=True)
    return pd.DataFrame(rows)


def count_in_logs(sweep: Path, pattern: str) -> int:
    return sum(len(re.findall(pattern, log.read_text())) for log in sweep.glob("*/tlrun.log"))


def sweep_cost(out: Path, common: list[str], logits_mode: str = "cached") -> dict:
    # The student recipe of part 2 (model, lr, batch), --sweep-epochs long; seed 0 for every KD job.
    kd_sweep, alone_sweep = out / "sweep_kd", out / "sweep_alone"
    cache = out / "sweep_cache"  # fresh: the sweep itself must train the teacher (once)
    kd_wall, _ = tlrun(["-m", *common, "distill=kd", "distill.temperature=1,3,5,10",
                        "distill.alpha=0.3,0.5,0.7,0.9", *SWEEP_TEACHER, f"distill.teacher_logits={logits_mode}",
                        f"data.cache_dir={cache}",
                        f"hydra.sweep.dir={kd_sweep}"], out)
    alone_wall, _ = tlrun(["-m", *common, "distill=none", "seed=" + ",".join(map(str, range(16))),
                           f"data.cache_dir={cache}", f"hydra.sweep.dir={alone_sweep}"], out)
    stage_times = [float(t) for log in kd_sweep.glob("*/tlrun.log")
                   for t in re.findall(r"Teacher stage took ([\d.]+) s", log.read_text())]
    summary = pd.read_csv(kd_sweep / "sweep_summary.csv")
    return {
        "teacher_logits": logits_mode,
        "jobs": len(summary), "jobs_ok": int((summary["status"] == "ok").sum()),
        "teacher_trainings": count_in_logs(kd_sweep, r"Teacher stage: fine-tuning"),
        "teacher_stage_hits": count_in_logs(kd_sweep, r"Teacher stage: cache hit"),
        "teacher_logit_computations": count_in_logs(kd_sweep, r"Teacher logits \(train\): computing"),
        "teacher_logit_hits": count_in_logs(kd_sweep, r"Teacher logits \(train\): cache hit"),
        "teacher_stage_s": round(sum(stage_times), 1),
        "kd_sweep_wall_s": round(kd_wall, 1),
        "kd_sweep_minus_teacher_s": round(kd_wall - sum(stage_times), 1),
        "alone_16_jobs_wall_s": round(alone_wall, 1),
        "ratio": round((kd_wall - sum(stage_times)) / alone_wall, 3),
        "best_cell": summary.sort_values("test_acc", ascending=False).iloc[0][
            ["distill.temperature", "distill.alpha", "test_acc"]].to_dict(),
        "heatmap": str(kd_sweep / "sweep_heatmap.png"),
    }


def student_recipes(args: argparse.Namespace) -> dict[str, list[str]]:
    """Each student method's tlrun overrides ("{teacher}": the seed's teacher folder)."""
    teacher_args = ["distill.teacher={teacher}", f"distill.temperature={args.temperature:g}",
                    f"distill.teacher_logits={args.teacher_logits}", "distill.latency=true"]
    return {
        "student_alone": ["distill=none"],
        "kd": ["distill=kd", *teacher_args, f"distill.alpha={args.alpha:g}", *shlex.split(args.kd_extra)],
        # DKD's own α, β (the paper's defaults, distill/dkd.yaml) replace KD's α; it needs hard labels
        # (no transfer images).
        "dkd": ["distill=dkd", *teacher_args, *shlex.split(args.dkd_extra)],
        # FitNet: distill.hint_epochs of hints, then KD exactly as the kd student (same α, same extras).
        "fitnet": ["distill=fitnet", *teacher_args, f"distill.alpha={args.alpha:g}",
                   f"distill.student_layer={args.student_layer}", f"distill.teacher_layer={args.teacher_layer}",
                   *shlex.split(args.kd_extra), *shlex.split(args.fitnet_extra)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--extra", default="", help="more tlrun overrides for every run")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, mps")
    parser.add_argument("--teacher-size", type=int, default=96)
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--teacher-model", default="mobilenet_v2")
    parser.add_argument("--teacher-per-seed", action="store_true",
                        help="one teacher per seed, trained on that seed's training split (default: the seed-0 "
                             "teacher for every seed)")
    parser.add_argument("--teacher-extra", default="",
                        help="tlrun overrides for the teacher run only (e.g. augmentation, so that its soft "
                             "targets on the training images are not one-hot)")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9, help="weight of the soft (teacher) term")
    parser.add_argument("--teacher-logits", default="auto", choices=("auto", "cached", "online"))
    parser.add_argument("--kd-extra", default="",
                        help="tlrun overrides for the KD students only (e.g. 'distill.transfer_images=5000 "
                             "train.epochs=30': unlabelled transfer images, epochs counted over them)")
    parser.add_argument("--students", default="student_alone,kd",
                        help="student recipes, of student_alone,kd,dkd,fitnet (all with the same data and epochs)")
    parser.add_argument("--dkd-extra", default="", help="tlrun overrides for the DKD students only")
    parser.add_argument("--fitnet-extra", default="", help="tlrun overrides for the FitNet students only")
    parser.add_argument("--student-layer", default="conv2", help="FitNet: the student's guided layer")
    parser.add_argument("--teacher-layer", default="features.13",
                        help="FitNet: the teacher's hint layer (mobilenet_v2: features.13, stride 16, 96 channels)")
    parser.add_argument("--sweep-epochs", type=int, default=5, help="student epochs of each sweep job")
    parser.add_argument("--sweep-teacher-logits", default="cached", choices=("auto", "cached", "online"),
                        help="distill.teacher_logits of the sweep (cached: one teacher pass for all 16 jobs)")
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = [f"data={args.data}", *QUIET, f"device={args.device}", *shlex.split(args.extra)]
    common = [*data, *STUDENT, f"train.epochs={args.epochs}"]
    seeds = [int(s) for s in args.seeds.split(",")]

    print(f"1. teacher on {args.data}", flush=True)
    teacher_data = [*data, *shlex.split(args.teacher_extra)]
    if args.teacher_per_seed:
        teachers = {seed: train_teacher(out, teacher_data, args.teacher_size, args.teacher_epochs, args.teacher_model,
                                        seed) for seed in seeds}
    else:
        teacher = train_teacher(out, teacher_data, args.teacher_size, args.teacher_epochs, args.teacher_model)
        teachers = {seed: teacher for seed in seeds}
    print(f"2. student alone vs KD, seeds {seeds}", flush=True)
    # distill.latency=true: the table's batch-1 CPU latency of teacher and student (measured after training).
    recipes = student_recipes(args)
    unknown = set(args.students.split(",")) - set(recipes)
    if unknown:
        sys.exit(f"bench_kd: unknown --students {','.join(sorted(unknown))}; choose from {','.join(recipes)}")
    runs = compare_seeds(out, common, seeds, teachers, {m: recipes[m] for m in args.students.split(",")})
    runs.to_csv(out / "bench_kd.csv", index=False)
    distilled = runs[runs.method != "student_alone"]
    labels = {"student_alone": "student lenet alone",
              "kd": f"student lenet + KD (T={args.temperature:g}, α={args.alpha:g}{', ' + args.kd_extra if args.kd_extra else ''})",
              "dkd": f"student lenet + DKD (T={args.temperature:g}{', ' + args.dkd_extra if args.dkd_extra else ''})",
              "fitnet": f"student lenet + FitNet hints {args.student_layer}←{args.teacher_layer}, then KD"}
    rows = []
    if not distilled.empty:
        rows.append({"model": f"teacher {args.teacher_model} (fine-tuned, {args.teacher_size} px)",
                     "test acc %": mean_std(distilled.drop_duplicates("seed")["teacher_test_acc"].tolist()),
                     "params": int(distilled["params_teacher"].iloc[0]),
                     "latency ms (batch 1, CPU)": distilled["latency_ms_teacher"].median()})
    for method, group in runs.groupby("method", sort=False):
        logits = group["teacher_logits"].iloc[0]
        rows.append({"model": labels[method] + (f", {logits} teacher logits" if isinstance(logits, str) else ""),
                     "test acc %": mean_std(group["test_acc"].tolist()),
                     "best val acc %": mean_std(group["best_val_acc"].tolist()), "params": int(group["params"].iloc[0]),
                     "latency ms (batch 1, CPU)": distilled["latency_ms_student"].median() if not distilled.empty
                     else float("nan")})
    print(markdown_table(pd.DataFrame(rows), floatfmt=".2f"))
    alone = runs[runs.method == "student_alone"].set_index("seed")["test_acc"]
    for method, group in distilled.groupby("method", sort=False):
        if alone.empty:
            break
        gains = 100 * (group.set_index("seed")["test_acc"] - alone)
        per_seed = ", ".join(f"seed {seed}: {gain:+.1f}" for seed, gain in gains.items())
        print(f"\n{method} gain over the student alone: {gains.mean():+.2f} points (mean of {len(gains)} seeds; "
              f"{per_seed})", flush=True)
    print(flush=True)

    if not args.skip_sweep:
        print("3. 4×4 T×α sweep (fresh cache) vs 16 student-alone jobs", flush=True)
        cost = sweep_cost(out, [*common, f"train.epochs={args.sweep_epochs}"], args.sweep_teacher_logits)
        (out / "bench_kd_sweep.json").write_text(json.dumps(cost, indent=2) + "\n")
        print(markdown_table(pd.DataFrame([{k: v for k, v in cost.items() if k not in ("best_cell", "heatmap")}])))
        print(f"\nbest cell: {cost['best_cell']}; heatmap: {cost['heatmap']}")


if __name__ == "__main__":
    main()
