"""``LiteModel``: a TFLite flatbuffer held in memory, run through ai-edge-litert.

Inputs and outputs are matched to the Keras model's by the names of the TFLite signature
(``serving_default``), not by position: the converter orders a multi-input graph's tensors neither
as the Keras model nor alphabetically. When a model has several inputs or outputs,
:func:`kslim.lite.convert` records their Keras order in the flatbuffer's metadata (entry
``kslim_io``), so a saved and reloaded ``.tflite`` takes a list of inputs in the same order (a
multi-input ``.tflite`` converted elsewhere takes them in the alphabetical order of their names).

Which ops compute in float (:func:`float_ops`, ``LiteModel.float_ops``) is decided here, once, for
everything in kslim that calls a model "int8".
"""

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from kslim._io import atomic_write_bytes
from kslim.errors import KslimFileError, KslimValueError
from kslim.lite.flatbuffer import add_metadata, read_metadata

TFLITE_MAGIC = b"TFL3"
IO_METADATA = "kslim_io"
# ops that convert between the float and the integer domains: never counted as float compute
BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")
FLOAT_TYPES = ("float32", "float16", "float64", "bfloat16")
CONTROL_FLOW_OPS = ("WHILE", "IF", "CALL_ONCE")


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
        >>> lm.precision
        'float32'
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
        self._ops = None
        self._io = None
        self._resizable = True  # False once the batch size turned out fixed (a WHILE loop over an RNN)

    @classmethod
    def with_io_order(cls, content, input_names=None, output_names=None, source=None):
        """A LiteModel of ``content`` whose flatbuffer records the Keras order of its input and output
        names (only when there are several; otherwise ``content`` is used as is)."""
        record = {}
        if input_names and len(input_names) > 1:
            record["inputs"] = list(input_names)
        if output_names and len(output_names) > 1:
            record["outputs"] = list(output_names)
        if record:
            content = add_metadata(content, IO_METADATA, json.dumps(record).encode())
        return cls(content, source=source)

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
        """The interpreter's input details, in the Keras model's input order (see :attr:`input_names`)."""
        return [d for _, d in self._signature()[0]]

    @property
    def output_details(self):
        """The interpreter's output details, in the Keras model's output order."""
        return [d for _, d in self._signature()[1]]

    @property
    def input_names(self):
        """Input names in the Keras model's order (the keys :meth:`predict` takes in a dict)."""
        return [n for n, _ in self._signature()[0]]

    @property
    def output_names(self):
        return [n for n, _ in self._signature()[1]]

    @property
    def inputs(self):
        """:class:`kslim.lite.inputs.Inputs` of this model, as :meth:`predict` takes them: shapes without
        the batch axis, and the dtype to pass (float32 for int8-quantized inputs, quantized here)."""
        from kslim.lite.inputs import Inputs, InputSpec

        specs = []
        for name, d in self._signature()[0]:
            dtype = np.dtype(d["dtype"])
            if dtype.kind in "iu" and _scale(d):
                dtype = np.dtype(np.float32)
            shape = tuple(None if int(s) < 0 else int(s) for s in d["shape_signature"][1:])
            specs.append(InputSpec(name, shape, dtype.name))
        return Inputs(specs, "single" if len(specs) == 1 else "list", owner=f"TFLite model {self.source or ''}".strip())

    def _signature(self, interp=None):
        """([(name, input detail)], [(name, output detail)]) in Keras order; details as ``interp``
        (default: the 1-thread interpreter) reports them now."""
        interp = interp or self.interpreter()
        if self._io is None:
            sigs = interp.get_signature_list()
            order = self._io_order()
            if sigs:
                runner = interp.get_signature_runner("serving_default" if "serving_default" in sigs else next(iter(sigs)))
                ins = {n: d["index"] for n, d in runner.get_input_details().items()}
                outs = {n: d["index"] for n, d in runner.get_output_details().items()}
                in_names = order.get("inputs") if set(order.get("inputs", ())) == set(ins) else sorted(ins)
                out_names = order.get("outputs") if set(order.get("outputs", ())) == set(outs) else sorted(outs, key=_natural)
                self._io = ([(n, ins[n]) for n in in_names], [(n, outs[n]) for n in out_names])
            else:  # no signature (hand-built graphs): the subgraph's own order and tensor names
                self._io = ([(d["name"], d["index"]) for d in interp.get_input_details()],
                            [(d["name"], d["index"]) for d in interp.get_output_details()])
        live_in = {d["index"]: d for d in interp.get_input_details()}
        live_out = {d["index"]: d for d in interp.get_output_details()}
        return ([(n, live_in[i]) for n, i in self._io[0]], [(n, live_out[i]) for n, i in self._io[1]])

    def _io_order(self):
        raw = read_metadata(self.content, IO_METADATA)
        if raw is None:
            return {}
        try:
            return json.loads(raw.decode())
        except (UnicodeDecodeError, ValueError):
            return {}

    def predict(self, x, batch_size=None, num_threads=1):
        """Run the model on ``x``; returns a float32 numpy array of the (first) output.

        ``x``: a batch-first array (single-input models), a list of arrays in the Keras model's input
        order, or a dict keyed by input name (:attr:`input_names`). Float inputs of an int8-I/O model
        are quantized here and int8 outputs dequantized; integer and boolean inputs are fed with their
        own dtype. The interpreter is resized to the batch (``batch_size`` samples at a time, default
        all); a model exported with a fixed batch size (e.g. 1, for a variable-length RNN) runs in
        batches of that size.
        """
        return self._run(x, batch_size, num_threads)[0]

    def _run(self, x, batch_size=None, num_threads=1, what="predict()"):
        """All outputs (Keras order) for inputs ``x``, as float32 arrays."""
        if _is_scalar(x):
            raise KslimValueError(f"{what} needs a batch of inputs, got a scalar.")
        arrays = self.inputs.arrays(x, what)
        n = len(arrays[0])
        bs = n if batch_size is None else int(batch_size)
        fixed = max((int(d["shape_signature"][0]) for d in self.input_details if len(d["shape_signature"])),
                    default=-1)
        if fixed > 0 and bs != fixed:
            if self._resizable:
                try:
                    return self._invoke(arrays, bs, num_threads)
                except RuntimeError:
                    # a graph exported with a fixed batch (a WHILE loop over an RNN) cannot be resized
                    # to another batch size: run it in batches of its own size on a fresh interpreter
                    self._interpreters.pop((num_threads, True), None)
                    self._resizable = False
            bs = fixed
        return self._invoke(arrays, bs, num_threads)

    def _invoke(self, arrays, bs, num_threads):
        interp = self.interpreter(num_threads=num_threads)
        ins, outs = self._signature(interp)
        fixed = max((int(d["shape_signature"][0]) for _, d in ins if len(d["shape_signature"])), default=-1)
        results = [[] for _ in outs]
        for start in range(0, len(arrays[0]), max(bs, 1)):
            chunk = [a[start:start + bs] for a in arrays]
            rows = len(chunk[0])
            if bs == fixed and rows < fixed:  # pad the last chunk of a fixed-batch model
                chunk = [np.concatenate([c, np.repeat(c[-1:], fixed - rows, axis=0)]) for c in chunk]
            live = {d["index"]: d for d in interp.get_input_details()}
            resized = False
            for (_, d), c in zip(ins, chunk):
                if tuple(live[d["index"]]["shape"]) != tuple(c.shape):
                    interp.resize_tensor_input(d["index"], list(c.shape))
                    resized = True
            if resized:
                interp.allocate_tensors()
            for (_, d), c in zip(ins, chunk):
                interp.set_tensor(d["index"], quantize_io(c, d))
            interp.invoke()
            for r, (_, d) in zip(results, outs):
                r.append(dequantize_io(interp.get_tensor(d["index"]), d)[:rows])
        return [np.concatenate(r, axis=0) for r in results]

    def evaluate(self, data, batch_size=256):
        """Top-1 accuracy on ``data``: a ``tf.data`` dataset of ``(inputs, labels)`` batches or a tuple
        ``(inputs, labels)``; inputs as :meth:`predict` takes them."""
        correct = total = 0
        for xb, yb in _iterate(data, batch_size, self.inputs):
            pred = self.predict(xb, batch_size=batch_size)
            correct += int(np.sum(np.argmax(pred, axis=-1) == np.asarray(yb).reshape(-1)))
            total += len(yb)
        if total == 0:
            raise KslimValueError("evaluate() got no samples.")
        return correct / total

    # ------------------------------------------------------------------ inspection
    def describe_ops(self, subgraph=0):
        """Per op of the main graph (``subgraph="all"``: one list per subgraph): name, options,
        input/output tensor descriptions (cached; see :func:`kslim.lite.runner.describe_ops`)."""
        if self._ops is None:
            from kslim.lite.runner import describe_ops

            self._ops = describe_ops(self.content, subgraph="all")
        return self._ops if subgraph == "all" else self._ops[subgraph]

    def ops(self):
        """Histogram of the builtin operators in the graph, e.g. ``{'CONV_2D': 7, 'FULLY_CONNECTED': 1}``."""
        return dict(Counter(d["op"] for d in self.describe_ops()))

    @property
    def float_ops(self):
        """``[(op_name, index)]`` of the ops that compute in float (see :func:`float_ops`); ``[]`` for
        a fully int8 model."""
        return float_ops(self)

    @property
    def precision(self):
        """What the model computes in: ``"int8"`` (every op int8), ``"int8 (2 float ops: CAST, MEAN)"``,
        ``"dynamic-range (int8 weights, float activations)"``, ``"float16 weights"`` or ``"float32"``."""
        if has_int8_kernels(self):
            bad = self.float_ops
            if not bad:
                return "int8"
            counts = Counter(op for op, _ in bad)
            kinds = ", ".join(f"{op}\u00d7{c}" if c > 1 else op for op, c in counts.most_common(6))
            more = " …" if len(counts) > 6 else ""
            return f"int8 ({len(bad)} float op{'s' if len(bad) > 1 else ''}: {kinds}{more})"
        const = {t["dtype"] for ops in self.describe_ops("all") for d in ops for t in d["inputs"]
                 if t is not None and t["const"]}
        if "int8" in const:
            return "dynamic-range (int8 weights, float activations)"
        if "float16" in const:
            return "float16 weights"
        return "float32"

    def summary(self):
        """A few lines: size and precision, inputs and outputs (Keras order), op histogram."""
        def io(details, inputs):
            rows = []
            for name, d in details:
                dims = ", ".join("?" if int(s) < 0 else str(int(s)) for s in d["shape_signature"][1:])
                q = " (quantized)" if np.dtype(d["dtype"]).kind in "iu" and _scale(d) else ""
                rows.append(f"{name} {np.dtype(d['dtype']).name}{q} (batch{', ' if dims else ''}{dims})")
            return "; ".join(rows)

        ins, outs = self._signature()
        ops = ", ".join(f"{k}\u00d7{v}" for k, v in sorted(self.ops().items(), key=lambda kv: (-kv[1], kv[0])))
        return "\n".join([
            f"LiteModel {self.source or ''}: {self.size:,} bytes, {self.precision}".replace(" :", ":"),
            f"inputs:  {io(ins, True)}",
            f"outputs: {io(outs, False)}",
            f"ops:     {ops}",
        ])

    def tensors(self):
        """Details of every tensor (name, dtype, shape, quantization parameters)."""
        return self.interpreter().get_tensor_details()

    def __repr__(self):
        try:
            precision = self.precision
        except Exception:  # a flatbuffer the schema cannot parse: still printable
            precision = "unreadable"
        return f"LiteModel(size={self.size}, source={self.source!r}, {precision})"


def has_int8_kernels(lite):
    """Whether a model (``LiteModel`` or flatbuffer bytes) computes in integers: some op other than
    QUANTIZE/DEQUANTIZE reads an int8/uint8 *activation* (a non-constant tensor). Dynamic-range and
    float16 models keep float activations (their int8 tensors are weights, or a GATHER of an int8
    table that is dequantized at once), so they have no int8 kernels."""
    return any(t is not None and not t["const"] and t["dtype"] in ("int8", "uint8")
               for ops in _all_ops(lite) for d in ops if d["op"] not in BOUNDARY_OPS for t in d["inputs"])


def float_ops(lite):
    """The ops of a converted model (``LiteModel`` or flatbuffer bytes) that compute in float.

    Returns ``[(op_name, index)]`` in execution order (index in the main graph); ``[]`` for a fully
    int8 graph. The one definition kslim uses wherever it calls a model "int8":

    * an op is float when any of its tensors — inputs (weights included) or outputs — is float32 or
      float16. That includes data-movement ops (RESHAPE, TRANSPOSE, CONCATENATION ...) on float
      activations and CASTs to float: they show where activations are float;
    * ops whose tensors are all integer or boolean are not float, whatever they do: SHAPE, int32
      shape arithmetic, GATHER indices, masks. They carry no float arithmetic;
    * QUANTIZE and DEQUANTIZE, the conversions at the boundary of the int8 region, are never listed
      (the float op on their float side is);
    * a control-flow op (WHILE, IF, CALL_ONCE) is float when its own operands are, or when any op
      of the subgraphs the model calls is.

    Example:
        >>> import keras
        >>> from kslim.lite import convert
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> float_ops(convert(m, check=False))
        [('FULLY_CONNECTED', 0)]
    """
    graphs = _all_ops(lite)
    called_float = any(_is_float(op) for ops in graphs[1:] for op in ops)
    return [(op["op"], op["index"]) for op in graphs[0]
            if _is_float(op) or (called_float and op["op"] in CONTROL_FLOW_OPS)]


def _is_float(op):
    return op["op"] not in BOUNDARY_OPS and any(
        t is not None and t["dtype"] in FLOAT_TYPES for t in op["inputs"] + op["outputs"])


def _all_ops(lite):
    """describe_ops of every subgraph (main graph first)."""
    if isinstance(lite, LiteModel):
        return lite.describe_ops("all")
    from kslim.lite.runner import describe_ops

    return describe_ops(lite.content if hasattr(lite, "content") else lite, subgraph="all")


def _natural(name):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _scale(detail):
    scale, _ = detail["quantization"]
    return bool(scale)


def _is_scalar(x):
    return not isinstance(x, (dict, list, tuple)) and np.ndim(x) == 0


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def quantize_io(x, detail):
    """An array as the interpreter tensor ``detail`` takes it: on its int8/int16 grid
    (``round(x / scale + zero_point)``, clipped) when the tensor is quantized (token ids and masks are
    not: their scale is 0), else cast to its dtype."""
    dtype = detail["dtype"]
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and scale:
        q = np.round(np.asarray(x, np.float32) / scale + zero)
        info = np.iinfo(dtype)
        return np.clip(q, info.min, info.max).astype(dtype)
    return np.asarray(x).astype(dtype)


def dequantize_io(y, detail):
    """An interpreter output as float32: ``(q - zero_point) * scale`` when the tensor is quantized."""
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(y.dtype, np.integer) and scale:
        return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def _iterate(data, batch_size, inputs):
    """(inputs, labels) batches from a tuple ``(inputs, labels)`` or an iterable of such batches."""
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        if len(inputs) == 1 and not isinstance(x, (dict, list, tuple)) and np.asarray(x).dtype == np.uint8:
            from kslim.datasets.pipeline import preprocess

            x = preprocess(x)
        arrays = inputs.arrays(x, "evaluate()")
        y = np.asarray(y)
        for s in range(0, len(y), batch_size):
            yield inputs.structure([a[s:s + batch_size] for a in arrays]), y[s:s + batch_size]
        return
    items = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else data
    for xb, yb in items:
        yield xb, np.asarray(yb)
