"""Filter importance criteria (L1 norm, L2 norm, FPGM) and the pruners that use them.

A criterion maps the filters of one producer, as an ``(n_filters, filter_size)`` array, to one score
per filter; higher scores are kept. :func:`make_pruner` builds the pruner of a criterion name.
"""

import numpy as np

from kslim.errors import KslimTypeError, KslimValueError
from kslim.prune.base import FilterPruner


def l1_norm(filters):
    """Sum of absolute weights of each filter (Li et al., *Pruning Filters for Efficient ConvNets*).

    >>> l1_norm(np.array([[1.0, -2.0], [0.5, 0.5]])).tolist()
    [3.0, 1.0]
    """
    return np.abs(filters).sum(axis=1)


def l2_norm(filters):
    """Euclidean norm of each filter.

    >>> l2_norm(np.array([[3.0, 4.0], [1.0, 0.0]])).tolist()
    [5.0, 1.0]
    """
    return np.sqrt(np.square(filters).sum(axis=1))


def geometric_median(points, iterations=100, eps=1e-10):
    """Geometric median of the rows of ``points`` (Weiszfeld's algorithm)."""
    points = np.asarray(points, dtype=np.float64)
    median = points.mean(axis=0)
    for _ in range(iterations):
        dist = np.linalg.norm(points - median, axis=1)
        if np.any(dist < eps):  # the median sits on a point: Weiszfeld's fixed point there
            close = dist < eps
            dist = np.where(close, eps, dist)
        w = 1.0 / dist
        new = (points * w[:, None]).sum(axis=0) / w.sum()
        if np.linalg.norm(new - median) < eps * (1.0 + np.linalg.norm(median)):
            median = new
            break
        median = new
    return median


def fpgm(filters):
    """Distance of each filter to the geometric median of the producer's filters (FPGM, arXiv 1811.00250).

    Filters close to the geometric median are the most replaceable by the others, so they get the
    lowest scores and are pruned first. The median is computed with Weiszfeld's algorithm (the
    paper's code approximates it by the sum of distances to all other filters).

    >>> f = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 5.0]])
    >>> int(np.argmin(fpgm(f)))
    0
    """
    filters = np.asarray(filters, dtype=np.float64)
    median = geometric_median(filters)
    return np.linalg.norm(filters - median, axis=1)


class L1NormFilterPruner(FilterPruner):
    """Filter pruner ranking filters by their L1 norm.

    Example:
        >>> import kslim
        >>> small = L1NormFilterPruner(kslim.models.mobilenet_v1(width=0.25)).prune(0.5)
        >>> small.output_shape
        (None, 10)
    """

    criterion = staticmethod(l1_norm)


class L2NormFilterPruner(FilterPruner):
    """Filter pruner ranking filters by their L2 norm.

    Example:
        >>> import kslim
        >>> small = L2NormFilterPruner(kslim.models.resnet(width=0.25)).prune({"stem_conv": 0.5})
        >>> small.get_layer("stem_conv").filters
        4
    """

    criterion = staticmethod(l2_norm)


class FPGMFilterPruner(FilterPruner):
    """Filter pruner removing the filters nearest the geometric median of their layer (FPGM).

    Example:
        >>> import kslim
        >>> small = FPGMFilterPruner(kslim.models.vgg(width=0.25)).prune(0.25)
        >>> small.get_layer("conv3_1").filters
        24
    """

    criterion = staticmethod(fpgm)


#: criterion name -> pruner class
CRITERIA = {"l1": L1NormFilterPruner, "l2": L2NormFilterPruner, "fpgm": FPGMFilterPruner}


def criterion_class(name):
    """The pruner class of a criterion name: ``"l1"``, ``"l2"`` or ``"fpgm"``.

    >>> criterion_class("fpgm").__name__
    'FPGMFilterPruner'
    """
    key = str(name).lower()
    if key not in CRITERIA:
        raise KslimValueError(
            f"Unknown pruning criterion: pruner {name!r} is not one of {sorted(CRITERIA)}; choose one of them "
            "or pass a FilterPruner class or instance."
        )
    return CRITERIA[key]


def pruner_class(pruner=None):
    """The :class:`FilterPruner` subclass of a criterion name (``None``: ``"l1"``) or the class itself.

    >>> pruner_class("l2").__name__
    'L2NormFilterPruner'
    """
    if pruner is None:
        pruner = "l1"
    if isinstance(pruner, str):
        return criterion_class(pruner)
    if isinstance(pruner, type) and issubclass(pruner, FilterPruner):
        return pruner
    name = pruner.__name__ if isinstance(pruner, type) else type(pruner).__name__
    raise KslimTypeError(
        f"pruner must be a criterion name {tuple(CRITERIA)} or a FilterPruner subclass, got {name}."
    )


def make_pruner(model, pruner=None, **options):
    """A :class:`FilterPruner` on ``model`` from a criterion name, a pruner class or a pruner instance.

    Args:
        model: the ``keras.Model`` to prune.
        pruner: ``"l1"`` (default when ``None``), ``"l2"``, ``"fpgm"``, a :class:`FilterPruner`
            subclass (built on ``model`` with ``options``), or an instance already bound to ``model``.
        **options: ``skip``, ``keep_classifier``, ``round_to`` ... passed to the class; not allowed
            with an instance (it has its own).

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, name="c1"),
        ...                       keras.layers.Conv2D(4, 3, name="c2"), keras.layers.Flatten(),
        ...                       keras.layers.Dense(2)])
        >>> p = make_pruner(m, "l2", round_to=4)
        >>> type(p).__name__, p.round_to
        ('L2NormFilterPruner', 4)
    """
    if isinstance(pruner, FilterPruner):
        if pruner.model is not model:
            raise KslimValueError(
                f"The pruner instance is bound to model {pruner.model.name!r}, not to {model.name!r}: build the "
                "pruner on the model you pass (or pass the pruner class)."
            )
        if options:
            raise KslimValueError(
                f"Pruner options {sorted(options)} cannot be applied to a pruner instance; pass its class, or "
                "build the instance with them."
            )
        return pruner
    return pruner_class(pruner)(model, **options)
