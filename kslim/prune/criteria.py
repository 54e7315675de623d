"""The pruner classes of the weight criteria (L1 norm, L2 norm, FPGM) and the pruner of any importance name.

A criterion maps the filters of one producer, as an ``(n_filters, filter_size)`` array, to one score
per filter; higher scores are kept (the functions live in :mod:`kslim.prune.importance`, with every
other importance). :func:`make_pruner` builds the pruner of a criterion or importance name.
"""

import numpy as np  # noqa: F401 - the doctests below use np

from kslim.errors import KslimTypeError, KslimValueError
from kslim.prune.base import FilterPruner
from kslim.prune.importance import fpgm, geometric_median, importance_names, l1_norm, l2_norm  # noqa: F401


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


_IMPORTANCE_PRUNERS = {}   # importance name -> generated FilterPruner subclass


def _importance_pruner(name):
    """The FilterPruner subclass ranking with importance ``name`` (one class per name, made once)."""
    cls = _IMPORTANCE_PRUNERS.get(name)
    if cls is None:
        title = "".join(part.capitalize() for part in name.split("_"))
        cls = type(f"{title}FilterPruner", (FilterPruner,), {
            "default_importance": name, "__module__": __name__,
            "__doc__": f"Filter pruner ranking channels by the {name!r} importance (kslim.prune.importance)."})
        _IMPORTANCE_PRUNERS[name] = cls
    return cls


def criterion_class(name):
    """The pruner class of a criterion or importance name (:func:`kslim.prune.importance_names`).

    >>> criterion_class("fpgm").__name__, criterion_class("bn_scale").__name__
    ('FPGMFilterPruner', 'BnScaleFilterPruner')
    """
    key = str(name).lower()
    if key in CRITERIA:
        return CRITERIA[key]
    if key in importance_names():
        return _importance_pruner(key)
    others = [n for n in importance_names() if n not in CRITERIA]
    raise KslimValueError(
        f"Unknown pruning criterion: pruner {name!r} is not one of the weight criteria {sorted(CRITERIA)} nor of "
        f"the importances {others}; choose one of them or pass a FilterPruner class or instance."
    )


def known_pruner_names():
    """Class names of the pruners of every registered criterion/importance name, sorted."""
    return sorted(criterion_class(n).__name__ for n in importance_names())


def pruner_class_named(class_name):
    """The pruner class whose ``__name__`` is ``class_name`` among those of the registered names, or None."""
    for name in importance_names():
        cls = criterion_class(name)
        if cls.__name__ == class_name:
            return cls
    return None


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
        f"pruner must be a criterion name {tuple(importance_names())} or a FilterPruner subclass, got {name}."
    )


def resolve_importance(pruner=None, importance=None, where="make_pruner()"):
    """``(pruner, importance)`` with a kslim 0.1 ``pruner="<name>"`` moved to ``importance`` (warning).

    The vocabulary: ``importance`` is how channels are ranked (a name of
    :func:`~kslim.prune.importance_names`, an :class:`~kslim.prune.importance.Importance` or a weight
    criterion function); ``pruner`` is a :class:`FilterPruner` class or instance (ranking *and*
    ``skip`` / ``round_to`` ... settings). Giving both is an error.
    """
    from kslim.validation import warn_renamed

    if isinstance(pruner, str):
        if importance is not None:
            raise KslimTypeError(f"{where}: give importance= only (pruner={pruner!r} is its old spelling).")
        warn_renamed(f"pruner={pruner!r}", f"importance={pruner!r}", where, stacklevel=4)
        pruner, importance = None, pruner
    if pruner is not None and importance is not None:
        raise KslimTypeError(f"{where}: give importance= (how channels are ranked) or pruner= (a FilterPruner "
                             "class or instance, which has its own), not both.")
    return pruner, importance


def make_pruner(model, pruner=None, importance=None, where="make_pruner()", **options):
    """A :class:`FilterPruner` on ``model`` from an importance, a pruner class or a pruner instance.

    Args:
        model: the ``keras.Model`` to prune.
        pruner: a :class:`FilterPruner` subclass (built on ``model`` with ``options``), or an instance
            already bound to ``model``. (A name here is the kslim 0.1 spelling of ``importance``.)
        importance: ``"l1"`` (default when neither is given), any importance name (``"l2"``,
            ``"fpgm"``, ``"bn_scale"``, ``"taylor"`` ...), an :class:`~kslim.prune.importance.Importance`
            or a weight criterion function.
        where: the caller named in error messages.
        **options: ``skip``, ``keep_classifier``, ``round_to``, ``data``, ``loss`` ... passed to the
            class; not allowed with an instance (it has its own).

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, name="c1"),
        ...                       keras.layers.Conv2D(4, 3, name="c2"), keras.layers.Flatten(),
        ...                       keras.layers.Dense(2)])
        >>> p = make_pruner(m, importance="l2", round_to=4)
        >>> type(p).__name__, p.round_to
        ('L2NormFilterPruner', 4)
    """
    pruner, importance = resolve_importance(pruner, importance, where)
    if importance is not None:
        if isinstance(importance, str):
            return criterion_class(importance)(model, **options)
        return FilterPruner(model, importance=importance, **options)
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
