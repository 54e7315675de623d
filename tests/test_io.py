"""kslim._io: atomic writes and the one JSON reader every loader shares."""

import pytest

from kslim._io import atomic_write_json, read_json
from kslim.errors import KslimFileError


def test_read_json_round_trip(tmp_path):
    path = atomic_write_json(tmp_path / "a.json", {"a": [1, 2]})
    assert read_json(path) == {"a": [1, 2]}


def test_read_json_missing_file_names_it(tmp_path):
    with pytest.raises(KslimFileError, match=r"Sensitivity file '.*nope\.json' does not exist"):
        read_json(tmp_path / "nope.json", "Sensitivity file")


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00binary"])
def test_read_json_malformed_file_names_it(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(KslimFileError, match=r"search history '.*bad\.json' is not valid JSON"):
        read_json(path, "search history")


def test_loaders_use_it(tmp_path):
    """The pruning-state, sensitivity and search-history loaders report a bad file the same way."""
    from kslim.nas.history import load_history
    from kslim.prune.gradual import strip_pruning
    from kslim.prune.sensitivity import load_sensitivity

    bad = tmp_path / "bad.json"
    bad.write_text("[1,")
    for load in (load_sensitivity, load_history):
        with pytest.raises(KslimFileError, match="bad.json' is not valid JSON"):
            load(bad)
    with pytest.raises(KslimFileError, match="Pruning state file '.*bad.json' is not valid JSON"):
        strip_pruning(None, bad)  # the file is read before the model is looked at
    with pytest.raises(KslimFileError, match="Sensitivity file '.*missing.json' does not exist"):
        load_sensitivity(tmp_path / "missing.json")


def test_atomic_path_never_changes_the_umask(tmp_path, monkeypatch):
    """The umask is read once at import: setting it (even briefly) races with other threads' files."""
    import os

    from kslim import _io

    def no_umask(*_):
        raise AssertionError("atomic_path changed the process umask")

    monkeypatch.setattr(os, "umask", no_umask)
    path = _io.atomic_write_text(tmp_path / "a.txt", "x")
    assert path.stat().st_mode & 0o777 == 0o666 & ~_io._UMASK
