import pytest

from pipeline_lib.config import Params, load_params, parse_params
from pipeline_lib.errors import PipelineError
from pipeline_lib.paths import Paths


def test_defaults_match_params_yaml(project_root):
    assert load_params(project_root) == Params()


def test_bad_literal_names_key_and_allowed_values():
    with pytest.raises(PipelineError) as err:
        parse_params({"train_head": {"kinds": ["linear", "transformer"]}})
    msg = str(err.value)
    assert "train_head.kinds.1: got 'transformer'; allowed values: 'linear' or 'mlp'" in msg


def test_unknown_key_is_reported():
    with pytest.raises(PipelineError, match=r"data\.shots: unknown key"):
        parse_params({"data": {"shots": 3}})


def test_range_and_cross_field_checks():
    with pytest.raises(PipelineError, match=r"backbone\.resolution"):
        parse_params({"backbone": {"resolution": 4}})
    with pytest.raises(PipelineError, match="val_fraction \\+ data.test_fraction"):
        parse_params({"data": {"val_fraction": 0.6, "test_fraction": 0.5}})


def test_flat_keys_are_dotted():
    flat = Params().flat()
    assert flat["train_head.lr"] == Params().train_head.lr and "data.source" in flat


def test_missing_params_file(tmp_path):
    with pytest.raises(PipelineError, match="params.yaml not found"):
        load_params(tmp_path)


def test_paths_are_derived_from_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paths = Paths.for_root(tmp_path)
    assert paths.manifest == tmp_path / "data/prepared/manifest.parquet"
    assert paths.mlflow_uri == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert paths.mlflow_uri == "http://127.0.0.1:5000"


def test_params_reference_is_generated_from_the_schema_and_covers_params_yaml(project_root):
    """docs/params.md is what the schema generates (every field has a description), and every key
    of params.yaml is a schema field with the same default."""
    import yaml

    from pipeline_lib import params_doc

    assert params_doc.DOC.read_text() == params_doc.markdown(), "run `python -m pipeline_lib.params_doc`"
    raw = yaml.safe_load((project_root / "params.yaml").read_text())
    assert parse_params(raw).model_dump() == Params().model_dump(), "params.yaml and the schema defaults differ"


def test_empty_params_file_and_a_key_given_twice_are_refused(tmp_path):
    (tmp_path / "params.yaml").write_text("# nothing\n")
    with pytest.raises(PipelineError, match="is empty: it would train the built-in sample"):
        load_params(tmp_path)
    (tmp_path / "params.yaml").write_text("data:\n  source: folder\n  path: a\n  source: manifest\n")
    with pytest.raises(PipelineError, match=r"key 'source' is given twice \(line 4\)"):
        load_params(tmp_path)


def test_switched_off_settings_are_left_out_of_active_params():
    params = parse_params({"synthetic": {"generator": "ddpm"}, "finetune": {"enabled": False}})
    active = params.active()
    assert "synthetic.ddpm.train_steps" in active and "synthetic.per_class" in active
    assert not any(k.startswith("synthetic.stable_diffusion") for k in active)
    assert active["finetune.enabled"] is False and not any(k.startswith("finetune.") and k != "finetune.enabled"
                                                           for k in active)
    assert "runtime.dask_workers" not in active and "train_head.hidden_dim" not in active
    mlp = parse_params({"train_head": {"kinds": ["linear", "mlp"]}, "runtime": {"executor": "dask"}}).active()
    assert "train_head.hidden_dim" in mlp and "runtime.dask_workers" in mlp
    assert "synthetic.per_class" not in mlp and mlp["synthetic.generator"] == "none"
