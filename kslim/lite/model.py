"""``LiteModel``: a TFLite flatbuffer held in memory, run through ai-edge-litert."""

from collections import Counter
from pathlib import Path

import numpy as np

from kslim._io import atomic_write_bytes
from kslim.errors import KslimFileError, KslimValueError

TFLITE_MAGIC = b"TFL3"


class LiteModel:
    """A converted ``.tflite`` model.

    Attributes:
        content: the flatbuffer bytes.
        parity: dict filled by :func:`kslim.lite.convert` with the check against the Keras model.

    Example:
        >>> import keras, numpy as np
        >>> from kslim.lite import convert
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> lm = convert(m)
        >>> lm.predict(np.ones((3, 4), "float32")).shape
        (3, 2)
    """

    def __init__(self, content, source=None, parity=None):
        if not isinstance(content, (bytes, bytearray)):
            raise KslimValueError(f"LiteModel content must be bytes, got {type(content).__name__}.")
        content = bytes(content)
        if len(content) < 8 or content[4:8] != TFLITE_MAGIC:
            raise KslimFileError(
                f"{source or 'content'} is not a TFLite flatbuffer (no 'TFL3' identifier)."
            )
        self.content = content
        self.source = source
        self.parity = parity or {}
        self._interpreters = {}

    # ------------------------------------------------------------------ io
    @classmethod
    def load(cls, path):
        """Load a ``.tflite`` file; raises :class:`KslimFileError` if missing, corrupt or not TFLite."""
        path = Path(path)
        if not path.is_file():
            raise KslimFileError(f"TFLite file {path} does not exist.")
        try:
            content = path.read_bytes()
        except OSError as e:
            raise KslimFileError(f"cannot read TFLite file {path}: {e}") from e
        if len(content) < 8 or content[4:8] != TFLITE_MAGIC:
            raise KslimFileError(
                f"{path} is not a TFLite model (no 'TFL3' flatbuffer identifier): pass a .tflite file written "
                "by `kslim convert` / LiteModel.save().")
        lm = cls(content, source=str(path))
        try:
            lm.interpreter()
        except Exception as e:  # the runtime's verifier rejects a corrupt flatbuffer
            raise KslimFileError(
                f"{path} is a corrupt or truncated TFLite model ({_first_line(e.__cause__ or e)}): re-export it with "
                "`kslim convert` / LiteModel.save().") from e
        return lm

    def save(self, path):
        """Write the flatbuffer to ``path`` atomically; returns the path."""
        return atomic_write_bytes(path, self.content)

    @property
    def size(self):
        """Size of the flatbuffer in bytes."""
        return len(self.content)

    # ------------------------------------------------------------------ running
    def interpreter(self, num_threads=1, use_xnnpack=True):
        """An allocated ai-edge-litert ``Interpreter`` (cached per settings)."""
        key = (num_threads, use_xnnpack)
        if key not in self._interpreters:
            from kslim.lite.runner import make_interpreter

            try:
                interp = make_interpreter(self.content, num_threads, use_xnnpack)
            except (ValueError, RuntimeError) as e:
                raise KslimFileError(
                    f"{self.source or 'model'} cannot be loaded by LiteRT ({_first_line(e)}): the flatbuffer is "
                    "corrupt or uses ops this runtime lacks.") from e
            self._interpreters[key] = interp
        return self._interpreters[key]

    @property
    def input_details(self):
        return self.interpreter().get_input_details()

    @property
    def output_details(self):
        return self.interpreter().get_output_details()

    def predict(self, x, batch_size=None, num_threads=1):
        """Run the model on ``x`` (float array, batch first); quantizes/dequantizes int8 I/O itself.

        The interpreter is resized to the batch (``batch_size`` samples at a time, default all).
        Returns a float32 numpy array of the (first) output.
        """
        x = np.asarray(x)
        if x.ndim == 0:
            raise KslimValueError("predict() needs a batch of inputs, got a scalar.")
        interp = self.interpreter(num_threads=num_threads)
        inp = interp.get_input_details()[0]
        expected = tuple(inp["shape"][1:])
        if tuple(x.shape[1:]) != expected:
            raise KslimValueError(
                f"input shape {tuple(x.shape[1:])} does not match the model's {expected} (batch excluded)."
            )
        n = len(x)
        bs = n if batch_size is None else int(batch_size)
        outs = []
        for start in range(0, n, bs):
            chunk = x[start:start + bs]
            if interp.get_input_details()[0]["shape"][0] != len(chunk):
                interp.resize_tensor_input(inp["index"], [len(chunk), *expected])
                interp.allocate_tensors()
            inp = interp.get_input_details()[0]
            interp.set_tensor(inp["index"], _quantize(chunk, inp))
            interp.invoke()
            out = interp.get_output_details()[0]
            outs.append(_dequantize(interp.get_tensor(out["index"]), out))
        return np.concatenate(outs, axis=0)

    def evaluate(self, data, batch_size=256):
        """Top-1 accuracy on ``data``: a ``tf.data`` dataset of ``(x, y)`` batches or a tuple ``(x, y)``."""
        correct = total = 0
        for xb, yb in _iterate(data, batch_size):
            pred = self.predict(xb, batch_size=batch_size)
            correct += int(np.sum(np.argmax(pred, axis=-1) == np.asarray(yb).reshape(-1)))
            total += len(yb)
        if total == 0:
            raise KslimValueError("evaluate() got no samples.")
        return correct / total

    # ------------------------------------------------------------------ inspection
    def ops(self):
        """Histogram of the builtin operators in the graph, e.g. ``{'CONV_2D': 7, 'FULLY_CONNECTED': 1}``."""
        from kslim.lite.runner import describe_ops

        return dict(Counter(d["op"] for d in describe_ops(self.content)))

    def tensors(self):
        """Details of every tensor (name, dtype, shape, quantization parameters)."""
        return self.interpreter().get_tensor_details()

    def __repr__(self):
        return f"LiteModel(size={self.size}, source={self.source!r})"


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _quantize(x, detail):
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.integer):
        scale, zero = detail["quantization"]
        if scale:
            q = np.round(np.asarray(x, np.float32) / scale + zero)
            info = np.iinfo(dtype)
            return np.clip(q, info.min, info.max).astype(dtype)
    return np.asarray(x, dtype=dtype)


def _dequantize(y, detail):
    if np.issubdtype(y.dtype, np.integer):
        scale, zero = detail["quantization"]
        if scale:
            return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def _iterate(data, batch_size):
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        from kslim.datasets.pipeline import preprocess

        x = preprocess(x) if np.asarray(x).dtype == np.uint8 else np.asarray(x, np.float32)
        for s in range(0, len(x), batch_size):
            yield x[s:s + batch_size], np.asarray(y[s:s + batch_size])
        return
    for xb, yb in data:
        yield np.asarray(xb), np.asarray(yb)
