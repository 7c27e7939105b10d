import json

import pytest

from pipeline_lib import atomic
from pipeline_lib.errors import PipelineError


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PipelineError, match=f"cannot write to {blocker}"):
        atomic.write_text(blocker / "x.txt", "data")


def test_replace_dir_swaps_only_on_success(tmp_path):
    target = tmp_path / "out"
    with atomic.replace_dir(target) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(ValueError):
        with atomic.replace_dir(target) as staging:
            (staging / "b.txt").write_text("half")
            raise ValueError("stage failed")
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    with atomic.replace_dir(target) as staging:
        (staging / "c.txt").write_text("second")
    assert [p.name for p in target.iterdir()] == ["c.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or old folder left


def test_written_files_get_the_usual_mode(tmp_path):
    import os

    atomic.write_text(tmp_path / "r.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "r.txt").stat().st_mode & 0o777 == 0o666 & ~umask
