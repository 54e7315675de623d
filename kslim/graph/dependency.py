"""Data classes of the channel-dependency graph: :class:`Member`, :class:`ChannelGroup`, :class:`DependencyGraph`.

A *channel group* is one channel space of a model: the output channels of one or more producer layers
(Conv, Dense, SeparableConv ...) together with every weight axis indexed by those channels (the
producers' filters and biases, BatchNormalization statistics, depthwise kernels that carry the channels
through, the input axis of every consumer, the slice of a Concatenate consumer, the expanded rows of a
Dense after Flatten ...). Removing channel ``c`` of a group means deleting ``member.indices([c])`` along
``member.axis`` of weight ``member.weight_index`` of every member.
"""

import numpy as np

from kslim.errors import KslimValueError, ModelError, UnsupportedLayerError

#: roles of a member: ``filter``/``bias`` = the producer's output (its filters decide importance),
#: ``carry`` = a per-channel weight of a layer the channels pass through (BatchNormalization, depthwise
#: kernels, PReLU), ``input`` = the input axis of a consumer's kernel.
ROLES = ("filter", "bias", "carry", "input")


class Member:
    """One weight axis whose indices are tied to the channels of a group.

    The weight axis holds ``repeats`` blocks of ``period`` entries; in each block channel ``c`` of the
    group occupies the ``multiplier`` entries starting at ``offset + c * multiplier``. This covers the
    plain case (``offset=0, multiplier=1, repeats=1``), a slice of a Concatenate (``offset``), depthwise
    multipliers (``multiplier``) and the rows of a Dense after Flatten (``repeats`` = spatial positions,
    ``period`` = channels of the flattened tensor).

    Attributes:
        layer_name: name of the layer owning the weight (in the flattened model).
        weight_index: index of the weight in ``layer.weights`` / ``layer.get_weights()``.
        axis: axis of that weight indexed by the channels (non-negative).
        role: one of ``"filter"``, ``"bias"``, ``"carry"``, ``"input"``.
        weight_name: the weight's name (``kernel``, ``gamma`` ...), for display.
    """

    __slots__ = ("layer_name", "weight_index", "axis", "offset", "multiplier", "period", "repeats", "role",
                 "weight_name", "shape")

    def __init__(self, layer_name, weight_index, axis, offset=0, multiplier=1, period=0, repeats=1,
                 role="input", weight_name=None, shape=None):
        self.layer_name = layer_name
        self.weight_index = int(weight_index)
        self.axis = int(axis)
        self.offset = int(offset)
        self.multiplier = int(multiplier)
        self.period = int(period)
        self.repeats = int(repeats)
        self.role = role
        self.weight_name = weight_name
        self.shape = tuple(shape) if shape is not None else None

    def indices(self, channels):
        """Indices along :attr:`axis` of the weight that belong to the group channels ``channels``.

        >>> Member("fc", 0, 0, offset=2, multiplier=1, period=6, repeats=2).indices([0, 1]).tolist()
        [2, 3, 8, 9]
        """
        channels = np.asarray(channels, dtype=np.int64).reshape(-1)
        m = self.multiplier
        idx = (self.offset + channels[:, None] * m + np.arange(m, dtype=np.int64)[None, :]).reshape(-1)
        if self.repeats > 1:
            idx = (np.arange(self.repeats, dtype=np.int64)[:, None] * self.period + idx[None, :]).reshape(-1)
        return np.sort(idx)

    def index_matrix(self, channels):
        """``(len(channels), k)`` indices along :attr:`axis`: row ``i`` holds every entry of channel
        ``channels[i]`` (``k = multiplier x repeats``: depthwise copies, gate blocks, flattened positions).

        >>> Member("lstm", 0, 1, period=3, repeats=4).index_matrix([0, 2]).tolist()
        [[0, 3, 6, 9], [2, 5, 8, 11]]
        """
        channels = np.asarray(channels, dtype=np.int64).reshape(-1)
        m = self.multiplier
        idx = self.offset + channels[:, None] * m + np.arange(m, dtype=np.int64)[None, :]       # (n, m)
        blocks = np.arange(max(self.repeats, 1), dtype=np.int64) * self.period                    # (r,)
        return (blocks[None, :, None] + idx[:, None, :]).reshape(len(channels), -1)

    def __repr__(self):
        extra = []
        if self.offset:
            extra.append(f"offset={self.offset}")
        if self.multiplier != 1:
            extra.append(f"multiplier={self.multiplier}")
        if self.repeats != 1:
            extra.append(f"repeats={self.repeats}x{self.period}")
        extra = (", " + ", ".join(extra)) if extra else ""
        shape = f"{list(self.shape)}" if self.shape is not None else ""
        return (f"Member({self.layer_name}.{self.weight_name or self.weight_index}{shape} "
                f"axis={self.axis}, {self.role}{extra})")


class ChannelGroup:
    """A channel space: its producer layers and every weight axis that shares its channels.

    Attributes:
        name: name of the group's first producer layer (the key used in ratio dicts); ``"layer[a:b]"``
            when only channels ``a:b`` of that layer's output form this group (see
            :meth:`DependencyGraph.groups_for`); for a group without producer (model input, output of a
            layer kslim cannot reason about) the name of the layer that created the channels.
        layer_names: every producer layer whose output is this channel space (several for residual
            ``Add`` branches or squeeze-excite ``Multiply``); any of them may be used as a ratio key.
        size: number of channels.
        members: list of :class:`Member`.
        prunable: whether channels of this group may be removed.
        reason: why not, when ``prunable`` is False.
        exact: False when the group passes through a layer whose rule is not exact
            (LayerNormalization: its statistics span every channel, so removing even a zero channel
            changes the others' values slightly).
    """

    def __init__(self, name, size, layer_names=(), members=(), prunable=True, reason=""):
        self.name = name
        self.size = int(size)
        self.layer_names = list(layer_names)
        self.members = list(members)
        self.prunable = bool(prunable)
        self.reason = reason
        self.exact = True

    def members_of(self, layer_name):
        """Members that live on layer ``layer_name``."""
        return [m for m in self.members if m.layer_name == layer_name]

    @property
    def filters(self):
        """The producers' filter members (role ``"filter"``): the weights importance criteria look at."""
        return [m for m in self.members if m.role == "filter"]

    def __repr__(self):
        state = "prunable" if self.prunable else f"unprunable: {self.reason}"
        return f"ChannelGroup({self.name!r}, size={self.size}, {len(self.members)} members, {state})"

    def __str__(self):
        lines = [repr(self)]
        if len(self.layer_names) > 1:
            lines.append(f"  producers: {', '.join(self.layer_names)}")
        lines += [f"  {m!r}" for m in self.members]
        return "\n".join(lines)


class DependencyGraph:
    """All channel groups of a model, from :func:`kslim.graph.build_dependency_graph`.

    Attributes:
        model: the model the graph describes: the model given to ``build_dependency_graph`` with its
            composite layers expanded into nested Functional models (the same object when there was
            nothing to expand). Its layers share weights with :attr:`source`.
        source: the model given to ``build_dependency_graph``.
        groups: list of :class:`ChannelGroup` (every channel space, prunable or not), in graph order.
        layers: dict ``path -> layer`` of every leaf layer (``"outer/inner"`` inside nested models).
        classifiers: paths of the producer layers whose output is a model output.
        opaque: ``{path: reason}`` of the composite layers that could not be expanded.
    """

    def __init__(self, model, groups, layers, classifiers=(), nested=False):
        self.model = model
        self.source = model
        self.opaque = {}
        self.groups = list(groups)
        self.layers = dict(layers)
        self.classifiers = list(classifiers)
        self.nested = nested
        self._by_name = {g.name: g for g in self.groups}
        self._by_producer = {}
        for g in self.groups:
            for n in g.layer_names:
                self._by_producer.setdefault(n, []).append(g)

    @property
    def prunable_groups(self):
        """The groups whose channels may be removed."""
        return [g for g in self.groups if g.prunable]

    def group(self, layer_name):
        """The group named ``layer_name``, or whose channels ``layer_name`` produces (any of ``layer_names``).

        Raises:
            KslimValueError: ``layer_name`` is not a layer of the model.
            UnsupportedLayerError: the layer exists but produces no channels of its own
                (BatchNormalization, activation ...); the message names the producer to use instead.
            ModelError: the layer's output channels are split over several groups; the message names them.
        """
        groups = self.groups_for(layer_name)
        if len(groups) > 1:
            raise ModelError(
                f"The output channels of layer {layer_name!r} are split over several channel groups "
                f"({', '.join(repr(g.name) for g in groups)}: parts of it are added to different layers); "
                f"name one of these groups."
            )
        return groups[0]

    def groups_for(self, layer_name):
        """Every group named ``layer_name`` or produced (in whole or part) by layer ``layer_name``.

        A producer's output is split over several groups when slices of it are added or multiplied
        to channels of different layers (e.g. a conv added to a concatenation of two convs); each
        slice is then a group named ``"layer[start:stop]"``.
        """
        layer_name = self.resolve(layer_name)
        if layer_name in self._by_name:
            return [self._by_name[layer_name]]
        if layer_name in self._by_producer:
            return list(self._by_producer[layer_name])
        if layer_name not in self.layers:
            names = list(dict.fromkeys(n for g in self.prunable_groups for n in g.layer_names))
            hint = f" Prunable layers include: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}."
            raise KslimValueError(f"Unknown layer {layer_name!r}: the model has no layer of that name.{hint}")
        layer = self.layers[layer_name]
        owners = [g.name for g in self.groups if g.members_of(layer_name) and g.layer_names]
        hint = f" Its channels come from {', '.join(repr(o) for o in owners[:3])}." if owners else ""
        raise UnsupportedLayerError(
            f"Layer {layer_name!r} ({type(layer).__name__}) produces no channels of its own, so it cannot be "
            f"pruned directly; name the Conv/Dense layer that produces its channels.{hint}"
        )

    def resolve(self, name):
        """The path of layer or group ``name``: itself, or the one path ending in ``"/" + name``.

        Unknown names are returned unchanged (the caller reports them); an ambiguous bare name raises
        ModelError listing the candidate paths.
        """
        if not isinstance(name, str) or name in self._by_name or name in self.layers:
            return name
        candidates = [p for p in list(self.layers) + list(self._by_name) if p.endswith("/" + name)]
        candidates = list(dict.fromkeys(candidates))
        if len(candidates) > 1:
            raise ModelError(f"Layer name {name!r} is ambiguous: it matches {candidates}. Give the full path.")
        return candidates[0] if candidates else name

    def __repr__(self):
        n = len(self.prunable_groups)
        return f"DependencyGraph({self.model.name!r}: {len(self.groups)} channel groups, {n} prunable)"

    def __str__(self):
        return "\n".join([repr(self)] + [str(g) for g in self.groups])
