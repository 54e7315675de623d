"""The suite's own settings: the default run is parallel, a run selecting the slow (timing) tests is serial."""
import configparser
from pathlib import Path

from conftest import selects_slow


def test_default_run_uses_two_xdist_workers_and_excludes_slow():
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    addopts = cfg["tool:pytest"]["addopts"]
    assert '-m "not slow"' in addopts and "-n auto" in addopts and "--maxprocesses 2" in addopts
    assert "pytest-xdist" in cfg["options.extras_require"]["dev"]


def test_only_an_expression_that_selects_slow_tests_counts_as_a_slow_run():
    assert [selects_slow(e) for e in ("slow", "slow and not zoo", "(slow)", "slow or not slow")] == [True] * 4
    assert [selects_slow(e) for e in ("not slow", "not slow and zoo", "", None)] == [False] * 4

