"""Every file the stages read or write, derived from the project root in this one place, grouped by
the stage that writes it; ``OUTPUTS`` names each stage's outputs, which are exactly its dvc.yaml
``outs``, ``metrics`` and ``plots`` (tests/test_structure.py checks it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def project_root(root: str | Path | None = None) -> Path:
    """The project root: the argument, $PIPELINE_ROOT, or the working directory (DVC runs stages there)."""
    return Path(root or os.environ.get("PIPELINE_ROOT") or Path.cwd()).resolve()


@dataclass(frozen=True)
class Paths:
    """Every file the stages read or write, derived from the project root in this one place."""

    root: Path

    @classmethod
    def for_root(cls, root: str | Path | None = None) -> "Paths":
        return cls(project_root(root))

    def resolve(self, path: str | Path) -> Path:
        path = Path(path)
        return path if path.is_absolute() else self.root / path

    # ingest
    @property
    def prepared_dir(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def images_dir(self) -> Path:
        return self.prepared_dir / "images"

    @property
    def texts_dir(self) -> Path:
        return self.prepared_dir / "texts"

    @property
    def manifest(self) -> Path:
        return self.prepared_dir / "manifest.parquet"

    @property
    def ingest_scratch(self) -> Path:
        """Where Dask workers leave the files they decoded for ingest (runtime.executor: dask); the
        stage moves the items out and the flow removes the rest."""
        return self.root / ".cache" / "ingest-decoded"

    @property
    def ingest_report(self) -> Path:
        return self.stage_report("ingest")

    # synthesize
    @property
    def synthetic_dir(self) -> Path:
        return self.root / "data" / "synthetic"

    @property
    def synthetic_manifest(self) -> Path:
        return self.synthetic_dir / "manifest.parquet"

    @property
    def ddpm_dir(self) -> Path:
        return self.models_dir / "ddpm"

    @property
    def ddpm_cache(self) -> Path:
        """Trained generators by data version and params, reused when only sampling params change."""
        return self.root / ".cache" / "ddpm"

    @property
    def synthesize_report(self) -> Path:
        return self.stage_report("synthesize")

    @property
    def synthetic_preview(self) -> Path:
        return self.reports_dir / "synthetic_preview.png"

    # augment
    @property
    def augmented_dir(self) -> Path:
        return self.root / "data" / "augmented"

    @property
    def augmented_manifest(self) -> Path:
        return self.augmented_dir / "manifest.parquet"

    @property
    def augment_report(self) -> Path:
        return self.stage_report("augment")

    @property
    def augment_preview(self) -> Path:
        return self.reports_dir / "augment_preview.png"

    # featurize
    @property
    def features_dir(self) -> Path:
        return self.root / "data" / "features"

    def features(self, split: str) -> Path:
        return self.features_dir / f"{split}.npz"

    @property
    def featurize_report(self) -> Path:
        return self.stage_report("featurize")

    # train_head
    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def head(self) -> Path:
        return self.models_dir / "head.pt"

    @property
    def head_meta(self) -> Path:
        return self.models_dir / "head.json"

    @property
    def head_oof(self) -> Path:
        """The chosen head's out-of-fold (or val) probabilities of the labelled images."""
        return self.models_dir / "head_oof.npz"

    @property
    def selection_report(self) -> Path:
        return self.reports_dir / "selection.json"

    @property
    def finetune_oof(self) -> Path:
        return self.finetune_dir / "oof.npz"

    @property
    def finetuned_encoder(self) -> Path:
        """text: the contrastively tuned sentence encoder (a sentence-transformers folder)"""
        return self.finetune_dir / "encoder"

    @property
    def finetuned_head(self) -> Path:
        """text: the head on the tuned encoder's vectors"""
        return self.finetune_dir / "head.pt"

    @property
    def train_head_report(self) -> Path:
        return self.stage_report("train_head")

    @property
    def selection_table(self) -> Path:
        """One row per candidate of the CV (or val) selection: what `dvc plots` draws."""
        return self.reports_dir / "plots" / "selection.csv"

    # finetune
    @property
    def finetune_dir(self) -> Path:
        return self.models_dir / "finetune"

    @property
    def finetuned_model(self) -> Path:
        return self.finetune_dir / "model.pt"

    @property
    def finetune_meta(self) -> Path:
        return self.finetune_dir / "meta.json"

    @property
    def finetune_report(self) -> Path:
        return self.stage_report("finetune")

    @property
    def finetune_history(self) -> Path:
        return self.reports_dir / "plots" / "finetune_history.csv"

    def clear_finetuned(self) -> None:
        """Remove a fine-tuned model of either kind (a run that keeps none leaves none behind)."""
        import shutil

        shutil.rmtree(self.finetuned_encoder, ignore_errors=True)
        for f in (self.finetuned_head, self.finetune_oof, self.finetuned_model):
            f.unlink(missing_ok=True)

    def finetune_checkpoint(self, key: str) -> Path:
        """Per-epoch checkpoint, outside DVC's outputs (DVC deletes outputs before a stage runs)."""
        return self.root / ".cache" / "checkpoints" / f"finetune-{key}.pt"

    # evaluate
    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def stage_report(self, stage: str) -> Path:
        """The JSON summary a stage writes: reports/<stage>.json (evaluate's is metrics.json)."""
        return self.metrics if stage == "evaluate" else self.reports_dir / f"{stage}.json"

    @property
    def advise_report(self) -> Path:
        return self.stage_report("advise")

    @property
    def advice_md(self) -> Path:
        return self.reports_dir / "advice.md"

    @property
    def advice_curve_png(self) -> Path:
        return self.reports_dir / "advice_learning_curve.png"

    @property
    def label_next_csv(self) -> Path:
        """What to label next: a CSV for a labelling tool"""
        return self.reports_dir / "label_next.csv"

    @property
    def suspect_labels_csv(self) -> Path:
        return self.reports_dir / "suspect_labels.csv"

    @property
    def mlflow_run(self) -> Path:
        """Which MLflow run logged the last execution, and its URL (written by tracking)."""
        return self.reports_dir / "mlflow_run.json"

    @property
    def metrics(self) -> Path:
        return self.reports_dir / "metrics.json"

    @property
    def predictions(self) -> Path:
        return self.reports_dir / "predictions.csv"

    @property
    def confusion_png(self) -> Path:
        return self.reports_dir / "confusion_matrix.png"

    @property
    def reliability_png(self) -> Path:
        return self.reports_dir / "reliability.png"

    @property
    def per_class_csv(self) -> Path:
        return self.reports_dir / "per_class.csv"

    # retrain
    @property
    def retrain_lock(self) -> Path:
        return self.root / ".cache" / "retrain.lock"

    @property
    def retrain_history(self) -> Path:
        return self.reports_dir / "retrain_history.jsonl"

    # the labelling loop (python -m flows.label)
    @property
    def label_lock(self) -> Path:
        return self.root / ".cache" / "label.lock"

    # tracking and state
    @property
    def mlflow_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"

    def cache_dir(self, params) -> Path:
        """featurize.cache_dir of ``params`` (pipeline_lib.config.Params), under the root when relative."""
        return self.resolve(params.featurize.cache_dir)

    def outputs(self, stage: str) -> list[Path]:
        """The files and folders ``stage`` writes (OUTPUTS)."""
        return [getattr(self, name) for name in OUTPUTS[stage]]


# What each stage writes: dvc.yaml's outs, metrics and plots of the stage, exactly (Paths attributes).
OUTPUTS: dict[str, tuple[str, ...]] = {
    "ingest": ("prepared_dir", "ingest_report"),
    "synthesize": ("synthetic_dir", "ddpm_dir", "synthesize_report", "synthetic_preview"),
    "augment": ("augmented_dir", "augment_report", "augment_preview"),
    "featurize": ("features_dir", "featurize_report"),
    "train_head": ("head", "head_meta", "head_oof", "selection_report", "train_head_report", "selection_table"),
    "finetune": ("finetune_dir", "finetune_report", "finetune_history"),
    "evaluate": ("mlflow_run", "metrics", "predictions", "confusion_png", "reliability_png", "per_class_csv"),
    "advise": ("advice_md", "advise_report", "advice_curve_png", "label_next_csv", "suspect_labels_csv"),
}
