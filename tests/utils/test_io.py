import json

import pytest

from drivesim.utils.io import (
    DriveSimInputError,
    atomic_path,
    atomic_write_json,
    read_json,
)


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_no_overwrite_without_flag(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(FileExistsError, match="--overwrite"):
        atomic_write_json(target, {"a": 2}, overwrite=False)
    assert json.loads(target.read_text()) == {"a": 1}
    atomic_write_json(target, {"a": 3})
    assert read_json(target) == {"a": 3}


def test_read_json_names_file_line_and_column(tmp_path):
    bad = tmp_path / "clip.json"
    bad.write_text('{"fps": 10,\n "size": [64, }')
    with pytest.raises(DriveSimInputError, match=r"clip\.json.*line 2 column"):
        read_json(bad)
    with pytest.raises(DriveSimInputError, match="not found"):
        read_json(tmp_path / "missing.json")


def test_input_error_names_field_and_value():
    err = DriveSimInputError("must be in [0, 1]", path="a/clip.json", field="boxes[3][1]", value=1.7)
    assert "a/clip.json" in str(err) and "boxes[3][1]" in str(err) and "1.7" in str(err)
