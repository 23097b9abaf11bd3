#!/usr/bin/env python
"""Domain-adaptation benchmark: source-only, the DA methods and the target oracle over seeds.

    python benchmarks/da/bench_da.py [--pairs cvdigits:cvdigits_m,digits:cvdigits,cvdigits:digits]
                                      [--methods source_only,dann,mmd,coral,oracle] [--dann-weights 0.1,0.3,3]
                                      [--seeds 0,1,2] [--epochs 12] [--jobs 2] [--optimizer adam|sgd] [--out DIR]
                                      [--extra "k=v ..."]

Every cell is a normal `tlrun` run (folders under --out); rerunning with the same --out reuses finished
cells. Prints a markdown table of target accuracy (mean ± std over seeds, model chosen by *source*
validation accuracy) and the gap closure (method − source_only) / (oracle − source_only), then the
label-free validators' table: for each ``adaptation.select_by`` criterion, the mean target accuracy of the
epochs it picks (metrics.json ``validator_picks``) and its Spearman rank correlation with target accuracy
over every epoch of every adapted run (ft_history.csv). Writes bench_da.csv (one row per run) and
bench_da_validators.csv. ``--dann-weights`` adds DANN cells with ``adaptation.weight`` (λ max) at each value
(``dann_w<value>``): the invariance / accuracy trade-off, with the A-distance per value. Default --out:
benchmarks/da/results/ beside this script (the committed CSV).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from tlrun.config.methods import AlignmentBase
from tlrun.report import markdown_table

HERE = Path(__file__).resolve().parent
WARMUP_DEFAULTS = {key: getattr(AlignmentBase, key) for key in ("warmup_epochs", "warmup_source_acc")}

METHODS = ("source_only", "dann", "mmd", "coral", "cdan", "cdan_e", "mcc", "dann_mcc", "oracle")
DEFAULT_METHODS = ("source_only", "dann", "mmd", "coral", "oracle")
# adaptation=... and the overrides of each method cell beyond its YAML's defaults.
METHOD_OVERRIDES = {
    "cdan_e": ["adaptation.entropy=true"],  # CDAN+E: entropy-conditioned discriminator loss
    "dann_mcc": ["adaptation.mcc_weight=1"],  # DANN with MCC as a regulariser on the target batch
    "dann_lambda0": ["adaptation.weight=0"],
    # CDAN with DANN's digit discriminator (below) instead of its paper's 1024x1024 one: the map, not the
    # discriminator, is then the only difference from the dann cell.
    "cdan_d100": ["adaptation.discriminator_width=100", "adaptation.discriminator_depth=1",
                  "adaptation.discriminator_dropout=0", "adaptation.discriminator_batch_norm=false"],
}
# Ablation (not run by default, --methods ...,dann_lambda0): DANN with lambda = 0, i.e. source-only training whose
# BatchNorm layers see the concatenated source + target batches, without any adversarial gradient.
ABLATIONS = ("dann_lambda0", "cdan_d100")
# The DANN paper's digit setting (Ganin et al. 2016, Sec. 5.2) for every method, baselines included: a
# LeNet-style CNN from scratch at 32 px, batches of 64 per domain, lambda ramped by 2/(1+e^-10p)-1 and the
# paper's digit domain classifier (one hidden layer of 100 units).
COMMON = ["model=lenet", "data.image_size=32", "train.batch_size=64", "train.progress=none", "device=cpu",
          "device.threads=1"]
DANN_DISCRIMINATOR = ["adaptation.discriminator_width=100", "adaptation.discriminator_depth=1"]
# The optimiser, the same for every method. "sgd" is the paper's: momentum 0.9, lr 0.01 annealed as
# (1 + 10 p)^-0.75, weight decay 5e-4. At this budget (12 epochs, ~660 steps) DANN's domain classifier wins
# throughout (88-99 % right in the last epochs). "adam" (lr 1e-3, constant, no weight decay, as in widely used
# PyTorch DANN ports) gives DANN its best target accuracy, but its domain accuracy near 0.5 at the end is a
# collapsed discriminator (2-8 % of its units firing), not an equilibrium (benchmarks/da/README.md).
OPTIMIZERS = {
    "adam": ["train.optimizer=adam", "train.lr=1e-3", "train.weight_decay=0", "train.scheduler=none"],
    "sgd": ["train.optimizer=sgd", "train.lr=0.01", "train.momentum=0.9", "train.weight_decay=5e-4",
            "train.scheduler=anneal"],
}


def command(source: str, target: str, method: str, seed: int, epochs: int, run_dir: Path, extra: list[str],
            optimizer: str = "adam", warmup: str = "off") -> list[str]:
    if method == "oracle":  # trained on the target's own labels (its train split), tested on its test split
        data = [f"data={target}"]
    else:
        data = [f"data={source}", f"data.target={target}",
                f"adaptation={'none' if method == 'source_only' else method.split('_')[0]}",
                *METHOD_OVERRIDES.get(method, [])]
        if method.startswith("dann"):  # the DANN defaults for digits: domain classifier on the conv features
            data.insert(0, "experiment=dann_digits")
            data += DANN_DISCRIMINATOR
        if method.startswith("dann_w"):  # the lambda-max sweep: dann_w0.3 -> adaptation.weight=0.3
            data.append(f"adaptation.weight={method[len('dann_w'):]}")
        if method != "source_only" and warmup == "off":  # the first table aligns from the first step, as the papers
            data += ["adaptation.warmup_epochs=0", "adaptation.warmup_source_acc=0"]
        elif method != "source_only":  # tlrun's default warm-up (experiment=dann_digits turns it off), named form
            data += [f"adaptation.warmup_epochs={WARMUP_DEFAULTS['warmup_epochs']}",
                     f"adaptation.warmup_source_acc={WARMUP_DEFAULTS['warmup_source_acc']}",
                     f"adaptation.warmup_batch_norm={warmup}"]
    return [sys.executable, "-m", "tlrun", *data, *COMMON, *OPTIMIZERS[optimizer], f"train.epochs={epochs}",
            f"seed={seed}", f"hydra.run.dir={run_dir}", *extra]


def finished_metrics(run_dir: Path) -> dict | None:
    """metrics.json of a run that finished (not interrupted), else None."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return metrics if metrics.get("status", "ok") == "ok" else None


def run_one(job: dict) -> dict:
    row = {k: job[k] for k in ("pair", "method", "seed")}
    # Rerunning with the same --out completes an interrupted benchmark: finished cells are reused.
    metrics = finished_metrics(job["run_dir"])
    if metrics is not None:
        row["wall_s"] = metrics.get("wall_time_s", float("nan"))
    else:
        started = time.perf_counter()
        result = subprocess.run(job["command"], capture_output=True, text=True)
        row["wall_s"] = round(time.perf_counter() - started, 1)
        if result.returncode != 0:
            row["status"] = "failed: " + (result.stderr.strip().splitlines() or ["?"])[-1][:200]
            return row
        metrics = json.loads((job["run_dir"] / "metrics.json").read_text())
    row.update(status="ok", target_acc=metrics["target_acc"] if job["method"] != "oracle" else metrics["test_acc"],
               target_acc_last=metrics.get("target_acc_last", float("nan")),
               source_test_acc=metrics.get("source_test_acc", float("nan")),
               mmd_before=metrics.get("domain_gap_before", {}).get("mmd", float("nan")),
               mmd_after=metrics.get("domain_gap_after", {}).get("mmd", float("nan")),
               a_dist_before=metrics.get("domain_gap_before", {}).get("a_distance", float("nan")),
               a_dist_after=metrics.get("domain_gap_after", {}).get("a_distance", float("nan")),
               domain_acc_last=metrics.get("domain_acc_last", float("nan")),
               disc_active_last=metrics.get("discriminator_active_last", float("nan")))
    return row


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    ok = runs[runs["status"] == "ok"]
    stats = ok.groupby(["pair", "method"])["target_acc"].agg(["mean", "std", "count"]).reset_index()
    rows = []
    for pair, group in stats.groupby("pair", sort=False):
        by_method = group.set_index("method")
        base = by_method["mean"].get("source_only")
        oracle = by_method["mean"].get("oracle")
        sweep = sorted((m for m in by_method.index if m.startswith("dann_w")), key=lambda m: float(m[len("dann_w"):]))
        for method in (*METHODS, *ABLATIONS, *sweep):
            if method not in by_method.index:
                continue
            mean, std, count = by_method.loc[method, ["mean", "std", "count"]]
            comparable = method not in ("source_only", "oracle") and base is not None and oracle is not None \
                and oracle != base
            closure = (mean - base) / (oracle - base) if comparable else float("nan")
            gaps = ok[(ok["pair"] == pair) & (ok["method"] == method)]
            rows.append({"pair": pair, "method": method, "target_acc": f"{100 * mean:.2f} ± {100 * std:.2f}",
                         "seeds": int(count), "gap_closure": f"{100 * closure:.0f}%" if closure == closure else "",
                         "mmd before→after": f"{gaps['mmd_before'].mean():.3f}→{gaps['mmd_after'].mean():.3f}"
                         if method != "oracle" else "",
                         "A-dist before→after": f"{gaps['a_dist_before'].mean():.2f}→{gaps['a_dist_after'].mean():.2f}"
                         if method != "oracle" else "",
                         # DANN's game in its last epoch (training batches): domain accuracy, discriminator
                         # units firing. 0.50 / ~0 is a collapsed discriminator, not an equilibrium.
                         "disc. acc / active": f"{gaps['domain_acc_last'].mean():.2f} / {gaps['disc_active_last'].mean():.2f}"
                         if method.startswith("dann") and gaps["disc_active_last"].notna().all() else ""})
    return pd.DataFrame(rows)


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rank correlation (Pearson's on average ranks; no SciPy needed)."""
    return float(a.rank().corr(b.rank()))


def validator_table(jobs: list[dict]) -> pd.DataFrame:
    """Per label-free validator: the mean target accuracy of the epochs it picks over the finished
    non-oracle runs, the same for the target-label oracle pick (the ceiling) and the last epoch, and its
    Spearman correlation with target accuracy over all (run, epoch) rows pooled and within runs (mean)."""
    from tlrun.methods.validators import SELECTION

    histories, picks = [], []
    for job in jobs:
        metrics = finished_metrics(job["run_dir"])
        if job["method"] == "oracle" or metrics is None or "validator_picks" not in metrics:
            continue
        history = pd.read_csv(job["run_dir"] / "ft_history.csv")
        histories.append(history.assign(run=str(job["run_dir"])))
        picks.append({name: pick["target_acc"] for name, pick in metrics["validator_picks"].items()}
                     | {"target oracle": float(history["target_acc"].max())})
    if not histories:
        return pd.DataFrame()
    epochs, picked = pd.concat(histories, ignore_index=True), pd.DataFrame(picks)
    rows = []
    for name in [*SELECTION, "target oracle"]:
        if name not in picked:
            continue
        row = {"select_by": name, "runs": int(picked[name].notna().sum()),
               "target_acc of picks": f"{100 * picked[name].mean():.2f}",
               "vs source_val": f"{100 * (picked[name] - picked['source_val']).mean():+.2f}"}
        column, mode = SELECTION.get(name, (None, None))
        if column and column != "epoch" and column in epochs:
            score = epochs[column] if mode == "max" else -epochs[column]  # higher = better for every validator
            row["spearman (all epochs)"] = f"{spearman(score, epochs['target_acc']):.3f}"
            within = [spearman(score[group.index], group["target_acc"]) for _, group in epochs.groupby("run")]
            row["spearman (within runs)"] = f"{pd.Series(within).mean():.3f}"
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="cvdigits:cvdigits_m,digits:cvdigits,cvdigits:digits")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, of {','.join(METHODS + ABLATIONS)}")
    parser.add_argument("--dann-weights", default="",
                        help="DANN cells at these adaptation.weight (lambda max) values, e.g. 0.1,0.3,3")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (each uses one CPU thread)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam",
                        help="the optimiser recipe of every run (sgd: the DANN paper's)")
    parser.add_argument("--warmup", choices=("off", "source", "joint"), default="off",
                        help="off: every method aligns from the first step (the papers' protocol, the first table); "
                             "source: tlrun's default warm-up (adaptation.warmup_epochs / warmup_source_acc, "
                             "warm-up steps are source-only steps); "
                             "joint: that warm-up with adaptation.warmup_batch_norm=joint")
    parser.add_argument("--extra", default="", help="more tlrun overrides for every run, space separated")
    args = parser.parse_args()

    methods = args.methods.split(",") + [f"dann_w{weight}" for weight in filter(None, args.dann_weights.split(","))]
    jobs = []
    for pair in args.pairs.split(","):
        source, target = pair.split(":")
        for seed in map(int, args.seeds.split(",")):
            for method in methods:
                run_dir = args.out / f"{source}-{target}" / f"{method}-s{seed}"
                jobs.append({"pair": f"{source}→{target}", "method": method, "seed": seed, "run_dir": run_dir,
                             "command": command(source, target, method, seed, args.epochs, run_dir, args.extra.split(),
                                                 args.optimizer, args.warmup)})
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = pd.DataFrame(list(pool.map(run_one, jobs)))
    args.out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(args.out / "bench_da.csv", index=False)
    print(f"{len(runs)} runs, {time.perf_counter() - started:.0f} s, {args.jobs} in parallel; runs in {args.out}")
    failed = runs[runs["status"] != "ok"]
    for _, row in failed.iterrows():
        print(f"FAILED {row['pair']} {row['method']} seed {row['seed']}: {row['status']}", file=sys.stderr)
    print(markdown_table(summarize(runs)))
    picks = validator_table(jobs)
    if not picks.empty:
        picks.to_csv(args.out / "bench_da_validators.csv", index=False)
        print(markdown_table(picks))
    return 0 if failed.empty else 1


if __name__ == "__main__":
    sys.exit(main())
