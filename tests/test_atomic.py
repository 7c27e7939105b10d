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


def test_temporaries_of_a_killed_writer_are_swept_by_the_next_write(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    code = ("import sys, time; from pipeline_lib import atomic\n"
            "with atomic.replace_dir(sys.argv[1] + '/out') as d, atomic.atomic_path(sys.argv[1] + '/f.json') as t:\n"
            "    (d / 'half').write_text('x'); t.write_text('half'); print('ready', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(str(proc.pid) in name for name in left)  # what SIGKILL leaves behind
    time.sleep(0.1)
    atomic.write_json(tmp_path / "f.json", {"v": 2})
    with atomic.replace_dir(tmp_path / "out") as staging:
        (staging / "whole").write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["whole"]


def test_read_only_output_folder_is_a_clear_error_naming_the_path(tmpfs):
    read_only = tmpfs("ro", "ro,size=64k")
    with pytest.raises(PipelineError, match=f"cannot write to {read_only}: Read-only file system"):
        atomic.write_json(read_only / "metrics.json", {"v": 1})
    with pytest.raises(PipelineError, match=f"cannot write to {read_only}: Read-only file system"):
        with atomic.replace_dir(read_only / "prepared"):
            pass


def test_full_disk_is_a_clear_error_and_keeps_the_old_file(tmpfs):
    small = tmpfs("small", "size=64k")
    atomic.write_text(small / "report.json", "old")
    with pytest.raises(PipelineError, match=f"could not write {small / 'report.json'}: No space left on device"):
        atomic.write_bytes(small / "report.json", b"x" * 200_000)
    assert (small / "report.json").read_text() == "old"
    assert [p.name for p in small.iterdir()] == ["report.json"]
