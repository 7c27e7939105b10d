"""Learning curve: accuracy against labelled images per class, per strategy, and the advice it gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def doubling_gain(shots: list[int], accuracies: list[float]) -> float:
    """Accuracy gained per doubling of the labelled data: slope of accuracy on log2(shots)."""
    x = np.log2(np.asarray(shots, dtype=float))
    y = np.asarray(accuracies, dtype=float)
    if len(x) < 2:
        return 0.0
    return float(np.polyfit(x, y, 1)[0])


def recommend(results: dict[str, dict[int, list[float]]], at_shots: int) -> str:
    """Plain-language advice: the best strategy at (or nearest below) the user's data size, and the
    expected gain from doubling the labelled data, extrapolated from the best strategy's curve."""
    shots = sorted({s for per in results.values() for s in per})
    near = max([s for s in shots if s <= at_shots] or [shots[0]])
    means = {name: float(np.mean(per[near])) for name, per in results.items() if near in per}
    best = max(means, key=means.get)
    curve = [float(np.mean(results[best][s])) for s in shots if s in results[best]]
    gain = doubling_gain([s for s in shots if s in results[best]], curve)
    lead = ""
    if len(means) > 1:
        runner_up = sorted(means.values())[-2]
        lead = f", {means[best] - runner_up:+.1%} over the next best strategy"
    lines = [
        f"At {at_shots} labelled images per class (curve point {near}), use **{best}**: "
        f"{means[best]:.1%} test accuracy{lead}.",
        f"Doubling the labelled data is expected to add about {gain:.1%} accuracy "
        f"(slope of the {best} curve per doubling, {shots[0]}–{shots[-1]} images per class).",
    ]
    if len(means) > 1 and means[best] - runner_up < 0.005:
        lines.append("The strategies are within half a point here: prefer the cheapest (the head).")
    return "\n".join(lines)


def plot_learning_curve(results: dict[str, dict[int, list[float]]], target: Path, title: str = "") -> None:
    from .plots import plt, save_png

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, per in results.items():
        shots = sorted(per)
        means = [np.mean(per[s]) * 100 for s in shots]
        stds = [np.std(per[s]) * 100 for s in shots]
        ax.errorbar(shots, means, yerr=stds, marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({s for per in results.values() for s in per}))
    ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    save_png(fig, target)
