"""The deployable image classifier: logged to MLflow as a torch.export program with its
preprocessing inside (log_model), loaded back (load_model), and predict's inputs (a folder of
images, or a CSV with a `path` column) and predictions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..config import Params
from ..dataset import read_manifest
from ..errors import BadItem, PipelineError
from ..paths import Paths
from ..prediction import MAX_SIDE, LoadedModel, columns, table
from ..runtime import lanes_map, prefetch
from .backbones import Preprocess, batch_for_model
from .files import IMAGE_EXTENSIONS, load_image


def input_example(paths: Paths, resolution: int, n: int = 2) -> np.ndarray:
    """A few real test images (the first of different classes), at most the model's resolution:
    the model's input example (n > 1 keeps the exported batch dimension free)."""
    import torch

    from .backbones import Preprocess, read_image_tensor

    manifest = read_manifest(paths.manifest)
    test = manifest[manifest["split"] == "test"].drop_duplicates("label").head(n)
    if len(test) < n:
        test = manifest[manifest["split"] == "test"].head(n)
    images = [read_image_tensor(paths.resolve(p)) for p in test["path"]]
    side = min(resolution, min(min(im.shape[1:]) for im in images))
    return torch.stack([Preprocess(side).resize(im) for im in images]).numpy()


def log_model(params: Params, paths: Paths, metrics: dict):
    import mlflow
    import torch
    import torchvision
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from .model import build_classifier

    model = build_classifier(params, paths, metrics.get("candidate", "head"))
    example = input_example(paths, params.backbone.resolution)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(model.classes)))]))
    res = params.backbone.resolution
    info = mlflow.pytorch.log_model(
        model, name="model", signature=signature,
        serialization_format="pt2",  # torch.export graph: loading runs no pickled code
        input_example=example,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                          f"torchvision=={torchvision.__version__.split('+')[0]}",
                          f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"],
        metadata={"classes": model.classes, "modality": "image", "input": "float32 RGB (N,3,H,W) in [0,1], any H and W (resized "
                  f"inside to {res}x{res})", "resolution": res, "output": "class probabilities (N, n_classes)"},
    )
    mlflow.log_dict({"classes": model.classes}, "classes.json")
    return info, model.classes


def model_description(name: str, classes: list[str], params) -> str:
    """The registered model's description: what it classifies, its input, how to load it."""
    res = params.backbone.resolution
    return (f"Image classifier over {len(classes)} classes: {', '.join(classes)}.\n\n"
            f"Input: float32 RGB tensor (N, 3, H, W) with values in [0, 1], any H and W (resized inside to "
            f"{res}x{res}). Output: class probabilities (N, {len(classes)}) in the order of `classes.json`.\n\n"
            f"Load: `mlflow.pytorch.load_model('models:/{name}@champion')`, or predict on a folder of "
            f"images with `python -m flows.predict <folder>` (the champion by default). ")


def predict_prepared(model, metadata: dict, files: list[Path]) -> np.ndarray:
    """A loaded image model's predicted class names for prepared images (the registry scores the
    champion on the current test split)."""
    from .backbones import Preprocess, load_batch

    classes, preprocess = list(metadata["classes"]), Preprocess(int(metadata["resolution"]))
    predicted: list[str] = []
    device = _device_of(model)
    with torch.no_grad():
        for i in range(0, len(files), 64):
            proba = model(load_batch(files[i:i + 64], preprocess).to(device)).cpu()
            predicted += [classes[j] for j in proba.argmax(1).tolist()]
    return np.array(predicted)


def load_model(model_uri: str, dst: str, device: str = "auto"):
    """The logged classifier on ``device`` (runtime.device's values: auto = CUDA when available)."""
    import mlflow

    from ..runtime import pick_device

    # the logged module comes from torch.export: it has no .to()/.eval(); torch.load maps its tensors
    return mlflow.pytorch.load_model(model_uri, dst_path=dst, map_location=pick_device(device))


def _device_of(model) -> torch.device:
    """Where the model's weights are (the CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device


def list_inputs(source: Path) -> list[Path]:
    """Every input file: the non-hidden files under a folder (other extensions are kept, to be
    reported as skipped), or the paths of a CSV's ``path`` column (relative to the CSV)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(f for f in source.rglob("*") if f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(source).parts))
        if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in files):
            raise PipelineError(f"predict: no images ({', '.join(IMAGE_EXTENSIONS)}) under {source}")
        return files
    if source.suffix.lower() == ".csv" and source.is_file():
        try:
            frame = pd.read_csv(source, dtype=str, keep_default_na=False)
        except UnicodeDecodeError:
            raise PipelineError(f"predict: {source} is not UTF-8 text (UTF-16 from Excel?): save it as "
                                "\"CSV UTF-8\" and try again") from None
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
            raise PipelineError(f"predict: {source} is not a readable CSV ({str(exc).splitlines()[0]}): "
                                "give a header line `path` and one image path per line") from None
        if "path" not in frame.columns:
            raise PipelineError(f"predict: {source} has no `path` column (header found: {', '.join(frame.columns)})")
        if frame.empty:
            raise PipelineError(f"predict: {source} has a header but no rows: add one image path per line")
        return [p if p.is_absolute() else source.parent / p for p in map(Path, frame["path"].astype(str))]
    raise PipelineError(f"predict: {source} is neither a folder of images nor a .csv file with a `path` column")


def predict_files(loaded: LoadedModel, files: list[Path], batch_size: int = 64, top_k: int = 3,
                  min_image_size: int = 8) -> tuple[pd.DataFrame, list[dict]]:
    """Predictions for the readable files (in input order) and the list of skipped ones; the next
    batch is decoded in a background thread while the model runs on the current ones (two at a
    time on the CPU: runtime.lanes_map)."""
    if batch_size < 1 or top_k < 1:
        raise PipelineError(f"predict: --batch-size ({batch_size}) and --top-k ({top_k}) must be at least 1")
    preprocess = Preprocess(loaded.resolution)
    rows, skipped = [], []
    k = max(1, min(top_k, len(loaded.classes)))
    chunks = [files[start:start + batch_size] for start in range(0, len(files), batch_size)]
    device = _device_of(loaded.model)

    def scored(decoded: tuple) -> tuple:  # in a lane's thread (runtime.lanes_map)
        batch, kept, bad = decoded
        if not batch:
            return None, kept, bad
        with torch.inference_mode():
            x = batch_for_model(batch, preprocess).to(device)
            return loaded.model(x).float().cpu().numpy().astype(np.float64), kept, bad

    decoded = prefetch(chunks, lambda c: _decode(c, preprocess, min_image_size))
    with tqdm(total=len(files), desc="predict", unit="img") as bar:
        for chunk, (raw, kept, bad) in zip(chunks, lanes_map(scored, decoded, device)):
            skipped += bad
            bar.update(len(chunk))
            if raw is not None:
                rows += table(loaded, raw, [str(f) for f in kept], k)
    return pd.DataFrame(rows, columns=columns("path", k)), skipped


def _decode(files: list[Path], preprocess, min_image_size: int) -> tuple[list[torch.Tensor], list[Path], list[dict]]:
    """A batch's resized tensors, the files they came from, and the files skipped (reason, fix)."""
    batch, kept, skipped = [], [], []
    for f in files:
        if f.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append({"path": str(f), "reason": f"not an image file type ({f.suffix or 'no extension'})",
                            "fix": f"give images of type {', '.join(IMAGE_EXTENSIONS)}"})
            continue
        try:
            pixels = load_image(f, min_image_size, max_side=MAX_SIDE).pixels
        except BadItem as exc:  # the fix without ingest's params (they do not apply here)
            skipped.append({"path": str(f), "reason": exc.reason,
                            "fix": re.sub(r",? or (lower|set) data\.\S+.*$", "", exc.fix)})
            continue
        except OSError as exc:
            skipped.append({"path": str(f), "reason": str(exc), "fix": "check the file exists and is readable"})
            continue
        tensor = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)  # a writable copy
        # images larger than the model input are resized now (small batches in memory), smaller
        # ones by the model itself (batch_for_model)
        batch.append(tensor if preprocess.fits(tensor) else preprocess.resize(tensor.float().div_(255.0)))
        kept.append(f)
    return batch, kept, skipped


read_inputs, predict = list_inputs, predict_files  # the names pipeline_lib.modality.Modality calls
