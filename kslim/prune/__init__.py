"""Filter pruning that physically removes channels and returns a smaller, ordinary Keras model.

Example:
    >>> import kslim
    >>> from kslim.prune import L1NormFilterPruner
    >>> model = kslim.models.resnet(width=0.25)
    >>> small = L1NormFilterPruner(model).prune(0.5)
    >>> small.count_params() < model.count_params()
    True
"""

from kslim.prune.base import FilterPruner
from kslim.prune.criteria import (
    FPGMFilterPruner,
    L1NormFilterPruner,
    L2NormFilterPruner,
    criterion_class,
    fpgm,
    geometric_median,
    l1_norm,
    l2_norm,
    make_pruner,
)

__all__ = ["FilterPruner", "L1NormFilterPruner", "L2NormFilterPruner", "FPGMFilterPruner",
           "make_pruner", "criterion_class", "l1_norm", "l2_norm", "fpgm", "geometric_median"]

# sensitivity analysis, gradual (training-time) pruning, plots
from kslim.prune.gradual import AGP, ConstantRatio, GradualPruning, PolynomialDecay, PruningSchedule, strip_pruning
from kslim.prune.plot import plot_sensitivity
from kslim.prune.sensitivity import load_sensitivity, ratios_by_flops, ratios_by_loss, sensitivity

__all__ += ["sensitivity", "ratios_by_loss", "ratios_by_flops", "load_sensitivity", "plot_sensitivity",
            "GradualPruning", "strip_pruning", "PruningSchedule", "PolynomialDecay", "AGP", "ConstantRatio"]
