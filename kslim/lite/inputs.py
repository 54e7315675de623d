"""Model inputs: one description of what a Keras model or a ``.tflite`` takes, and data checked against it.

Keras models take a single array, a list of arrays (functional models with several inputs, in the
order the model was built with) or a dict keyed by input name (keras-hub text backbones take
``{"token_ids": int32 (B, T), "padding_mask": (B, T)}``). Every kslim entry point that feeds data
(``kslim.lite.convert`` / ``parity``, ``LiteModel.predict`` / ``evaluate``, ``quant_post_static`` /
``quant_post_dynamic``) describes the model's inputs with :func:`model_inputs` and turns the user's
data into one list of arrays per batch, in that order, with :meth:`Inputs.arrays`: each array gets
its input's own dtype (integer and boolean inputs are not cast to float32), and a wrong number of
inputs, a missing dict key or a wrong shape raises :class:`~kslim.errors.KslimValueError` naming the
input and what was expected, before any conversion work starts.

A data *element* (one item of a ``tf.data`` dataset or of an iterable, or the data itself) is the
inputs, or a tuple ``(inputs, labels[, weights])``; for a single-input model any tuple is taken as
``(x, labels, ...)``. For a model with ``n > 1`` inputs a tuple/list of ``n`` arrays is the inputs
and a tuple whose first item is itself a list/tuple/dict is ``(inputs, labels, ...)``.

Example:
    >>> import keras, numpy as np
    >>> a, b = keras.Input((4,), name="a"), keras.Input((2,), dtype="int32", name="b")
    >>> m = keras.Model([a, b], keras.layers.Concatenate()([a, keras.ops.cast(b, "float32")]))
    >>> ins = model_inputs(m)
    >>> ins.names, ins.kind
    (['a', 'b'], 'list')
    >>> [x.dtype.name for x in ins.arrays({"b": np.ones((3, 2)), "a": np.zeros((3, 4))})]
    ['float32', 'int32']
"""

from typing import NamedTuple

import numpy as np

from kslim.errors import KslimTypeError, KslimValueError, ModelError
from kslim.validation import check_model


class InputSpec(NamedTuple):
    """One model input: ``name`` (dict key / TFLite signature name), ``shape`` without the batch axis
    (``None`` = any size) and ``dtype`` (numpy dtype name, ``"float32"``, ``"int32"``, ``"bool"`` ...)."""

    name: str
    shape: tuple
    dtype: str

    @property
    def is_float(self):
        return np.dtype(self.dtype).kind == "f"

    def describe(self):
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name!r} {self.dtype} (batch{', ' if dims else ''}{dims})"


class Inputs:
    """The inputs of a model, in its order; ``kind`` is ``"single"``, ``"list"`` or ``"dict"``."""

    def __init__(self, specs, kind, owner="model"):
        self.specs = list(specs)
        self.kind = kind
        self.owner = owner
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ModelError(f"{owner} has several inputs named alike ({names}): give each keras.Input a unique name.")

    @property
    def names(self):
        return [s.name for s in self.specs]

    def __len__(self):
        return len(self.specs)

    def __iter__(self):
        return iter(self.specs)

    def __repr__(self):
        return f"Inputs({self.kind}: {', '.join(s.describe() for s in self.specs)})"

    def expected(self):
        """Human description used in error messages."""
        if len(self.specs) == 1:
            return f"one input {self.specs[0].describe()}"
        how = "a dict keyed by input name" if self.kind == "dict" else "a list in this order or a dict keyed by name"
        return f"{len(self.specs)} inputs ({how}): " + ", ".join(s.describe() for s in self.specs)

    # ------------------------------------------------------------------ data
    def features(self, item):
        """The inputs part of a data element (labels and sample weights dropped), see the module doc."""
        if isinstance(item, dict):
            return item
        if isinstance(item, (tuple, list)):
            if not item:
                return item
            if len(self.specs) == 1:
                return item[0]
            if isinstance(item[0], (tuple, list, dict)):
                return item[0]
        return item

    def arrays(self, x, what="data", allow_unbatched=False):
        """``x`` (array, list/tuple in model order, or dict keyed by name) -> list of arrays in model order.

        Each array is cast to its input's dtype (floats to the float input's dtype; integer/boolean
        inputs keep integer/boolean values: floats with fractions, or booleans fed values other than 0/1,
        are refused). Shapes are checked against the model's (``None`` dimensions take any size),
        and every input must have the same batch size. ``allow_unbatched`` adds a batch axis when
        every array is one sample.
        """
        values = self._split(x, what)
        out = [np.asarray(v) if not hasattr(v, "numpy") else np.asarray(v.numpy()) for v in values]
        if allow_unbatched and all(a.ndim == len(s.shape) for a, s in zip(out, self.specs)):
            out = [a[None] for a in out]
        batch = None
        for i, (a, s) in enumerate(zip(out, self.specs)):
            if a.ndim != len(s.shape) + 1 or any(
                want is not None and got != want for got, want in zip(a.shape[1:], s.shape)
            ):
                raise KslimValueError(
                    f"{what}: shape {tuple(a.shape)} does not match the model input {s.name!r} "
                    f"(batch, {', '.join('?' if d is None else str(d) for d in s.shape)})"
                    + (" (? = any size)." if None in s.shape else "."))
            if batch is None:
                batch = len(a)
            elif len(a) != batch:
                raise KslimValueError(
                    f"{what}: input {s.name!r} has {len(a)} samples but {self.specs[0].name!r} has {batch}: "
                    "every input needs the same batch size.")
            out[i] = _cast(a, s, what)
        return out

    def _split(self, x, what):
        specs = self.specs
        if isinstance(x, (str, bytes)):
            raise KslimTypeError(f"{what}: expected {self.expected()}, got a string.")
        if isinstance(x, dict):
            missing = [s.name for s in specs if s.name not in x]
            extra = sorted(str(k) for k in x if k not in set(self.names))
            if missing or extra:
                parts = []
                if missing:
                    parts.append(f"missing key(s) {missing}")
                if extra:
                    parts.append(f"unknown key(s) {extra}")
                raise KslimValueError(f"{what}: {' and '.join(parts)}; {self.owner} takes {self.expected()}.")
            return [x[s.name] for s in specs]
        if len(specs) == 1:
            if isinstance(x, (tuple, list)) and len(x) == 1 and _is_array(x[0]) and len(x[0].shape) == len(specs[0].shape) + 1:
                return [x[0]]  # [x]: the one-element list form of a single input
            return [x]
        if isinstance(x, (tuple, list)):
            if len(x) != len(specs):
                raise KslimValueError(f"{what}: got {len(x)} arrays, {self.owner} takes {self.expected()}.")
            return list(x)
        raise KslimValueError(
            f"{what}: got a single {type(x).__name__}, {self.owner} takes {self.expected()}.")

    def structure(self, arrays):
        """List of arrays (model order) -> what the Keras model's ``__call__`` takes."""
        if self.kind == "dict":
            return {s.name: a for s, a in zip(self.specs, arrays)}
        if self.kind == "single":
            return arrays[0]
        return list(arrays)

    def batches(self, data, what="data", allow_unbatched=False):
        """Yield lists of arrays (model order) from ``data``: one element (array, list/tuple of the
        inputs, dict, ``(inputs, labels)``), a ``tf.data.Dataset`` or any iterable of elements, or a
        callable returning one."""
        if data is None:
            raise KslimValueError(f"{what} is None: pass {self.expected()} (arrays, a tf.data or an iterable).")
        if isinstance(data, (str, bytes)):
            raise KslimTypeError(f"{what} must be arrays or an iterable of batches, got a string {data!r}.")
        if callable(data) and not hasattr(data, "__iter__"):
            data = data()
        if self.is_element(data):
            yield self.arrays(self.features(data), what, allow_unbatched)
            return
        if not hasattr(data, "__iter__"):
            raise KslimTypeError(f"{what} must be arrays or an iterable of batches, got {type(data).__name__}.")
        items = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else data
        for i, item in enumerate(items):
            if isinstance(item, (tuple, list)) and not item:
                continue
            yield self.arrays(self.features(item), f"{what}: element {i}", allow_unbatched)

    def is_element(self, data):
        """Whether ``data`` is one element (rather than an iterable of them)."""
        if isinstance(data, dict) or _is_array(data):
            return True
        if isinstance(data, tuple) and len(self.specs) == 1 and 2 <= len(data) <= 3 and all(map(_is_array, data)):
            # (x, labels[, weights]): labels have fewer dimensions than a batch of x
            x = data[0]
            return len(x.shape) == len(self.specs[0].shape) + 1 and all(
                len(v.shape) < len(x.shape) and len(v) == len(x) for v in data[1:])
        if isinstance(data, (tuple, list)) and len(self.specs) > 1 and data:
            # bare arrays are the inputs of one batch (batches of a multi-input model are lists or dicts)
            x = data[0] if isinstance(data[0], (tuple, list, dict)) else data
            return isinstance(x, dict) or all(_is_array(v) for v in x)
        return False

    def random(self, n=16, seed=0, free_dim=8):
        """Seeded sample inputs: float inputs uniform in [0, 1), integer inputs 0 or 1 (a valid index
        for any vocabulary), boolean inputs True; ``None`` dimensions get ``free_dim``."""
        rng = np.random.default_rng(seed)
        out = []
        for s in self.specs:
            shape = (int(n), *(free_dim if d is None else int(d) for d in s.shape))
            kind = np.dtype(s.dtype).kind
            if kind == "f":
                out.append(rng.uniform(0, 1, size=shape).astype(s.dtype))
            elif kind == "b":
                out.append(np.ones(shape, bool))
            else:
                out.append(rng.integers(0, 2, size=shape).astype(s.dtype))
        return out


def _is_array(v):
    return isinstance(v, np.ndarray) or (hasattr(v, "shape") and hasattr(v, "dtype") and not hasattr(v, "element_spec"))


def _cast(a, spec, what):
    want = np.dtype(spec.dtype)
    if a.dtype == want:
        return a
    if want.kind == "f":
        if a.dtype.kind not in "fiub":
            raise KslimValueError(f"{what}: input {spec.name!r} takes {spec.dtype} numbers, got {a.dtype} values.")
        return a.astype(want)
    if a.dtype.kind not in "fiub":
        raise KslimValueError(f"{what}: input {spec.name!r} takes {spec.dtype} values, got {a.dtype}.")
    if a.dtype.kind == "f" and a.size and not np.all(np.isfinite(a) & (a == np.round(a))):
        raise KslimValueError(
            f"{what}: input {spec.name!r} takes {spec.dtype} values (indices, ids, masks) but got floats with "
            "fractions; pass integers.")
    if want.kind == "b":
        if a.size and not np.all((a == 0) | (a == 1)):
            raise KslimValueError(f"{what}: boolean input {spec.name!r} got values other than 0/1.")
        return a.astype(bool)
    return a.astype(want)


def model_inputs(model, fn="convert"):
    """:class:`Inputs` of a built Keras model (``Sequential``, functional with one input, a list or a
    dict of inputs). Raises :class:`~kslim.errors.ModelError` for a model without defined inputs."""
    import keras

    check_model(model, f"{fn}()")
    struct = None
    if not isinstance(model, keras.Sequential):
        try:
            struct = model.input  # functional: the structure the model was built with
        except (AttributeError, ValueError):
            struct = None
    if struct is None:
        ins = list(getattr(model, "inputs", None) or [])
        if not ins:
            raise ModelError(
                f"Model {model.name!r} has no defined input shape: give it a keras.Input (or build it by "
                f"calling it on data) before {fn}().")
        struct = ins[0] if len(ins) == 1 else ins
    owner = f"model {model.name!r}"
    # list inputs are named after their InputLayer (keras.Input(name=...)); a KerasTensor's own name
    # is "keras_tensor_<n>" unless the Input was named
    from kslim.graph.keras_graph import input_name

    if isinstance(struct, dict):
        items, kind = list(struct.items()), "dict"
    elif isinstance(struct, (list, tuple)):
        items, kind = [(input_name(t) or t.name, t) for t in struct], "list"
    else:
        items, kind = [(input_name(struct) or struct.name, struct)], "single"
    specs = []
    for name, t in items:
        if not hasattr(t, "shape") or isinstance(t, (dict, list, tuple)):
            raise ModelError(f"{owner} has a nested input structure at {name!r}: {fn}() needs a flat list or dict.")
        specs.append(InputSpec(str(name), tuple(None if d is None else int(d) for d in t.shape[1:]),
                               np.dtype(str(t.dtype)).name))
    return Inputs(specs, kind, owner)
