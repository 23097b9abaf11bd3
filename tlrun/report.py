"""Run-folder artefacts people read: metrics.json, curves, confusion matrix, report, summary table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from tlrun.paths import atomic_path


def write_json(data: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: pd.DataFrame, path: Path, title: str = "") -> None:
    """Loss and accuracy per epoch, train vs val (plus any *_acc columns a pipeline adds)."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = history["epoch"]
    for column in [c for c in history.columns if c.endswith("_loss")]:
        ax_loss.plot(epochs, history[column], marker="o", label=column)
    for column in [c for c in history.columns if c.endswith("_acc")]:
        ax_acc.plot(epochs, history[column], marker="o", label=column)
    from matplotlib.ticker import MaxNLocator

    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(targets: np.ndarray, predictions: np.ndarray, classes: list[str], path: Path,
                   title: str = "") -> None:
    from sklearn.metrics import confusion_matrix

    plt = _pyplot()
    matrix = confusion_matrix(targets, predictions, labels=list(range(len(classes))))
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(classes))
    labels = classes if len(classes) <= 40 else [""] * len(classes)
    ax.set_xticks(ticks, labels, rotation=90 if max(map(len, classes)) > 3 else 0, fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 25:
        threshold = matrix.max() / 2 if matrix.size else 0
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if count > threshold else "black")
    ax.set_title(title or "test confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_classification_report(targets: np.ndarray, predictions: np.ndarray, classes: list[str],
                                path: Path) -> None:
    from sklearn.metrics import classification_report

    text = classification_report(targets, predictions, labels=list(range(len(classes))),
                                 target_names=classes, digits=4, zero_division=0)
    path.write_text(text)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4f}" if abs(value) < 1 else f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_summary(metrics: dict, run_dir: Path, keys: Optional[list[str]] = None) -> None:
    """A short table at the end of a run: accuracy, parameters, time, where the folder is."""
    from rich.console import Console
    from rich.table import Table

    from tlrun import distributed

    if not distributed.is_main():
        return
    keys = keys or ["pipeline", "model", "data", "target", "test_acc", "target_acc", "target_acc_last",
                    "best_val_acc", "best_epoch",
                    "params_trainable", "params_total", "wall_time_s", "device"]
    table = Table(title="tlrun result", show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value")
    for key in keys:
        if key in metrics:
            table.add_row(key, _fmt(metrics[key]))
    table.add_row("run folder", str(run_dir))
    Console(stderr=False).print(table)


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub-markdown table (benchmarks print these for README)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else format(value, floatfmt).rstrip("0").rstrip(".")
        return str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def plot_domain_features(panels: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, method: str = "pca",
                         seed: int = 0, labels: tuple[str, str] = ("source", "target")) -> None:
    """Source vs target features in 2-D (PCA or t-SNE), one panel per stage (e.g. before/after)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (title, (source, target)) in zip(axes[0], panels.items()):
        joint = np.concatenate([source, target]).astype(np.float64)
        joint = (joint - joint.mean(0)) / (joint.std(0) + 1e-8)
        if method == "tsne":
            points = TSNE(n_components=2, init="pca", random_state=seed,
                          perplexity=min(30, max(2, len(joint) // 4))).fit_transform(joint)
        else:
            points = PCA(n_components=2, random_state=seed).fit_transform(joint)
        ax.scatter(*points[:len(source)].T, s=5, alpha=0.5, label=labels[0])
        ax.scatter(*points[len(source):].T, s=5, alpha=0.5, label=labels[1])
        ax.set_title(f"{title} ({method.upper()})")
        ax.legend(markerscale=3)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_prediction_grid(images: list[np.ndarray], predicted: list[str], probabilities: list[float],
                         truths: Optional[list[Optional[str]]], path: Path, title: str = "") -> None:
    """Sample images with their predicted class and probability (and the true class: green when right,
    red when wrong)."""
    plt = _pyplot()
    count = len(images)
    cols = min(4, count)
    rows = max(1, math.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for index, ax in enumerate(axes.flat[:count]):
        image = images[index]
        ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
        truth = truths[index] if truths else None
        text = f"{predicted[index]} ({probabilities[index]:.2f})"
        colour = "black"
        if truth is not None:
            text += f"\ntrue: {truth}"
            colour = "green" if truth == predicted[index] else "red"
        ax.set_title(text, fontsize=8, color=colour)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
