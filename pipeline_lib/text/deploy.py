"""The deployable text classifier: an MLflow pyfunc model (text_model.py and text_normalize.py are
its code; the encoder folder, the head and the classes its artifacts), loaded back (load_model),
and predict's inputs (a CSV with a `text` column, or a text file of one example per line) and
predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .. import atomic
from ..config import Params
from ..dataset import read_manifest
from ..errors import PipelineError
from ..paths import Paths
from ..prediction import LoadedModel, columns, table
from .files import read_text


def log_model(params: Params, paths: Paths, metrics: dict):
    """The text classifier as a pyfunc model (pipeline_lib/text/text_model.py): the encoder's folder, the
    head as a torch.export program, the classes; input example: two real test texts."""
    import tempfile

    import mlflow
    import pandas as pd
    import sentence_transformers
    import torch

    from ..heads import load_head
    from .encoder import resolve_encoder

    tuned = metrics.get("candidate", "head").startswith("finetune")  # the contrastively tuned encoder and its head
    head, meta = load_head(*((paths.finetuned_head, paths.finetune_meta) if tuned else (paths.head, paths.head_meta)))
    spec = meta["backbone_spec"]
    encoder = paths.finetuned_encoder if tuned else resolve_encoder(spec["name"], paths.root)
    manifest = read_manifest(paths.manifest)
    test = manifest[manifest["split"] == "test"].drop_duplicates("label").head(2)
    example = pd.DataFrame({"text": [read_text(paths.resolve(p)) for p in test["path"]]})
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        program = torch.export.export(head.eval(), (torch.zeros(2, head.config["in_dim"]),),
                                      dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
        torch.export.save(program, f"{tmp}/head.pt2")
        atomic.write_json(Path(tmp) / "settings.json", {"classes": meta["classes"], "max_length": spec.get("max_length"),
                                                        "encoder": spec["name"]})
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(here / "text_model.py"), code_paths=[str(here / "text_normalize.py")],
            artifacts={"encoder": str(encoder), "head": f"{tmp}/head.pt2",
                       "settings": f"{tmp}/settings.json"},
            input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"sentence-transformers=={sentence_transformers.__version__}",
                              f"mlflow=={mlflow.__version__}", f"pandas=={pd.__version__}"],
            metadata={"classes": meta["classes"], "modality": "text", "encoder": spec["name"], "encoder_tuned": tuned,
                      "input": "DataFrame with a text column",
                      "output": "DataFrame: label, confidence, one probability column per class"})
    mlflow.log_dict({"classes": meta["classes"]}, "classes.json")
    return info, meta["classes"]


def model_description(name: str, classes: list[str], params) -> str:
    """The registered model's description: what it classifies, its input, how to load it."""
    return (f"Text classifier over {len(classes)} classes: {', '.join(classes)}.\n\n"
            "Input: a DataFrame with a `text` column. Output: a DataFrame with `label`, "
            "`confidence` and one probability column per class.\n\n"
            f"Load: `mlflow.pyfunc.load_model('models:/{name}@champion')`. ")


def predict_prepared(model, metadata: dict, files: list[Path]) -> np.ndarray:
    """A loaded text model's predicted class names for prepared texts (the registry scores the
    champion on the current test split)."""
    out = model.predict(pd.DataFrame({"text": [read_text(f) for f in files]}))
    return out["label"].to_numpy().astype(str)


def load_model(model_uri: str, dst: str):
    import mlflow

    return mlflow.pyfunc.load_model(model_uri, dst_path=dst)


def list_texts(source: Path) -> list[tuple[str, str]]:
    """(where, text) of every input of a text model: the rows of a CSV's ``text`` column, or the
    lines of a text file (UTF-8), blank ones included (they are reported as skipped)."""
    from .files import decode_utf8

    source = Path(source)
    if not source.is_file():
        raise PipelineError(f"predict: {source} is not a file: give a CSV with a `text` column or a text file "
                            "with one example per line")
    content = decode_utf8(source.read_bytes(), f"predict: {source}")
    if source.suffix.lower() == ".csv":
        import io

        try:
            frame = pd.read_csv(io.StringIO(content), dtype=str, keep_default_na=False)
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
            raise PipelineError(f"predict: {source} is not a readable CSV ({str(exc).splitlines()[0]}): "
                                "give a header line `text` and one example per row") from None
        if "text" not in frame.columns:
            raise PipelineError(f"predict: {source} has no `text` column (header found: {', '.join(frame.columns)})")
        return [(f"{source}:{i + 2}", t) for i, t in enumerate(frame["text"])]
    return [(f"{source}:{i + 1}", line) for i, line in enumerate(content.splitlines())]


def predict_texts(loaded: LoadedModel, items: list[tuple[str, str]], batch_size: int = 64, top_k: int = 3
                  ) -> tuple[pd.DataFrame, list[dict]]:
    """Predictions of a text model for the non-empty texts (in input order; the model normalises
    them as ingest did), and the list of skipped (empty) ones."""
    from .text_normalize import normalize_text

    k = max(1, min(top_k, len(loaded.classes)))
    empty = [not normalize_text(text) for _, text in items]
    kept = [item for item, blank in zip(items, empty) if not blank]
    skipped = [{"path": where, "reason": "empty text", "fix": "write the example in the row (or remove it)"}
               for (where, _), blank in zip(items, empty) if blank]
    rows = []
    for start in tqdm(range(0, len(kept), batch_size), desc="predict", unit="batch", disable=len(kept) < batch_size):
        part = kept[start:start + batch_size]
        out = loaded.model.predict(pd.DataFrame({"text": [t for _, t in part]}))
        rows += table(loaded, out[loaded.classes].to_numpy(np.float64), [w for w, _ in part], k, "source")
        for row, (_, text) in zip(rows[-len(part):], part):
            row["text"] = text[:200]
    return pd.DataFrame(rows, columns=columns("source", k) + ["text"]), skipped


read_inputs, predict = list_texts, predict_texts  # the names pipeline_lib.modality.Modality calls
