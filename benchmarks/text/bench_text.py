#!/usr/bin/env python
"""Text classification: MiniLM through tlrun (freeze=all on cached features, partial, discriminative) against
TF-IDF + logistic regression, on the same splits, 3 seeds, accuracy and wall time.

    python benchmarks/text/bench_text.py [--data rotten_tomatoes,bbc_news] [--seeds 0,1,2]
                                         [--strategies all,partial,discriminative] [--pooling auto|cls|mean]
                                         [--out DIR]

Each MiniLM cell is a normal `tlrun model=minilm data=<set> freeze=<strategy>` run under --out (re-running
the script reuses finished runs). The baseline reads the run's own train/val/test split (split.csv, checked
sample by sample), fits TfidfVectorizer (word 1-2-grams, sublinear tf) + LogisticRegression with C chosen on
the val split, and is scored on the same test split. Writes bench_text.csv (one row per cell and seed) and
bench_text_summary.csv (mean ± std per cell) in --out (default: benchmarks/text/results/, committed).
--pooling is model.pooling (auto: MiniLM's mean pooling; cls: BERT's pooler on the [CLS] token).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent

# Per dataset: texts per class (a 50/10/40 split of them) and the token budget.
DATASETS = {
    "rotten_tomatoes": ["data.max_per_class=500", "data.max_length=64"],
    "bbc_news": ["data.max_per_class=200", "data.max_length=128"],
}
COMMON = ["model=minilm", "data.split=[0.5,0.1,0.4]", "train.batch_size=32", "train.eval_batch_size=64",
          "train.progress=none", "train.plots=false", "device=cpu"]
# One recipe per freeze strategy: a linear probe trains for many cheap epochs on cached features; the
# fine-tuning ones for a few epochs, the head at train.lr and the encoder at freeze.backbone_lr_mult (0.1) x it.
STRATEGIES = {
    "all": ["freeze=all", "train.epochs=40", "train.lr=1e-2"],
    "partial": ["freeze=partial", "freeze.trainable_stages=2", "train.epochs=3", "train.lr=1e-3"],
    # Layer-wise lr decay: the top layer at 1e-4, each one below 1.2x lower (BERT fine-tuning's usual shape).
    "discriminative": ["freeze=discriminative", "freeze.lr_decay=1.2", "train.epochs=3", "train.lr=1e-3"],
}
C_GRID = (0.1, 1.0, 10.0, 100.0)


def run_minilm(data: str, strategy: str, seed: int, args: argparse.Namespace) -> dict:
    run_dir = args.out / "runs" / data / strategy / f"seed{seed}"
    if not (run_dir / "metrics.json").is_file():
        command = [sys.executable, "-m", "tlrun", f"data={data}", *COMMON, *DATASETS[data], *STRATEGIES[strategy],
                   f"seed={seed}", f"model.pooling={args.pooling}", f"device.threads={args.threads}",
                   f"hydra.run.dir={run_dir}"]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"run failed: {' '.join(command)}\n{result.stderr.strip().splitlines()[-1:]}")
        print(f"{data} {strategy} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = pd.read_csv(run_dir / "ft_history.csv")
    return {"data": data, "method": f"minilm_{strategy}", "seed": seed, "test_acc": metrics["test_acc"],
            "best_epoch": metrics["best_epoch"], "best_val_acc": metrics["best_val_acc"],
            "last_val_acc": float(history["val_acc"].iloc[-1]), "epochs": len(history),
            "params_trainable": metrics["params_trainable"], "wall_time_s": metrics["wall_time_s"],
            "train_size": metrics["train_size"], "test_size": metrics["test_size"],
            "feature_cache": metrics.get("feature_cache", {}).get("mode"), "run": str(run_dir)}


def run_tfidf(data: str, seed: int, run_dir: Path) -> dict:
    """TF-IDF + logistic regression on the splits of ``run_dir`` (the same samples, checked)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from tlrun.cli import compose_config
    from tlrun.data.splits import SPLITS, load_run_data

    cfg = compose_config([f"data={data}", "model=minilm", *COMMON, *DATASETS[data], f"seed={seed}"])
    run_data = load_run_data(cfg.data, seed)
    recorded = pd.read_csv(run_dir / "split.csv", dtype={"sample": str})
    for split in SPLITS:
        if recorded.loc[recorded["split"] == split, "sample"].tolist() != list(run_data.splits[split].ids):
            raise SystemExit(f"the {split} split of {run_dir} is not the one rebuilt here")
    started = time.perf_counter()
    texts = {split: run_data.splits[split].texts for split in SPLITS}
    labels = {split: run_data.splits[split].labels for split in SPLITS}
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    train = vectorizer.fit_transform(texts["train"])
    fitted = {c: LogisticRegression(C=c, max_iter=2000).fit(train, labels["train"]) for c in C_GRID}
    val_acc = {c: float((m.predict(vectorizer.transform(texts["val"])) == labels["val"]).mean())
               for c, m in fitted.items()}
    best_c = max(C_GRID, key=lambda c: (val_acc[c], -c))  # ties: the stronger regularisation
    test_acc = float((fitted[best_c].predict(vectorizer.transform(texts["test"])) == labels["test"]).mean())
    return {"data": data, "method": "tfidf_lr", "seed": seed, "test_acc": test_acc, "best_val_acc": val_acc[best_c],
            "params_trainable": int(np.prod(fitted[best_c].coef_.shape) + len(fitted[best_c].intercept_)),
            "wall_time_s": round(time.perf_counter() - started, 2), "train_size": len(texts["train"]),
            "test_size": len(texts["test"]), "C": best_c}


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    summary = rows.groupby(["data", "method"], sort=False).agg(
        test_acc_mean=("test_acc", "mean"), test_acc_std=("test_acc", "std"), seeds=("seed", "count"),
        best_val_acc_mean=("best_val_acc", "mean"), last_val_acc_mean=("last_val_acc", "mean"),
        wall_time_s_mean=("wall_time_s", "mean"), params_trainable=("params_trainable", "first")).reset_index()
    return summary.round({"test_acc_mean": 4, "test_acc_std": 4, "best_val_acc_mean": 4, "last_val_acc_mean": 4,
                          "wall_time_s_mean": 1})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=",".join(DATASETS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--pooling", choices=("auto", "cls", "mean"), default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    datasets, strategies = args.data.split(","), args.strategies.split(",")
    unknown = [d for d in datasets if d not in DATASETS] + [s for s in strategies if s not in STRATEGIES]
    if unknown:
        parser.error(f"unknown --data/--strategies value(s): {', '.join(unknown)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    rows = []
    for data in datasets:
        for seed in seeds:
            for strategy in strategies:
                rows.append(run_minilm(data, strategy, seed, args))
            rows.append(run_tfidf(data, seed, Path(rows[-1]["run"])))
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.drop(columns=["run"]).to_csv(args.out / "bench_text.csv", index=False)
    summary = summarise(table)
    summary.to_csv(args.out / "bench_text_summary.csv", index=False)
    from tlrun.report import markdown_table

    print(markdown_table(summary))
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
