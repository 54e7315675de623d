"""Model analysis: FLOPs/MACs and parameter counts per layer, weight size, before/after comparison.

Example:
    >>> import kslim
    >>> report = kslim.analysis.flops(kslim.models.mobilenet_v1(width=0.5), detail=True)
    >>> report.flops == 2 * report.macs
    True
"""

from kslim.analysis.diff import LayerDiff, SummaryDiff, summary_diff
from kslim.analysis.flops import FlopsReport, LayerFlops, flops
from kslim.analysis.rules import register_rule
from kslim.analysis.size import model_size

__all__ = [
    "flops", "FlopsReport", "LayerFlops", "model_size", "summary_diff", "SummaryDiff", "LayerDiff",
    "register_rule",
]
