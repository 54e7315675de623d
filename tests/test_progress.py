"""kslim._progress (issue 17.1): plain lines without colour codes off a terminal, rich bars on one, estimates."""

import io

import keras
import numpy as np

from kslim import _progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_plain_progress_off_a_terminal_has_no_control_codes():
    out = io.StringIO()
    with _progress.progress(3, "sensitivity", unit="evaluation", stream=out) as bar:
        for i in range(3):
            bar.advance(info=f"conv{i} at 0.5: relative accuracy loss 0.01{i}")
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text and "\b" not in text
    lines = text.splitlines()
    assert lines[0] == "sensitivity: 3 evaluations"
    assert lines[-1].startswith("sensitivity: 3/3 evaluations (100 %)") and "relative accuracy loss 0.012" in lines[-1]
    assert len(lines) <= 3  # a short loop: no line per item


def test_rich_bar_on_a_terminal_and_disabled_bar():
    tty = _Tty()
    with _progress.progress(2, "latency", unit="measurement", stream=tty) as bar:
        bar.advance()
        bar.advance(info="round 2/2")
    assert "2/2" in tty.getvalue() and "round 2/2" in tty.getvalue()
    quiet = io.StringIO()
    with _progress.progress(2, "x", stream=quiet, enabled=False) as bar:
        bar.advance()
    assert quiet.getvalue() == ""


def test_about_and_stage_header():
    assert _progress.about(3) == "a few seconds" and _progress.about(125) == "about 2 min"
    assert _progress.stage_header(2, 5, "distill", "fine-tuning x") == "[2/5] distill: fine-tuning x"


def test_estimate_changes_nothing_in_the_model():
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
                          keras.layers.Dropout(0.5), keras.layers.Flatten(), keras.layers.Dense(2)])
    before = [w.copy() for w in m.get_weights()]
    est = _progress.estimate_fit_seconds(m, np.ones((16, 8, 8, 1), "float32"), steps_per_epoch=10, epochs=2)
    assert est > 0
    assert all(np.array_equal(a, b) for a, b in zip(before, m.get_weights()))
    assert _progress.estimate_fit_seconds(m, np.ones((2, 3), "float32"), 1, 1) is None  # wrong shape: no estimate
