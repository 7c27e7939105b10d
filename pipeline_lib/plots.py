"""PNG plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import atomic  # noqa: E402


def save_png(fig, target: Path, dpi: int = 110) -> None:
    """Write a figure atomically as PNG and free it."""
    fig.tight_layout()
    with atomic.atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, classes: list[str], target: Path, title: str = "") -> None:
    n = len(classes)
    size = max(4.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    row_sums = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, row_sums, out=np.zeros_like(cm, dtype=float), where=row_sums > 0)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the actual class")
    if title:
        ax.set_title(title)
    save_png(fig, target)


def plot_reliability(curves: dict[str, np.ndarray], target: Path, title: str = "") -> None:
    """Reliability diagram: accuracy against confidence per bin, one curve per label."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for label, bins in curves.items():
        if len(bins):
            ax.plot(bins[:, 0], bins[:, 1], marker="o", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    save_png(fig, target)


def plot_learning_curve_fit(sizes: np.ndarray, scores: np.ndarray, grid: dict, marks: dict, metric: str,
                            target: Path, title: str = "") -> None:
    """The measured curve (mean ± std over repeats per size), the fitted power law with its
    interval over ``grid`` ({"at", "predicted", "low", "high"}) and the extrapolated ``marks``."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    fractions = sorted(set(np.round(sizes, 6)))
    means = [(np.mean(sizes[np.round(sizes, 6) == f]), scores[np.round(sizes, 6) == f]) for f in fractions]
    ax.errorbar([m for m, _ in means], [v.mean() for _, v in means], yerr=[v.std() for _, v in means], fmt="o",
                color="C0", capsize=3, label="measured (CV, mean ± std over repeats)")
    ax.plot(grid["at"], grid["predicted"], color="C1", label="fitted a − b·n^−c")
    ax.fill_between(grid["at"], grid["low"], grid["high"], color="C1", alpha=0.2,
                    label=f"{grid['level']:.0%} interval (residual bootstrap)")
    for n, (value, lo, hi, name) in marks.items():
        # an interval is never negative: with every score at 1.0 the bound can fall a hair below the value
        ax.errorbar([n], [value], yerr=[[max(value - lo, 0.0)], [max(hi - value, 0.0)]], fmt="s", color="C3", capsize=3)
        ax.annotate(f"{name}: {value:.2f}", (n, value), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("labelled items")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    save_png(fig, target)


def plot_message(message: str, target: Path) -> None:
    """A figure that only says why there is no plot (a declared output is still written)."""
    import textwrap

    fig, ax = plt.subplots(figsize=(6.5, 2.0))
    ax.axis("off")
    ax.text(0.5, 0.5, textwrap.fill(message, 80), ha="center", va="center", fontsize=9, wrap=True)
    save_png(fig, target)


def plot_image_grid(rows: list[tuple[str, list[np.ndarray]]], col_titles: list[str], target: Path) -> None:
    """A grid of images: one labelled row per entry, columns titled."""
    n_rows, n_cols = max(len(rows), 1), len(col_titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.3 * n_cols + 1, 1.3 * n_rows + 0.4), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c, img in enumerate(images[:n_cols]):
            ax = axes[r][c]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    for ax in axes.flat[len(rows) * n_cols:]:
        ax.axis("off")
    save_png(fig, target, dpi=100)


def plot_text_table(rows: list[tuple[str, list[str]]], col_titles: list[str], target: Path, width: int = 48,
                    max_lines: int = 5) -> None:
    """The text counterpart of plot_image_grid: one labelled row per entry, each cell the start of a
    text wrapped to ``width`` characters (at most ``max_lines`` lines)."""
    import textwrap

    def cell(text: str) -> str:
        lines = textwrap.wrap(text, width) or [""]
        return "\n".join(lines[:max_lines]) + (" …" if len(lines) > max_lines else "")

    n_rows, n_cols = max(len(rows), 1), max(len(col_titles), 1)
    label_w, col_w, row_h, head_h = 1.5, 0.062 * width + 0.3, 0.14 * max_lines + 0.25, 0.3
    fig_w, fig_h = label_w + n_cols * col_w, head_h + n_rows * row_h
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, fig_w)
    ax.set_ylim(fig_h, 0)
    ax.axis("off")
    for c, title in enumerate(col_titles):
        ax.text(label_w + c * col_w + 0.1, head_h / 2, title, fontsize=8, weight="bold", va="center")
    for r, (label, texts) in enumerate(rows):
        top = head_h + r * row_h
        ax.axhline(top, color="0.8", linewidth=0.6)
        ax.text(0.1, top + 0.1, label, fontsize=8, va="top", weight="bold")
        for c, text in enumerate(texts[:n_cols]):
            ax.text(label_w + c * col_w + 0.1, top + 0.1, cell(text), fontsize=7, va="top", family="monospace")
    with atomic.atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
