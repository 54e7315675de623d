"""Result objects of the pruning functions that return more than a model.

They replace the ``(model, info)`` / ``(ratios, info)`` tuples of kslim 0.1: unpacking one into two
names still works for one release and warns (``DeprecationWarning``).
"""

from dataclasses import dataclass, fields
from typing import Any

from kslim.validation import LegacyPair


@dataclass(frozen=True)
class PruneResult(LegacyPair):
    """What :meth:`FilterPruner.prune_to_flops` found.

    Attributes:
        model: the pruned ``keras.Model``.
        ratio: the uniform ratio (fraction of channels removed) that reached the target.
        flops_reduction: the requested fraction of MACs removed.
        reduction: the fraction of MACs really removed (``>= flops_reduction``).
        macs_before, macs_after: multiply-accumulates per sample.
        ranking: ``"local"`` or ``"global"``.
    """

    model: Any
    ratio: float
    flops_reduction: float
    reduction: float
    macs_before: int
    macs_after: int
    ranking: str = "local"

    @property
    def overshoot(self):
        """How far past ``flops_reduction`` the channel rounding (``round_to``, whole channels) pushed it."""
        return self.reduction - self.flops_reduction

    def to_dict(self):
        """Everything but the model (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}

    def _pair(self):
        info = self.to_dict()
        info["target"] = info["flops_reduction"]  # the 0.1 key
        return self.model, info


@dataclass(frozen=True)
class FlopsRatios(LegacyPair):
    """What :func:`kslim.prune.ratios_by_flops` found.

    Attributes:
        ratios: ``{group: fraction of channels removed}`` to pass to :meth:`FilterPruner.prune`.
        max_loss: the tolerated loss (of :func:`ratios_by_loss`) giving these ratios.
        reduction: the fraction of MACs they remove (estimated without building a model).
        macs: MACs per sample after pruning; base_macs: before.
    """

    ratios: dict
    max_loss: float
    reduction: float
    macs: int
    base_macs: int

    def to_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "ratios"}

    def _pair(self):
        return self.ratios, self.to_dict()
