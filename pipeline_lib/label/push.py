"""Push: advise's suggestions become Label Studio tasks with the model's answer pre-filled.

- ``label next`` (reports/label_next.csv): the items worth labelling, each with the model's guess,
  a ``score`` that sorts the most useful first (1 for advise's first pick) and the reason.
- ``review`` (reports/suspect_labels.csv): the labels that look wrong, the given label pre-filled and
  the model's suggestion shown, to confirm or fix.

A push is idempotent: an item already in the project, or already labelled by an earlier pull, is not
sent again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

import pandas as pd

from .. import atomic, modalities
from ..config import Params
from ..dataset import load_manifest
from ..errors import PipelineError
from ..paths import Paths
from .labels import read_labels
from .studio import Client

CONTROL = "label"  # the Choices tag's name: what pull reads back
OBJECT = "item"    # the Image/Text tag's name
VIEW_TITLE = "most useful first"
# the Data Manager tab shows the item, why it was sent and its score; these columns it hides
HIDDEN = [f"tasks:{c}" for c in ("inner_id", "total_annotations", "cancelled_annotations", "total_predictions",
                                 "annotations_ids", "annotations_results", "predictions_results",
                                 "predictions_model_versions", "file_upload", "storage_filename", "created_at",
                                 "updated_at", "updated_by", "avg_lead_time", "draft_exists", "annotators",
                                 "data", "data.item_id", "data.rank", "data.confidence", "data.p_given")]


@dataclass(frozen=True)
class Kind:
    """One of the two projects a data set has in Label Studio."""
    name: str        # "label next" | "review"
    suffix: str      # of the project title
    report: str      # the advise CSV it sends (a Paths attribute)

    def title(self, params: Params) -> str:
        base = params.label.project or f"{params.mlflow.model_name}: label next"
        return base + self.suffix


LABEL_NEXT = Kind("label next", "", "label_next_csv")
REVIEW = Kind("review", ": review", "suspect_labels_csv")


def label_config(classes: list[str], tag: str, kind: Kind) -> str:
    """The labelling interface: the item, why it was picked, one choice per class."""
    header = "$reason" if kind is LABEL_NEXT else "given: $given_label. The model suggests $suggested_label."
    choices = "".join(f'<Choice value={quoteattr(c)}/>' for c in classes)
    size = ' maxWidth="480px"' if tag == "Image" else ""
    return (f'<View><Header value={quoteattr(header)} size="5"/>'
            f'<Choices name="{CONTROL}" toName="{OBJECT}" choice="single-radio" showInline="true">{choices}</Choices>'
            f'<{tag} name="{OBJECT}" value="${OBJECT}"{size}/></View>')


def config_classes(config: str) -> list[str]:
    """The classes a project's labelling config offers (its Choice tags)."""
    import xml.etree.ElementTree as ET

    try:
        return [c.get("value", "") for c in ET.fromstring(config).iter("Choice")]
    except ET.ParseError:
        return re.findall(r'<Choice\s+value="([^"]*)"', config)


def project_for(client: Client, params: Params, kind: Kind, classes: list[str], tag: str,
                new_classes: bool = False) -> dict:
    """The data set's project of this kind, created on the first push; refused when its classes no
    longer match the data set's."""
    title = kind.title(params)
    project = client.find_project(title)
    if project is None:
        return client.create_project(title, label_config(classes, tag, kind), description=(
            f"{kind.name} for {params.mlflow.model_name}: pushed by `python -m flows.label push`, "
            "read back by `python -m flows.label pull`."))
    offered = config_classes(project["label_config"])
    missing, extra = [c for c in classes if c not in offered], [c for c in offered if c not in classes]
    if missing or (extra and not new_classes):
        raise PipelineError(
            f"Label Studio project {title!r} (id {project['id']}) offers other classes than the data set: "
            + "; ".join(x for x in (f"missing {missing}" if missing else "", f"not in the data {extra}" if extra else "")
                        if x)
            + ". Set label.project to a new title (a new project is made), or edit the project's labelling "
              "config" + ("" if missing else " (or pass --new-classes to label new classes)"))
    return project


def push(params: Params, paths: Paths, client: Client, kind: Kind = LABEL_NEXT, new_classes: bool = False) -> dict:
    modality = modalities.of_dataset(paths)
    if modality.label_studio_tag is None:
        raise PipelineError(f"{modality.nouns} cannot be labelled in Label Studio by this pipeline (the "
                            f"{modality.name} modality names no Label Studio tag)")
    suggestions = _suggestions(paths, kind)
    _, classes = load_manifest(paths)  # zero-shot classes too: labels are what they lack
    project = project_for(client, params, kind, classes, modality.label_studio_tag, new_classes)
    folder = modality.label_studio_folder(paths, params)
    if folder is not None:
        client.add_local_storage(project["id"], str(folder), f"{modality.nouns} of {paths.root.name}")
    in_project = {t["data"].get("item_id") for t in client.tasks(project["id"])}
    pulled = set(read_labels(paths.resolve(params.label.folder))["item_id"])
    fresh = suggestions[~suggestions["item_id"].isin(in_project | pulled)]
    version = _model_version(paths)
    tasks = [_task(row, kind, modality, params, paths, version, len(suggestions)) for row in fresh.itertuples()]
    sent = client.import_tasks(project["id"], tasks)
    view = client.ensure_view(project["id"], {"title": VIEW_TITLE, "ordering": ["-tasks:predictions_score"],
                                              "hiddenColumns": {"explore": HIDDEN, "labeling": HIDDEN}})
    return {"kind": kind.name, "project": project["title"], "project_id": project["id"], "sent": sent,
            "already_there": int(suggestions["item_id"].isin(in_project).sum()),
            "already_labelled": int((suggestions["item_id"].isin(pulled) & ~suggestions["item_id"].isin(in_project)).sum()),
            "url": client.project_url(project["id"], view), "model_version": version}


def _suggestions(paths: Paths, kind: Kind) -> pd.DataFrame:
    csv = getattr(paths, kind.report)
    if not csv.exists():
        raise PipelineError(f"{csv} not found: run the pipeline first (dvc repro), its advise stage writes it")
    frame = pd.read_csv(csv, dtype={"item_id": str}, keep_default_na=False)
    if "item_id" not in frame.columns:
        raise PipelineError(f"{csv} has no item_id column (written by an older version): run `dvc repro advise`")
    if frame.empty:
        advice = atomic.read_json(paths.advise_report)
        why = (advice.get("label_next") or {}).get("reason", "advise listed none") if kind is LABEL_NEXT else \
            "advise listed no suspicious label"
        raise PipelineError(f"nothing to send: {csv} is empty ({why})")
    return frame


def _model_version(paths: Paths) -> str:
    """Which model made the pre-filled answers (the MLflow run of the last pipeline run)."""
    run = atomic.read_json(paths.mlflow_run)
    if run.get("model_version"):
        return f"model v{run['model_version']}"
    return f"run {str(run['run_id'])[:8]}" if run.get("run_id") else "advise"


def _task(row, kind: Kind, modality, params: Params, paths: Paths, version: str, total: int) -> dict:
    if kind is LABEL_NEXT:
        answer, score = row.suggested_label, round(1.0 - (int(row.rank) - 1) / max(total, 1), 4)
        data = {"reason": f"{row.reason} (model: {row.suggested_label}, {float(row.confidence):.0%})",
                "rank": int(row.rank), "confidence": float(row.confidence)}
    else:  # the given label pre-filled; the more doubtful, the higher the score
        answer, score = row.given_label, round(1.0 - float(row.p_given), 4)
        data = {"given_label": row.given_label, "suggested_label": row.suggested_label,
                "p_given": float(row.p_given), "rank": int(row.rank)}
    return {"data": {OBJECT: modality.label_studio_value(paths, row.path, params), "item_id": row.item_id,
                     "source": str(row.item)[:200], **data},
            "predictions": [{"model_version": version, "score": score, "result": [
                {"from_name": CONTROL, "to_name": OBJECT, "type": "choices", "value": {"choices": [answer]}}]}]}
