"""Pruning scopes: which of a model's channel groups a pruner may prune, chosen by name.

A scope is a predicate ``(group, graph) -> bool`` over the :class:`~kslim.graph.ChannelGroup` objects of
the model's dependency graph. :class:`~kslim.prune.FilterPruner` prunes only the groups its scope keeps
(``FilterPruner(model, scope="uncoupled")``); a ratio given for a layer of a group left out raises
an error that names the scope, as for a skipped layer. The names below are one registry that the Python
API, the YAML schema (``strategies[i].prune.scope``) and the CLI (``kslim prune --scope``) read.

============== ===========================================================================================
name           groups the pruner may prune
============== ===========================================================================================
``all``        every prunable group (the default)
``uncoupled``  groups with one producer: channels no residual ``Add``, squeeze-excite ``Multiply`` or
               other merge ties to another layer's output. In a residual net these are mostly the
               channels inside the blocks (MobileNetV2's expansions, ResNet's bottleneck convs), and the
               residual stream keeps its width, so no ``Add`` is narrowed. A stem conv or a block output
               that no ``Add`` ties (MobileNetV2's ``block_16_project``) has one producer too, and is in.
============== ===========================================================================================

``skip`` and ``keep_classifier`` apply on top of the scope. Your own scope::

    >>> from kslim.prune.scope import register_scope, scope_names, unregister_scope
    >>> @register_scope("wide", "groups of at least 64 channels")
    ... def wide(group, graph):
    ...     return group.size >= 64
    >>> "wide" in scope_names()
    True
    >>> unregister_scope("wide")

This module does not import TensorFlow.
"""

from kslim.errors import KslimTypeError, KslimValueError
from kslim.validation import check_registry_name

_SCOPES = {}  # name -> (predicate, description)


def register_scope(name, description, predicate=None, replace=False):
    """Register ``predicate(group, graph) -> bool`` as the scope ``name``; usable as a decorator.

    ``name`` becomes valid wherever a scope is: ``FilterPruner(scope=)``, :func:`kslim.prune.make_pruner`,
    the YAML ``prune`` strategy and ``kslim prune --scope``. Registering a taken name raises unless
    ``replace=True``.
    """
    check_registry_name(name, "scope")

    def do(fn):
        if not callable(fn):
            raise KslimTypeError(f"register_scope({name!r}): expected a function (group, graph) -> bool, got {fn!r}.")
        if name in _SCOPES and _SCOPES[name][0] is not fn and not replace:
            raise KslimValueError(f"scope {name!r} is already registered; pass replace=True to replace it.")
        _SCOPES[name] = (fn, str(description))
        return fn

    return do if predicate is None else do(predicate)


def unregister_scope(name):
    """Remove the scope registered as ``name`` (no error when there is none)."""
    _SCOPES.pop(name, None)


def scope_names():
    """Registered scope names, in registration order.

    >>> scope_names()[:2]
    ['all', 'uncoupled']
    """
    return list(_SCOPES)


def scope_description(name):
    """The one-line description the scope ``name`` was registered with."""
    key = get_scope(str(name))[0]
    return _SCOPES[key][1]


def get_scope(scope):
    """``(name, predicate)`` from a registered name (case-insensitive) or a function ``(group, graph) -> bool``
    (named after the function).

    >>> get_scope("ALL")[0]
    'all'
    """
    if scope is None:
        scope = "all"
    if callable(scope):
        return getattr(scope, "__name__", "custom"), scope
    key = str(scope).lower()
    if key not in _SCOPES:
        raise KslimValueError(f"Unknown pruning scope {scope!r}: choose one of {scope_names()} "
                              "(kslim.prune.scope), or pass a function (group, graph) -> bool.")
    return key, _SCOPES[key][0]


@register_scope("all", "every prunable group (the default)")
def _all(group, graph):
    return True


@register_scope("uncoupled", "groups with one producer (no Add or Multiply ties them to another layer): "
                             "the residual stream keeps its width")
def _uncoupled(group, graph):
    return len(group.layer_names) == 1


__all__ = ["register_scope", "unregister_scope", "scope_names", "scope_description", "get_scope"]
