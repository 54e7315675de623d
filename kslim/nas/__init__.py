"""Search with simulated annealing: a keras-tuner oracle, architecture search spaces, automatic pruning.

Example:
    >>> import keras_tuner
    >>> from kslim.nas import MobileNetV2Space, SimulatedAnnealingOracle, MaxFlops
    >>> space = MobileNetV2Space(input_shape=(28, 28, 1), num_classes=10)
    >>> oracle = SimulatedAnnealingOracle("val_accuracy", max_trials=10, hypermodel=space,
    ...                                   constraints=[MaxFlops(5e6)])
    >>> tuner = keras_tuner.Tuner(oracle=oracle, hypermodel=space, directory="/tmp/kslim_nas_doc",
    ...                           overwrite=True)   # then tuner.search(x, y, validation_data=...)
"""

from kslim.nas.autocompress import AutoCompressResult, auto_compress
from kslim.nas.autoprune import AutoPruneResult, auto_prune
from kslim.nas.constraints import (
    Constraint,
    InfeasibleConstraintError,
    MaxFlops,
    MaxLatency,
    MaxParams,
    make_constraints,
    measure_latency,
)
from kslim.nas.history import load_history, pareto_front, plot_history
from kslim.nas.oracle import SimulatedAnnealingOracle
from kslim.nas.search import SearchResult, search
from kslim.nas.spaces import MobileNetV2BlockSpace, MobileNetV2Space, ResNetSpace, SearchSpace, get_space

__all__ = [
    "Constraint", "InfeasibleConstraintError", "MaxFlops", "MaxLatency", "MaxParams",
    "make_constraints", "measure_latency", "SimulatedAnnealingOracle", "search", "SearchResult",
    "SearchSpace", "MobileNetV2Space", "MobileNetV2BlockSpace", "ResNetSpace", "get_space",
    "load_history", "pareto_front", "plot_history", "auto_prune", "AutoPruneResult", "auto_compress",
    "AutoCompressResult",
]

from kslim.nas.amc import AMCResult, amc_prune  # noqa: E402  (AMC, NNI's AMCPruner)

__all__ += ["amc_prune", "AMCResult"]
