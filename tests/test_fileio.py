"""megamix.fileio: JSON-lines reading with file:line errors."""

import pytest

from megamix.fileio import read_jsonl


def test_read_jsonl_skips_blank_and_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "train", "step": 1}\n\n{"event": "eval", "step": 1}\n{"event": "tr')
    assert read_jsonl(path) == [{"event": "train", "step": 1}, {"event": "eval", "step": 1}]


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        read_jsonl(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl: not found"):
        read_jsonl(tmp_path / "missing.jsonl")
