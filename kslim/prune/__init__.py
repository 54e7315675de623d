"""Filter pruning that physically removes channels and returns a smaller, ordinary Keras model.

Importing ``kslim.prune`` is cheap: its names are imported from their modules on first use, so the
importance registry (:mod:`kslim.prune.importance`, no TensorFlow) can feed the CLI and the config
schema without loading TensorFlow.

Example:
    >>> import kslim
    >>> from kslim.prune import L1NormFilterPruner
    >>> model = kslim.models.resnet(width=0.25)
    >>> small = L1NormFilterPruner(model).prune(0.5)
    >>> small.count_params() < model.count_params()
    True
"""

import importlib
import sys
import types

_LAZY = {
    "kslim.prune.base": ["FilterPruner"],
    "kslim.prune.criteria": ["FPGMFilterPruner", "L1NormFilterPruner", "L2NormFilterPruner", "criterion_class",
                             "make_pruner", "pruner_class"],
    "kslim.prune.importance": ["Importance", "MagnitudeImportance", "DataImportance", "register_importance",
                               "unregister_importance", "get_importance", "importance_class", "importance_names",
                               "fpgm", "geometric_median", "l1_norm", "l2_norm", "lamp"],
    "kslim.prune.gradual": ["AGP", "ConstantRatio", "GradualPruning", "PolynomialDecay", "PruningSchedule",
                            "strip_pruning"],
    "kslim.prune.plot": ["plot_sensitivity"],
    "kslim.prune.result": ["PruneResult", "FlopsRatios"],
    "kslim.prune.sensitivity": ["load_sensitivity", "ratios_by_flops", "ratios_by_loss", "sensitivity"],
    "kslim.prune.unstructured": ["LevelPruner", "UnstructuredPruning", "strip_unstructured", "weight_sparsity",
                                 "convert_sparse", "sparse_tensors"],
    "kslim.prune.lottery": ["lottery_ticket", "LotteryTicket"],
    "kslim.prune.admm": ["ADMMPruning"],
    "kslim.prune.netadapt": ["netadapt", "NetAdaptResult"],
    "kslim.prune.heads": ["prune_heads", "head_importance", "plan_heads"],
    "kslim.prune.round_to": ["suggest_round_to", "RoundToChoice"],
    "kslim.prune.scope": ["register_scope", "unregister_scope", "scope_names", "scope_description", "get_scope"],
    "kslim.prune.regularizers": ["slim_penalty", "group_lasso_penalty", "group_norms", "SparsityPenalty"],
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = list(_WHERE)


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'kslim.prune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """``kslim.prune.sensitivity`` is the function (as before), not the submodule of the same name: the
    import system sets a package attribute to each submodule it loads; keep the function instead."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}" and name in _WHERE:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
