"""Ctrl-C that stops training cleanly.

Why a plain ``KeyboardInterrupt`` is not enough: Python raises it at whatever bytecode runs when the
signal arrives. During ``model.fit`` that is usually inside TensorFlow's own Python and pybind11
code (tracing the train function, the ``tf.data`` iterator, the eager executor), which was not
written to be interrupted there: the exception is either lost (the first Ctrl-C is "swallowed" and
training continues) or surfaces as an unrelated ``SystemError: ... bad argument to internal
function`` from TensorFlow's C++ bindings.

So around ``fit`` (:func:`deferred`) the first SIGINT only sets a flag; the Keras callback
:class:`StopOnInterrupt` sees it at the end of the current batch and sets ``model.stop_training``;
``fit`` returns and :func:`check` raises ``KeyboardInterrupt`` from kslim's own code, before the
unfinished epoch is checkpointed. A second Ctrl-C raises at once. Outside :func:`deferred` Ctrl-C
behaves as usual.

:func:`requested` tells the command line that an error was the consequence of a Ctrl-C (it exits
with 130 then, whatever the exception became).
"""

import signal
import threading
from contextlib import contextmanager

_state = {"requested": False, "depth": 0}

# What the command line prints after "interrupted" (set by commands that write a resumable run),
# e.g. "the run directory runs/x is resumable: kslim compress --resume runs/x".
resume_hint = None


def requested():
    """Whether Ctrl-C was pressed (since the last :func:`reset`)."""
    return _state["requested"]


def reset():
    _state["requested"] = False


def check():
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed: call it at safe points of long loops."""
    if _state["requested"]:
        raise KeyboardInterrupt


def _handler(signum, frame):
    if _state["requested"] or _state["depth"] == 0:
        _state["requested"] = True
        raise KeyboardInterrupt
    _state["requested"] = True
    import sys

    print("\nCtrl-C: stopping after the current training step (press Ctrl-C again to abort at once)",
          file=sys.stderr, flush=True)


@contextmanager
def deferred():
    """Within this block the first Ctrl-C sets a flag instead of raising (see the module docstring).

    Only the main thread can own signal handlers: elsewhere this does nothing. The previous
    handler is restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not _handler and previous is not signal.default_int_handler:
        # someone else handles SIGINT on purpose (a notebook kernel, a server): leave it alone
        yield
        return
    if _state["depth"] == 0:
        reset()  # a Ctrl-C handled earlier (caught by the caller) does not stop this block
    signal.signal(signal.SIGINT, _handler)
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0:
            signal.signal(signal.SIGINT, previous)


def stop_callback():
    """A ``keras.callbacks.Callback`` that ends ``fit`` at the next batch once Ctrl-C was pressed."""
    import keras

    class StopOnInterrupt(keras.callbacks.Callback):
        def _maybe_stop(self, *args, **kwargs):
            if _state["requested"]:
                self.model.stop_training = True

        on_train_batch_end = on_test_batch_end = on_epoch_end = _maybe_stop

    return StopOnInterrupt()


def fit(model, *args, callbacks=None, **kwargs):
    """``model.fit(...)`` that a first Ctrl-C stops at the next batch, then raises ``KeyboardInterrupt``."""
    cbs = [stop_callback(), *(callbacks or [])]
    with deferred():
        history = model.fit(*args, callbacks=cbs, **kwargs)
    check()
    return history
