"""Channel-dependency graph of a Keras 3 model: which weights share which channel space.

Example:
    >>> import kslim
    >>> from kslim.graph import build_dependency_graph
    >>> g = build_dependency_graph(kslim.models.resnet(width=0.25))
    >>> any(grp.prunable for grp in g.groups)
    True
"""

from kslim.graph.builder import build_dependency_graph
from kslim.graph.dependency import ChannelGroup, DependencyGraph, Member

__all__ = ["build_dependency_graph", "DependencyGraph", "ChannelGroup", "Member"]
