"""Run every ``>>>`` example in kslim's docstrings as a doctest (one case per module).

The examples are documentation first: they must stay short, run on CPU in seconds and write only
under a temp dir. ``test_every_example_is_collected`` makes sure a module whose examples are not
found (an import error swallowed, a docstring the finder does not reach) fails instead of going
silently unexecuted.
"""
import doctest
import importlib
import io
import pkgutil
import re
from pathlib import Path

import pytest

import kslim

PACKAGE_DIR = Path(kslim.__file__).parent
OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
_PROMPT = re.compile(r"^\s*>>>", re.M)
#: a prompt holding code; doctest drops ``>>>`` lines that are blank or only a comment
_EXAMPLE = re.compile(r"^\s*>>>[ \t]*[^\s#]", re.M)


def _module_names():
    """Names of the kslim modules whose source contains a ``>>>`` prompt."""
    names = []
    if _PROMPT.search((PACKAGE_DIR / "__init__.py").read_text()):
        names.append("kslim")
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="kslim."):
        path = _source_path(info.name)
        if path is not None and _PROMPT.search(path.read_text()):
            names.append(info.name)
    return sorted(names)


def _source_path(name):
    rel = Path(*name.split(".")[1:])
    for candidate in (PACKAGE_DIR / rel / "__init__.py", (PACKAGE_DIR / rel).with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _doctests(name):
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    return [t for t in sorted(tests, key=lambda t: (t.lineno or 0, t.name)) if t.examples]


MODULES = _module_names()


def test_every_example_is_collected():
    """Examples run == ``>>>`` code lines in the sources minus the ``+SKIP`` examples.

    Fails when a module with examples is not collected, or a docstring is not reached by the finder
    (e.g. one on an object that is re-exported from elsewhere or built dynamically).
    """
    prompts = sum(len(_EXAMPLE.findall(path.read_text())) for path in PACKAGE_DIR.rglob("*.py"))
    examples = [ex for name in MODULES for test in _doctests(name) for ex in test.examples]
    skipped = [ex for ex in examples if ex.options.get(doctest.SKIP)]
    run = len(examples) - len(skipped)
    assert prompts > 300
    assert len(skipped) <= 10, f"{len(skipped)} skipped examples; skip only what cannot run here"
    assert run >= prompts - len(skipped), f"{run} examples run, {prompts} '>>>' lines, {len(skipped)} skipped"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray relative path in an example lands in a temp dir
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    out = io.StringIO()
    for test in _doctests(name):
        try:
            runner.run(test, out=out.write, clear_globs=True)
        finally:
            test.globs.clear()
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed in {name}:\n{out.getvalue()}"
