"""Keep the TFLite converter's C++/absl chatter (written straight to fds 1 and 2) out of the user's way."""

import os
import sys
import tempfile
from contextlib import contextmanager


@contextmanager
def captured_output(verbose=False):
    """Redirect OS-level stdout/stderr to a temp file; yields a callable returning what was captured.

    With ``verbose=True`` nothing is redirected. The captured text is what a caller attaches to an
    error message when the wrapped call fails.
    """
    if verbose:
        yield lambda: ""
        return
    _init_loggers()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        old_streams = sys.stdout, sys.stderr
        # Python-level prints (Keras' "Saved artifact at ...", "Captures: ...") go to the same log even
        # when sys.stdout is not fd 1 (IDEs, notebooks, pytest). sys.stderr is left alone: logging
        # handlers created meanwhile (absl, TF) bind it, and would keep a closed stream afterwards.
        pylog = open(os.dup(log.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
        sys.stdout = pylog
        try:
            def read():
                sys.stdout.flush()
                sys.stderr.flush()
                log.seek(0)
                return log.read().decode("utf-8", "replace")

            yield read
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except Exception:
                pass
            sys.stdout, sys.stderr = old_streams
            pylog.close()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _init_loggers():
    """Create TF's / absl's logging handlers now, bound to the real stderr.

    A handler created while ``sys.stderr`` is redirected would keep the temporary stream after it is
    closed, and every later log call would fail with "I/O operation on closed file".
    """
    try:
        import tensorflow as tf

        tf.get_logger()
        import absl.logging  # noqa: F401
    except Exception:  # logging setup is best effort; conversion works without it
        pass
