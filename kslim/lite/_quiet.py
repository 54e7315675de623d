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
    with tempfile.TemporaryFile(mode="w+b") as log:
        old_streams = sys.stdout, sys.stderr
        saved, pylog = [], None
        try:
            saved.append(os.dup(1))
            saved.append(os.dup(2))
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            # Python-level prints (Keras' "Saved artifact at ...", "Captures: ...") go to the same log even
            # when sys.stdout is not fd 1 (IDEs, notebooks, pytest). sys.stderr is left alone: logging
            # handlers created meanwhile (absl, TF) bind it, and would keep a closed stream afterwards.
            log_fd = os.dup(log.fileno())
            try:
                pylog = open(log_fd, "w", buffering=1, encoding="utf-8", errors="replace")
            except BaseException:
                os.close(log_fd)
                raise
            sys.stdout = pylog

            def read():
                sys.stdout.flush()
                sys.stderr.flush()
                log.seek(0)
                return log.read().decode("utf-8", "replace")

            yield read
        finally:
            # undo whatever part of the redirection was done, even if setting it up failed midway
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except Exception:
                pass
            sys.stdout, sys.stderr = old_streams
            if pylog is not None:
                pylog.close()
            try:
                for fd, saved_fd in zip((1, 2), saved):
                    os.dup2(saved_fd, fd)
            finally:
                for saved_fd in saved:
                    os.close(saved_fd)


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
