"""Crash-safe writing (vistra.atomic_io): a file is replaced completely or not at all, and no temp file is left."""
import json

import pytest

from vistra.atomic_io import atomic_path, remove_stale_temp_files, write_json_atomic, write_text_atomic
from vistra.engine.metrics_log import MetricsLog


def test_json_and_text_replace_the_file_and_leave_nothing_else(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "r.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and path.read_text().endswith("\n")
    write_text_atomic(path, "replaced")
    assert path.read_text() == "replaced" and [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_a_failed_write_keeps_the_previous_file_and_removes_its_temp_file(tmp_path):
    path = write_text_atomic(tmp_path / "r.json", "old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(path) as temp:
            temp.write_text("half of the new cont")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    with pytest.raises(TypeError):
        write_json_atomic(path, {"not json": object()})
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_temp_files_of_a_killed_write_are_found_and_removed(tmp_path):
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"partial")
    (tmp_path / ".other.pt.abc123.tmp").write_bytes(b"someone else's")
    assert [p.name for p in remove_stale_temp_files(tmp_path / "last.pt")] == [".last.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.abc123.tmp"]


def test_metrics_log_lines_are_appended_atomically(tmp_path):
    log = MetricsLog(tmp_path)
    log.rewrite([{"epoch": 1, "loss": 2.0}])
    log.append({"epoch": 2, "loss": 1.0})
    assert [json.loads(line)["epoch"] for line in log.jsonl_path.read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
