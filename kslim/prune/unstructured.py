"""Unstructured (weight-level) pruning: NNI's Level pruner and AGP on individual weights, sparse TFLite.

Filter pruning (:class:`~kslim.prune.FilterPruner`) removes whole channels and makes the model smaller
and faster everywhere; unstructured pruning zeroes individual weights of smallest magnitude and keeps
every shape. It only pays where the zeros are exploited: in the stored file (sparse tensors, gzip) and
on kernels that skip them.

* :class:`LevelPruner` -- one shot (NNI's ``LevelPruner``): in every chosen layer, the ``sparsity``
  fraction of its weight entries of smallest |w| is zeroed.
* :class:`UnstructuredPruning` -- the same during ``fit``, the sparsity raised along a
  :class:`~kslim.prune.PruningSchedule` (``AGP`` by default: Zhu & Gupta's automated gradual pruning,
  NNI's ``AGPPruner`` with a level pruner inside). Masks only grow; masked weights are held at zero
  after every optimizer step by the same variable-constraint mechanism as
  :class:`~kslim.prune.GradualPruning` (:class:`~kslim.prune.gradual.VariableMasks`), removed when
  ``fit`` ends. :func:`strip_unstructured` gives a plain copy of the model with the zeros.
* :func:`convert_sparse` -- :func:`kslim.lite.convert` with the converter's
  ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``: constant weights with enough zeros are stored as sparse
  tensors (the flatbuffer's ``sparsity`` field; :func:`sparse_tensors` lists them), which shrinks the
  file. Whether the runtime runs them faster: ``scripts/bench_sparsity.py`` measures it.

The weights pruned by default are the kernels (every trainable weight of two or more dimensions) of
the leaf layers: Conv, Dense, depthwise/separable, EinsumDense, Embedding; biases and normalisation
parameters are kept.

Example:
    >>> import keras, numpy as np
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="fc1"), keras.layers.Dense(2, name="fc2")])
    >>> sparse = LevelPruner(m, 0.75).prune()
    >>> weight_sparsity(sparse).sparsity
    0.75
"""

from dataclasses import dataclass, field

import numpy as np

from kslim.errors import KslimTypeError, KslimValueError, ModelError
from kslim.validation import check_model
from kslim.prune.base import _check_ratio
from kslim.prune.gradual import MaskingCallback


# ---------------------------------------------------------------------------------------------- weights
def prunable_weights(model, layers=None):
    """``{"layer_path/weight_name": variable}`` of the weights unstructured pruning zeroes.

    ``layers``: layer paths or names to restrict to (default: every leaf layer); their kernels (the
    trainable weights of >= 2 dimensions) are taken.
    """

    from kslim.graph import keras_graph as kg

    check_model(model, "unstructured pruning")
    leaves, _ = kg.leaf_layers(model)
    if layers is None:
        paths = list(leaves)
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        paths = [kg.resolve_path(leaves, n, "layer", model.name) for n in names]
    out = {}
    for p in paths:
        for w in leaves[p].weights:
            if getattr(w, "trainable", False) and len(w.shape) >= 2:
                out[f"{p}/{w.name}"] = w
        if layers is not None and not any(k.startswith(p + "/") for k in out):
            raise ModelError(f"layer {p!r} ({type(leaves[p]).__name__}) has no kernel to prune (no trainable "
                             "weight of two or more dimensions).")
    if not out:
        raise ModelError(f"model {model.name!r} has no kernel to prune.")
    return out


def _sparsities(sparsity, names):
    """``{weight name: sparsity}`` from one float or ``{layer path or weight name: sparsity}``."""
    if isinstance(sparsity, dict):
        out = {}
        for key, value in sparsity.items():
            hit = [n for n in names if n == key or n.startswith(f"{key}/")]
            if not hit:
                raise KslimValueError(f"sparsity names {key!r}, which is none of the pruned weights "
                                      f"({list(names)[:6]}{' ...' if len(names) > 6 else ''}).")
            for n in hit:
                out[n] = _check_ratio(value, f"sparsity of {key!r}")
        return out
    value = _check_ratio(sparsity, "sparsity")
    return {n: value for n in names}


def magnitude_mask(w, sparsity, masked=None):
    """0/1 mask zeroing the ``floor(sparsity * size)`` entries of smallest |w| (``masked`` entries first).

    >>> magnitude_mask(np.array([0.5, -3.0, 0.1, 2.0]), 0.5).tolist()
    [0.0, 1.0, 0.0, 1.0]
    """
    w = np.asarray(w)
    n = int(np.floor(w.size * sparsity + 1e-9))
    mask = np.ones(w.size, "float32")
    if n:
        score = np.abs(w).reshape(-1).astype(np.float64)
        if masked is not None:
            score[np.asarray(masked).reshape(-1) == 0] = -np.inf
        mask[np.argsort(score, kind="stable")[:n]] = 0.0
    return mask.reshape(w.shape)


@dataclass
class SparsityRow:
    """One weight: its name, entries, zeros and their share."""

    name: str
    size: int
    zeros: int

    @property
    def sparsity(self):
        return self.zeros / self.size if self.size else 0.0


@dataclass
class SparsityReport:
    """Zeros of the pruned weights of a model (:func:`weight_sparsity`)."""

    rows: list = field(default_factory=list)

    @property
    def size(self):
        return sum(r.size for r in self.rows)

    @property
    def zeros(self):
        return sum(r.zeros for r in self.rows)

    @property
    def sparsity(self):
        """Share of zeros over every row."""
        return self.zeros / self.size if self.size else 0.0

    def __str__(self):
        lines = [f"{'weight':<48} {'entries':>9} {'zeros':>9} {'sparsity':>8}"]
        lines += [f"{r.name:<48} {r.size:>9} {r.zeros:>9} {r.sparsity:>8.1%}" for r in self.rows]
        lines.append(f"{'total':<48} {self.size:>9} {self.zeros:>9} {self.sparsity:>8.1%}")
        return "\n".join(lines)


def weight_sparsity(model, layers=None):
    """A :class:`SparsityReport` of the kernels of ``model`` (see :func:`prunable_weights`)."""
    rows = []
    for name, var in prunable_weights(model, layers).items():
        a = np.asarray(var.numpy())
        rows.append(SparsityRow(name, int(a.size), int(np.count_nonzero(a == 0))))
    return SparsityReport(rows)


def _copy(model):
    """A plain copy of ``model`` (same config and weights, none of kslim's masks or constraints)."""
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


# ---------------------------------------------------------------------------------------------- one shot
class LevelPruner:
    """NNI's Level pruner: zero the smallest-magnitude fraction of each pruned weight.

    Args:
        model: a built ``keras.Model``.
        sparsity: fraction of each weight's entries zeroed, a float or ``{layer or weight name: fraction}``
            (weights not named keep all their entries).
        layers: restrict to these layers (default: every kernel, see :func:`prunable_weights`).

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="fc")])
        >>> p = LevelPruner(m, {"fc": 0.5})
        >>> int(p.masks()["fc/kernel"].sum())
        8
    """

    def __init__(self, model, sparsity=0.5, layers=None):
        self.model = model
        self.weights = prunable_weights(model, layers)
        self.sparsity = _sparsities(sparsity, list(self.weights))

    def masks(self):
        """``{weight name: 0/1 float32 mask}`` (0 = zeroed) for the current weights."""
        return {n: magnitude_mask(self.weights[n].numpy(), s) for n, s in self.sparsity.items()}

    def prune(self, copy=True):
        """The model with the masked entries zeroed: a plain copy (``copy=True``) or ``model`` itself."""
        masks = self.masks()
        target = _copy(self.model) if copy else self.model
        weights = prunable_weights(target) if copy else self.weights
        for n, mask in masks.items():
            var = weights[n]
            var.assign(np.asarray(var.numpy()) * mask.astype(var.dtype))
        return target


# ---------------------------------------------------------------------------------------------- during fit
class UnstructuredPruning(MaskingCallback):
    """Keras callback raising the weight sparsity along a schedule during ``fit`` (NNI's AGP + Level).

    Args:
        target_sparsity: final fraction of zeros of each pruned weight, a float or ``{layer or weight
            name: fraction}``.
        schedule: a :class:`~kslim.prune.PruningSchedule` (default ``AGP(0, 1000, 100)``).
        layers: restrict to these layers (default: every kernel).
        verbose: 1 prints the sparsity reached at each pruning step.

    After ``fit``, :attr:`masks` is ``{weight name: 0/1 mask}`` and :func:`strip_unstructured` gives
    the plain model.

    Example:
        >>> import keras, numpy as np
        >>> from kslim.prune import AGP
        >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="fc1"), keras.layers.Dense(2)])
        >>> m.compile("sgd", "mse")
        >>> cb = UnstructuredPruning(0.5, schedule=AGP(0, 4, 2))
        >>> _ = m.fit(np.ones((32, 8)), np.ones((32, 2)), batch_size=4, epochs=1, verbose=0, callbacks=[cb])
        >>> round(weight_sparsity(strip_unstructured(m, cb)).sparsity, 2)
        0.5
    """

    def __init__(self, target_sparsity=0.5, schedule=None, layers=None, verbose=0):
        super().__init__(schedule)
        if isinstance(target_sparsity, dict) and not target_sparsity:
            raise KslimValueError("target_sparsity dict is empty: name at least one layer.")
        if not isinstance(target_sparsity, dict):
            _check_ratio(target_sparsity, "target_sparsity")
        self.target_sparsity = target_sparsity
        self.layers = layers
        self.verbose = verbose
        self.masks = {}       # weight name -> 0/1 float32 mask
        self.history = []     # (step, overall sparsity of the masks)
        self._bound = None

    def _setup(self, model):
        if self._bound is model:
            return
        if self._bound is not None:
            raise ModelError(f"This UnstructuredPruning callback was used with model {self._bound.name!r}; use a "
                             f"new callback for model {model.name!r}.")
        self._bound = model
        self.weights = prunable_weights(model, self.layers)
        self._targets = _sparsities(self.target_sparsity, list(self.weights))
        self._keys = {n: self.variable_masks.track(self.weights[n]) for n in self._targets}

    def _has_masks(self):
        return bool(self.masks)

    def _update_masks(self, step):
        frac = self.schedule.fraction(step)
        for n, target in self._targets.items():
            self.masks[n] = magnitude_mask(self.weights[n].numpy(), target * frac, self.masks.get(n))
        self._apply_masks()
        reached = self.sparsity()
        self.history.append((int(step), reached))
        if self.verbose:
            print(f"UnstructuredPruning: step {step}: sparsity {reached:.3f} (schedule {frac:.3f})")

    def _apply_masks(self):
        arrays = self.variable_masks.ones()
        for n, mask in self.masks.items():
            arrays[self._keys[n]] = mask
        self.variable_masks.assign(arrays)

    def sparsity(self):
        """Overall fraction of masked entries of the pruned weights."""
        total = sum(m.size for m in self.masks.values())
        return float(sum(m.size - m.sum() for m in self.masks.values()) / total) if total else 0.0


def strip_unstructured(model, pruning=None):
    """A plain copy of ``model`` (no mask constraints) with the masks of ``pruning`` applied.

    Args:
        model: the model trained with :class:`UnstructuredPruning` (or pruned in place).
        pruning: the callback (its masks are applied once more: weights trained after its ``fit``
            are masked again), or None to copy the model as it is.
    """
    if pruning is not None and not isinstance(pruning, UnstructuredPruning):
        raise KslimTypeError(f"pruning must be the UnstructuredPruning callback, got {type(pruning).__name__}.")
    clone = _copy(model)
    if pruning is not None and pruning.masks:
        if pruning._bound is not model:
            raise ModelError("The UnstructuredPruning callback was used with another model than the one stripped.")
        weights = prunable_weights(clone, pruning.layers)
        for n, mask in pruning.masks.items():
            var = weights[n]
            var.assign(np.asarray(var.numpy()) * mask.astype(var.dtype))
    return clone


# ---------------------------------------------------------------------------------------------- export
def sparsity_hook(converter):
    """``converter_hook`` adding ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY`` to the converter's optimisations."""
    import tensorflow as tf

    opts = list(converter.optimizations or [])
    if tf.lite.Optimize.EXPERIMENTAL_SPARSITY not in opts:
        opts.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = opts


def convert_sparse(model, quantize=None, **options):
    """:func:`kslim.lite.convert` storing sparse weights as sparse tensors (``EXPERIMENTAL_SPARSITY``).

    ``quantize`` and ``options`` are :func:`kslim.lite.convert`'s (``"dynamic"``/``"int8"`` combine
    with the sparse encoding). Returns the :class:`~kslim.lite.LiteModel`; :func:`sparse_tensors`
    lists its sparse tensors.
    """
    from kslim.lite import convert

    if "converter_hook" in options:
        raise KslimValueError("convert_sparse sets converter_hook itself; call kslim.lite.convert with "
                              "sparsity_hook inside your own hook instead.")
    return convert(model, quantize=quantize, converter_hook=sparsity_hook, **options)


def sparse_tensors(lite):
    """Names of the tensors a ``.tflite`` (a LiteModel or its bytes) stores in sparse format."""
    from kslim.lite.flatbuffer import read_model

    _, model = read_model(bytes(getattr(lite, "content", lite)))
    return [(t.name or b"").decode() for sg in model.subgraphs for t in (sg.tensors or []) if t.sparsity is not None]


__all__ = ["LevelPruner", "UnstructuredPruning", "strip_unstructured", "weight_sparsity", "prunable_weights",
           "magnitude_mask", "SparsityReport", "SparsityRow", "convert_sparse", "sparsity_hook", "sparse_tensors"]
