"""BatchNormalization re-estimation: recompute the moving statistics on data (after pruning or QAT).

Pruning (and low-bit QAT) change what reaches each BatchNormalization, while its moving mean and
variance still describe the original network; the mismatch costs accuracy that a few hundred
forward passes recover (PaddleSlim, AIMET ``reestimate_bn_stats``, PyTorch ``update_bn``).

:func:`reestimate_batch_norm` runs the model on the data in one pass per batch with every
BatchNormalization normalising with the *batch* statistics (as in training; every other layer runs
in inference mode: no dropout) and accumulates, per channel, the sum and the sum of squares of each
BatchNormalization's input over every sample and position. The new moving statistics are the exact
averages over all the data (``mean = E[x]``, ``variance = E[x^2] - E[x]^2``), not a momentum
schedule: the result does not depend on the batch order, and the statistics of the first
BatchNormalization are exactly those of its inputs on the data. Gamma, beta and every other weight
are unchanged; the model passed in is not modified.

Example:
    >>> import keras, numpy as np
    >>> from kslim.quant import reestimate_batch_norm
    >>> m = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 1, name="conv"),
    ...                       keras.layers.BatchNormalization(name="bn")])
    >>> x = np.random.default_rng(0).normal(size=(64, 4, 4, 3)).astype("float32")
    >>> result = reestimate_batch_norm(m, x)
    >>> result.layers, result.samples
    (('bn',), 64)
    >>> y = np.asarray(m.get_layer("conv")(x)).reshape(-1, 2)
    >>> bool(np.allclose(result.model.get_layer("bn").moving_mean, y.mean(0), atol=1e-5))
    True
"""

from dataclasses import dataclass

import numpy as np

from kslim.errors import ModelError
from kslim.validation import check_model


@dataclass(frozen=True)
class BatchNormResult:
    """What :func:`reestimate_batch_norm` did.

    Attributes:
        model: the model with re-estimated moving statistics (a copy; the input model is unchanged).
        layers: paths of the BatchNormalization layers re-estimated, in graph order.
        skipped: ``(path, reason)`` of the BatchNormalization layers left as they were.
        samples, batches: data used.
        mean_shift: ``{path: max_c |new_mean_c - old_mean_c| / sqrt(old_variance_c + eps)}``, how far
            the statistics moved (in old standard deviations).
    """

    model: object
    layers: tuple
    skipped: tuple
    samples: int
    batches: int
    mean_shift: dict

    def to_dict(self):
        """Everything but the model (JSON-ready)."""
        return {"layers": list(self.layers), "skipped": [list(s) for s in self.skipped], "samples": self.samples,
                "batches": self.batches, "mean_shift": dict(self.mean_shift)}


def run_hooked(model, arrays, hook):
    """Run ``model`` on one batch (``arrays``: one array per model input, model order) with Keras' own
    graph executor, each leaf operation ``op`` at path ``path`` replaced by ``hook(op, path)`` when
    that returns a callable (``None``: the op runs as is, in inference mode). Nested models are run
    through, so their layers are hooked too. Returns the model's outputs.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")])
        >>> seen = []
        >>> def hook(op, path):
        ...     if path == "fc":
        ...         return lambda x, **kw: (seen.append(tuple(x.shape)), op(x, **kw))[1]
        >>> _ = run_hooked(m, [np.ones((5, 3), "float32")], hook)
        >>> seen
        [(5, 3)]
    """
    import keras

    from kslim.graph import keras_graph as kg

    names = kg.leaf_layers(model)[1]

    def operation_fn(prefix):
        def fn(op):
            if kg.is_graph_model(op):
                inner = operation_fn(f"{prefix}{op.name}/")
                return lambda *args, **kwargs: kg.run_through_graph(op, args[0] if len(args) == 1 else list(args),
                                                                    inner)
            replacement = hook(op, names.get(id(op), prefix + op.name))
            return op if replacement is None else replacement

        return fn

    tensors = [keras.ops.convert_to_tensor(a) for a in arrays]
    return kg.run_through_graph(model, tensors, operation_fn(""))


def data_batches(model, data, batch_size=32, batches=None, fn="reestimate_batch_norm"):
    """``data`` as a list of batches (lists of arrays in model input order), checked against ``model``
    (:func:`kslim.quant.ptq.calibration_batches`; ``batches`` limits their number)."""
    from kslim.lite.inputs import model_inputs
    from kslim.quant.ptq import calibration_batches

    return calibration_batches(data, model_inputs(model, fn), batch_size, batches, name="data")


def _plain_bn(op):
    """``""`` if ``op`` is a BatchNormalization kslim re-estimates, else why not (None: not a BN)."""
    import keras

    if not isinstance(op, keras.layers.BatchNormalization):
        return None
    if type(op).call is not keras.layers.BatchNormalization.call:
        return f"{type(op).__name__} overrides call(): kslim cannot know what its statistics mean"
    if not isinstance(op.axis, int):
        return f"axis={op.axis!r}: only one channel axis is supported"
    return ""


class _Accumulator:
    """Per-channel sums of one BatchNormalization's input; ``__call__`` normalises with batch statistics."""

    def __init__(self, bn):
        self.bn = bn
        self.sum = self.sq = 0.0
        self.count = 0

    def __call__(self, x, training=None, mask=None, **kwargs):
        from keras import ops

        bn = self.bn
        axis = bn.axis % len(x.shape)
        axes = [i for i in range(len(x.shape)) if i != axis]
        x32 = ops.cast(x, "float32")
        mean, var = ops.moments(x32, axes)
        n = int(np.prod([int(ops.shape(x32)[i]) for i in axes]))
        m = np.asarray(ops.convert_to_numpy(mean), np.float64)
        v = np.asarray(ops.convert_to_numpy(var), np.float64)
        self.sum = self.sum + m * n
        self.sq = self.sq + (v + m * m) * n
        self.count += n
        return ops.cast(ops.batch_normalization(x32, mean, var, axis, offset=bn.beta if bn.center else None,
                                                scale=bn.gamma if bn.scale else None, epsilon=bn.epsilon), x.dtype)

    def statistics(self):
        mean = self.sum / self.count
        return mean, np.maximum(self.sq / self.count - mean * mean, 0.0)


def reestimate_batch_norm(model, data, batches=None, batch_size=32):
    """A copy of ``model`` whose BatchNormalization moving statistics are recomputed on ``data``.

    Args:
        model: a built ``keras.Model`` (e.g. the model returned by a kslim pruner).
        data: inputs (an array, a list/dict of arrays for multi-input models, ``tf.data`` of batches or
            ``(inputs, labels)``, an iterable of batches); a few hundred samples are enough.
        batches: use at most this many batches (``None``: all the data).
        batch_size: samples per forward pass; the batch statistics every BatchNormalization normalises
            with during the pass come from this many samples.

    Returns:
        :class:`BatchNormResult` (``result.model`` holds the new statistics).

    Raises:
        KslimTypeError: ``model`` is not a ``keras.Model``.
        KslimValueError: empty data, or data that does not match the model's inputs.
        ModelError: the model has no BatchNormalization that can be re-estimated.
    """
    import keras

    from kslim.graph import keras_graph as kg

    check_model(model, "reestimate_batch_norm()")
    layers = kg.leaf_layers(model)[0]
    reasons = {p: _plain_bn(op) for p, op in layers.items()}
    if not any(r == "" for r in reasons.values()):
        why = "; ".join(f"{p}: {r}" for p, r in reasons.items() if r)
        raise ModelError(f"reestimate_batch_norm(): model {model.name!r} has no BatchNormalization layer to "
                         f"re-estimate{' (' + why + ')' if why else ''}.")
    data = data_batches(model, data, batch_size, batches)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    accumulators = {}

    def hook(op, path):
        if _plain_bn(op) != "":
            return None
        if path not in accumulators:
            accumulators[path] = _Accumulator(op)
        return accumulators[path]

    for batch in data:
        run_hooked(copy, batch, hook)
    copied = kg.leaf_layers(copy)[0]
    shift = {}
    for path, acc in accumulators.items():
        bn = copied[path]
        old_mean = np.asarray(bn.moving_mean, np.float64)
        old_std = np.sqrt(np.asarray(bn.moving_variance, np.float64) + bn.epsilon)
        mean, var = acc.statistics()
        bn.moving_mean.assign(mean.astype(bn.moving_mean.dtype))
        bn.moving_variance.assign(var.astype(bn.moving_variance.dtype))
        shift[path] = float(np.max(np.abs(mean - old_mean) / old_std)) if mean.size else 0.0
    order = [p for p in copied if p in accumulators]
    skipped = tuple((p, r) for p, r in reasons.items() if r)
    samples = int(sum(len(b[0]) for b in data))
    return BatchNormResult(copy, tuple(order), skipped, samples, len(data), shift)


__all__ = ["reestimate_batch_norm", "BatchNormResult", "run_hooked"]
