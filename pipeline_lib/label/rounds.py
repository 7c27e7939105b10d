"""What a round of labels bought: at pull time the state before (labels, CV and test score, the
champion) and advise's learning-curve forecast for the new label count are written to rounds.jsonl;
the run that trains on the labels puts what it measured beside them (MLflow parent run, summary).
Users learn how far to trust the forecast."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from .. import advise, atomic
from ..paths import Paths
from .labels import ROUNDS_FILE


def cv_score(metrics: dict) -> float | None:
    """The deployed head recipe's cross-validated score (what advise's curve forecasts)."""
    sel = metrics.get("selection") or {}
    row = (sel.get("table") or {}).get(sel.get("winner"), {})
    value = row.get(sel.get("metric", "macro_f1"))
    return None if value is None else float(value)


def record(paths: Paths, folder: Path, pulled: dict, seed: int) -> dict:
    """Append this pull's round to rounds.jsonl; returns it."""
    history = read_rounds(folder)
    metrics, advice, run = (atomic.read_json(p) for p in (paths.metrics, paths.advise_report, paths.mlflow_run))
    n_before = int(advice.get("n_labelled") or 0)
    entry = {"round": len(history) + 1, "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "labels_added": pulled["labels"], "fixes": pulled["fixes"],
             "before": {"labels": n_before, "cv": cv_score(metrics), "test_macro_f1": metrics.get("macro_f1"),
                        "test_accuracy": metrics.get("accuracy"), "model_version": run.get("model_version")},
             "forecast": _forecast(advice, n_before + pulled["labels"], seed)}
    atomic.append_line(folder / ROUNDS_FILE, json.dumps(entry))
    return entry


def read_rounds(folder: Path) -> list[dict]:
    path = folder / ROUNDS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _forecast(advice: dict, labels: int, seed: int) -> dict | None:
    """advise's learning curve extrapolated to ``labels`` (its fitted power law, its interval)."""
    curve = advice.get("curve")
    if not curve or labels <= 0:
        return None
    import numpy as np

    fitted = advise.extrapolate(np.asarray(curve["sizes"]), np.asarray(curve["scores"]), [float(labels)], seed)
    return {"labels": labels, "metric": advice.get("metric"), "predicted": round(fitted["predicted"][0], 4),
            "low": round(fitted["low"][0], 4), "high": round(fitted["high"][0], 4), "level": fitted["level"]}


def result(folder: Path, metrics: dict, ingest: dict, decision: dict | None) -> dict | None:
    """The last round as measured by this run (None when this run trained on no loop labels)."""
    applied = ingest.get("labelling") or {}
    history = read_rounds(folder)
    if not history or not (applied.get("labels") or applied.get("fixes")):
        return None
    last = history[-1]
    before, forecast = last["before"], last.get("forecast")
    out = {"round": last["round"], "labels_added": last["labels_added"], "fixes": last["fixes"],
           "labels_in_training": applied.get("labels"), "cv_before": before.get("cv"), "cv_after": cv_score(metrics),
           "test_macro_f1_before": before.get("test_macro_f1"), "test_macro_f1_after": metrics.get("macro_f1"),
           "forecast": forecast, "vs_champion": _paired(decision)}
    out["sentence"] = sentence(out)
    return out


def _paired(decision: dict | None) -> dict | None:
    """Test accuracy change against the champion on the same items, with a 95 % interval (the
    paired difference of McNemar's discordant counts, normal approximation)."""
    test = (decision or {}).get("test") or {}
    if not test.get("n"):
        return None
    n, wins, losses = test["n"], test["only_second_correct"], test["only_first_correct"]
    diff = (wins - losses) / n
    se = math.sqrt(max(wins + losses - (wins - losses) ** 2 / n, 0.0)) / n
    return {"champion_version": decision.get("champion_version"), "accuracy_change": round(diff, 4),
            "interval_95": [round(diff - 1.96 * se, 4), round(diff + 1.96 * se, 4)], "n": n,
            "p_value": test.get("p_value"), "promoted": decision.get("promoted")}


def sentence(r: dict) -> str:
    """One line for the summary and the MLflow run."""
    parts = [f"Labelling round {r['round']}: +{r['labels_added']} labels" + (f", {r['fixes']} fixes" if r["fixes"] else "")
             + " from Label Studio"]
    f = r.get("forecast")
    if f and r.get("cv_after") is not None:
        parts.append(f"CV {f['metric']} forecast {f['predicted']:.3f} ({f['level']:.0%} interval {f['low']:.3f}–"
                     f"{f['high']:.3f}) at {f['labels']} labels, measured {r['cv_after']:.3f}"
                     + (f" (was {r['cv_before']:.3f})" if r.get("cv_before") is not None else ""))
    if r.get("test_macro_f1_before") is not None:
        parts.append(f"test macro-F1 {r['test_macro_f1_before']:.3f} → {r['test_macro_f1_after']:.3f}")
    v = r.get("vs_champion")
    if v:
        lo, hi = v["interval_95"]
        parts.append(f"accuracy vs champion v{v['champion_version']} {v['accuracy_change']:+.1%} "
                     f"(95% interval {lo:+.1%} to {hi:+.1%}, same {v['n']} test items)")
    return "; ".join(parts) + "."
