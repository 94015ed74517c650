"""Atomic writes and provenance."""

import os

import pytest

from rsr_tf import outputs


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "metrics.json"
  outputs.write_json_atomic(str(path), {"accuracy": 0.5})
  with pytest.raises(RuntimeError):
    with outputs.atomic_path(str(path)) as tmp:
      with open(tmp, "w") as f:
        f.write("half a fi")
      raise RuntimeError("killed mid-write")
  assert path.read_text().strip().endswith("}")
  assert os.listdir(tmp_path) == ["metrics.json"]


def test_sha256_of_a_folder_changes_with_any_file(tmp_path):
  (tmp_path / "a").write_text("1")
  before = outputs.sha256_of(str(tmp_path))
  (tmp_path / "a").write_text("2")
  assert outputs.sha256_of(str(tmp_path)) != before


def test_unwritable_output_dir_is_one_line():
  with pytest.raises(OSError, match="not writable"):
    outputs.check_writable("/proc/rsr-cannot-write")


def test_provenance_names_command_commit_and_date():
  record = outputs.provenance(["scripts/train.py", "--epochs=1"])
  assert record["command"] == "python scripts/train.py --epochs=1"
  assert record["git_commit"] and record["date"]
