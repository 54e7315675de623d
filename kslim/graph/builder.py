"""Build the channel-dependency graph of a Keras 3 model by walking its functional graph.

Every tensor gets a *channel map*: its last axis described as a list of segments, each a slice of one
channel group (offset, depthwise multiplier, and for flattened tensors the period/repeat of the spatial
positions). Producers (Conv, Dense, SeparableConv, ConvTranspose) start a new group; layers the channels
pass through (BatchNormalization, activations, pooling, depthwise convs ...) carry the map; element-wise
merges (Add, Multiply ...) unify the groups of their inputs; Concatenate joins maps with offsets;
Flatten/Reshape/Permute transform it where the mapping is well defined. When a merge meets two
different layouts of the same channels (a conv added to a concatenation of two convs, as in NASNet),
the groups are split at the layout boundaries so each slice is unified with its counterpart; a split
group is named ``"layer[start:stop]"`` when it is only part of its first producer's output. A layer
kslim cannot reason about makes the groups it touches unprunable, with the reason recorded: pruning
never silently builds a wrong model.
"""

import math

from kslim.graph import rules
from kslim.graph.dependency import ChannelGroup, DependencyGraph, Member
from kslim.graph import keras_graph as kg
from kslim.rules import weight_index


class _Segment:
    """Channels ``[offset, offset + size*mult)`` of a tensor's last axis (per repeat) belong to ``group``."""

    __slots__ = ("group", "size", "offset", "mult", "period", "repeats")

    def __init__(self, group, size, offset=0, mult=1, period=0, repeats=1):
        self.group, self.size, self.offset, self.mult = group, size, offset, mult
        self.period, self.repeats = period, repeats

    def key(self):
        return (self.size, self.offset, self.mult, self.period, self.repeats)


class ChannelMap:
    """The channel layout of one tensor's last axis: a list of :class:`_Segment`."""

    __slots__ = ("segments", "channels", "last")

    def __init__(self, segments, channels, last=frozenset()):
        self.segments = list(segments)
        self.channels = channels
        self.last = last  # names of the nearest upstream producer layers

    @property
    def flat(self):
        return any(s.repeats > 1 for s in self.segments)


class _Builder:
    def __init__(self, model, opaque=None):
        self.model = model
        self.opaque = opaque or {}   # path -> why a composite layer could not be expanded
        self.layers, self.names = kg.leaf_layers(model)
        self.parent = []          # union-find over group ids
        self.size = []
        self.producers = []       # group id -> [layer names]
        self.members = []         # group id -> [Member]
        self.blocked = []         # group id -> reason or ""
        self.origin = []          # group id -> name for groups without producer
        self.splits = {}          # split root id -> (k, first id, second id)
        self.layer_group = {}     # producer layer name -> group id
        self.layer_size = {}      # producer layer name -> output channels
        self.first_input = {}     # weighted layer name -> ChannelMap of its first call
        self.approximate = set()  # layers through which pruning is not exact (LayerNormalization)
        self.inexact = set()      # group ids made approximate by a broadcast add
        self.nested = False

    # -- union-find -------------------------------------------------------------------------------------
    def new_group(self, size, origin, reason=""):
        gid = len(self.parent)
        self.parent.append(gid)
        self.size.append(int(size))
        self.producers.append([])
        self.members.append([])
        self.blocked.append(reason)
        self.origin.append(origin)
        return gid

    def find(self, g):
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        if b < a:
            a, b = b, a
        self.parent[b] = a
        self.producers[a] += [p for p in self.producers[b] if p not in self.producers[a]]
        self.members[a] += self.members[b]
        if not self.blocked[a]:
            self.blocked[a] = self.blocked[b]
        return a

    # -- splitting (a group whose channels meet two different layouts, e.g. conv + concat added) ---------
    def resolve(self, seg):
        """``seg`` as segments of current (unsplit) groups."""
        g = self.find(seg.group)
        if g not in self.splits:
            return [seg] if g == seg.group else [_Segment(g, seg.size, seg.offset, seg.mult, seg.period, seg.repeats)]
        k, g1, g2 = self.splits[g]
        first = _Segment(g1, k, seg.offset, seg.mult, seg.period, seg.repeats)
        second = _Segment(g2, seg.size - k, seg.offset + k * seg.mult, seg.mult, seg.period, seg.repeats)
        return self.resolve(first) + self.resolve(second)

    def segs(self, cmap):
        return [r for s in cmap.segments for r in self.resolve(s)]

    def split(self, g, k):
        """Split group ``g`` into channels ``[0, k)`` and ``[k, size)``; members and producers follow."""
        g = self.find(g)
        size = self.size[g]
        parts = []
        for lo, hi in ((0, k), (k, size)):
            gid = self.new_group(hi - lo, self.origin[g], self.blocked[g])
            self.producers[gid] = [(n, a + lo, a + hi) for n, a, _ in self.producers[g]]
            self.members[gid] = [
                Member(m.layer_name, m.weight_index, m.axis, offset=m.offset + lo * m.multiplier,
                       multiplier=m.multiplier, period=m.period, repeats=m.repeats, role=m.role,
                       weight_name=m.weight_name, shape=m.shape)
                for m in self.members[g]
            ]
            parts.append(gid)
        self.splits[g] = (k, parts[0], parts[1])
        self.members[g], self.producers[g] = [], []

    def align(self, a, b):
        """Split groups so that the segments of ``a`` and ``b`` start and end at the same channels."""
        for _ in range(4 * (len(a.segments) + len(b.segments)) + 8):
            sa, sb = self.segs(a), self.segs(b)
            cuts_a = {s.offset for s in sa} | {s.offset + s.size * s.mult for s in sa}
            cuts_b = {s.offset for s in sb} | {s.offset + s.size * s.mult for s in sb}
            missing = [(sa, c) for c in cuts_b - cuts_a] + [(sb, c) for c in cuts_a - cuts_b]
            if not missing:
                return True
            segs, cut = missing[0]
            seg = next((s for s in segs if s.offset < cut < s.offset + s.size * s.mult), None)
            if seg is None or (cut - seg.offset) % seg.mult:
                return False
            self.split(seg.group, (cut - seg.offset) // seg.mult)
        return False

    def block(self, cmap, reason):
        for s in self.segs(cmap):
            g = self.find(s.group)
            if not self.blocked[g]:
                self.blocked[g] = reason

    # -- channel maps ------------------------------------------------------------------------------------
    def fresh(self, channels, origin, reason=""):
        g = self.new_group(channels, origin, reason)
        return ChannelMap([_Segment(g, channels, 0, 1, channels, 1)], channels)

    def unify(self, a, b):
        """Union the groups of two channel maps with the same layout; False if the layouts differ."""
        if a.channels != b.channels:
            return False
        if a.flat or b.flat:
            if [s.key() for s in self.segs(a)] != [s.key() for s in self.segs(b)]:
                return False
        elif not self.align(a, b):
            return False
        sa_list, sb_list = self.segs(a), self.segs(b)
        if [s.key() for s in sa_list] != [s.key() for s in sb_list]:
            return False
        for sa, sb in zip(sa_list, sb_list):
            self.union(sa.group, sb.group)
        return True

    def add_member(self, cmap, layer_name, weight_index, axis, role, weight, extra_mult=1, blocks=1):
        """Attach ``weight`` axis ``axis`` of ``layer_name`` to every group of ``cmap``.

        ``blocks``: the weight axis holds that many consecutive copies of the channel axis (the gates of
        an LSTM kernel: ``[i | f | c | o]``).
        """
        shape = tuple(weight.shape)
        axis = axis % len(shape)
        for s in self.segs(cmap):
            m = Member(layer_name, weight_index, axis, offset=s.offset * extra_mult, multiplier=s.mult * extra_mult,
                       period=s.period * extra_mult, repeats=s.repeats * blocks, role=role,
                       weight_name=_short(weight), shape=shape)
            self.members[self.find(s.group)].append(m)

    def build(self):
        graph = kg.graph_of(self.model)
        self.nested = any(kg.is_graph_model(op) for op in graph.operations)
        inputs = []
        for x in graph.inputs:
            name = kg.input_name(x) or "input"
            inputs.append(self.fresh(_channels(x), name, f"model input {name!r}"))
        outputs = kg.walk(self.model, inputs, self.visit)
        classifiers = []
        for cmap in outputs:
            classifiers += sorted(p for p in cmap.last if p not in classifiers)
            self.block(cmap, "reaches a model output")
        return self.finish(classifiers)

    def finish(self, classifiers):
        groups = []
        for gid in range(len(self.parent)):
            if self.find(gid) != gid or gid in self.splits:
                continue
            spans = self.producers[gid]
            producers = [n for n, _, _ in spans]
            reason = self.blocked[gid]
            if not reason and not producers:
                reason = "no producer layer"
            if spans:
                n, lo, hi = spans[0]
                full = self.layer_size.get(n, hi - lo)
                name = n if (lo, hi) == (0, full) else f"{n}[{lo}:{hi}]"
            else:
                name = self.origin[gid]
            members = _dedupe(self.members[gid])
            group = ChannelGroup(name, self.size[gid], producers, members, prunable=not reason, reason=reason)
            group.exact = not any(m.layer_name in self.approximate for m in members) and \
                not any(self.find(x) == gid for x in self.inexact)
            groups.append(group)
        graph = DependencyGraph(self.model, groups, self.layers, classifiers, nested=self.nested)
        graph._names = self.names
        return graph

    # -- the visitor ---------------------------------------------------------------------------------
    def visit(self, node, values, prefix=""):
        op = node.operation
        in_maps = [values[id(x)] for x in node.input_tensors]
        name = self.names.get(id(op), prefix + op.name)
        handler = rules.handler_for(op)
        if handler is None and rules.is_identity(self.opaque.get(name)):
            handler = "identity"
        outs = None
        if handler is not None:
            outs = getattr(self, "h_" + handler)(op, name, node, in_maps)
        if outs is None:  # cannot reason about this op: block what it touches
            reason = rules.blocked_reason(op, name, self.opaque.get(name))
            for m in in_maps:
                self.block(m, reason)
            outs = [self.fresh(_channels(x), name, f"produced by {_describe(op, name)}, "
                                                   f"which kslim cannot prune") for x in node.outputs]
        if handler in ("producer", "attention") and outs is not None and len(outs) >= 1:
            last = frozenset([name])
        else:
            last = frozenset().union(*(m.last for m in in_maps))
        return [ChannelMap(m.segments, m.channels, last) for m in outs]

    def _weighted_call(self, name, in_map):
        """For a layer with weights called several times, unify inputs; returns False on first call."""
        if name in self.first_input:
            if not self.unify(self.first_input[name], in_map):
                return None
            return True
        self.first_input[name] = in_map
        return False

    # -- handlers (return list of output maps, or None to block) ---------------------------------------
    def h_input(self, op, name, node, in_maps):
        return [self.fresh(_channels(x), name, f"model input {name!r}") for x in node.outputs]

    def h_identity(self, op, name, node, in_maps):
        if len(in_maps) != 1 or len(node.outputs) != 1 or _channels(node.outputs[0]) != in_maps[0].channels:
            return None
        return [in_maps[0]]

    def h_spatial(self, op, name, node, in_maps):
        # pooling/padding/upsampling: channels stay on the last axis (only for real feature maps)
        if len(in_maps) != 1 or in_maps[0].flat:
            return None
        return self.h_identity(op, name, node, in_maps)

    def h_producer(self, op, name, node, in_maps):
        if len(in_maps) != 1:
            return None
        in_map = in_maps[0]
        seen = self._weighted_call(name, in_map)
        if seen is None:
            return None
        spec = rules.producer_spec(op)
        if spec is None:
            return None
        if not seen:
            for w_index, axis, role, mult in spec["inputs"]:
                self.add_member(in_map, name, w_index, axis, role, op.weights[w_index], extra_mult=mult)
            out = self.fresh(_channels(node.outputs[0]), name)
            g = out.segments[0].group
            self.producers[g].append((name, 0, self.size[g]))
            self.layer_group[name] = g
            self.layer_size[name] = self.size[g]
            for w_index, axis, role, *blocks in spec["outputs"]:
                self.add_member(out, name, w_index, axis, role, op.weights[w_index], blocks=blocks[0] if blocks else 1)
            return [out]
        g = self.layer_group[name]
        size = self.size[g]
        return [ChannelMap([_Segment(g, size, 0, 1, size, 1)], size)]

    def h_constant(self, op, name, node, in_maps):
        """A WeightHolder: its weight's last axis is a channel axis of whatever it is combined with."""
        w = op.weights[0]
        shape = tuple(w.shape)
        if not shape or shape[-1] == 1:
            return [self.fresh(1, name)]
        out = self.fresh(shape[-1], name)
        if name not in self.first_input:
            self.first_input[name] = out
            self.add_member(out, name, 0, len(shape) - 1, "carry", w)
            return [out]
        return [self.first_input[name]]

    def h_bidirectional(self, op, name, node, in_maps):
        """Bidirectional RNN: forward and backward units are pruned together (same unit indices), and
        the output holds them twice (``merge_mode="concat"``) or once (sum, mul, ave)."""
        if len(in_maps) != 1 or len(node.outputs) != 1 or op.merge_mode not in ("concat", "sum", "mul", "ave"):
            return None
        in_map = in_maps[0]
        seen = self._weighted_call(name, in_map)
        if seen is None:
            return None
        specs = [rules.producer_spec(part) for part in (op.forward_layer, op.backward_layer)]
        if any(sp is None for sp in specs):
            return None
        units = int(op.forward_layer.units)
        if int(op.backward_layer.units) != units:
            return None
        if not seen:
            g = self.new_group(units, name)
            self.producers[g].append((name, 0, units))
            self.layer_group[name] = g
            self.layer_size[name] = units
            unit_map = ChannelMap([_Segment(g, units, 0, 1, units, 1)], units)
            for part, sp in zip((op.forward_layer, op.backward_layer), specs):
                index = {i: _index_of(op, w) for i, w in enumerate(part.weights)}
                for w_index, axis, role, mult in sp["inputs"]:
                    w = part.weights[w_index]
                    self.add_member(in_map, name, index[w_index], axis, role, w, extra_mult=mult)
                for w_index, axis, role, *blocks in sp["outputs"]:
                    w = part.weights[w_index]
                    self.add_member(unit_map, name, index[w_index], axis, role, w, blocks=blocks[0] if blocks else 1)
        g = self.layer_group[name]
        if op.merge_mode == "concat":
            return [ChannelMap([_Segment(g, units, 0, 1, 2 * units, 1), _Segment(g, units, units, 1, 2 * units, 1)],
                               2 * units)]
        return [ChannelMap([_Segment(g, units, 0, 1, units, 1)], units)]

    def h_depthwise(self, op, name, node, in_maps):
        if len(in_maps) != 1 or in_maps[0].flat:
            return None
        in_map = in_maps[0]
        seen = self._weighted_call(name, in_map)
        if seen is None:
            return None
        m = int(op.depth_multiplier)
        segments = [_Segment(s.group, s.size, s.offset * m, s.mult * m, s.period * m, 1) for s in self.segs(in_map)]
        out = ChannelMap(segments, in_map.channels * m)
        if not seen:
            weights = op.weights
            k = _index_of(op, op.kernel)
            self.add_member(in_map, name, k, -2, "carry", weights[k])
            if op.bias is not None:
                b = _index_of(op, op.bias)
                self.add_member(out, name, b, 0, "carry", weights[b])
        return [out]

    def h_carry(self, op, name, node, in_maps):
        """A layer with one weight entry per channel (BatchNormalization, LayerNormalization, PReLU).

        Every weight must be per-channel on its last axis (PReLU's alpha may also vary over positions)
        or shared by all channels (last axis 1); a normalisation must normalise over the last axis only.
        """
        if len(in_maps) != 1:
            return None
        rank = len(node.input_tensors[0].shape)
        axis = getattr(op, "axis", -1)
        axes = [axis] if isinstance(axis, int) else list(axis)
        if hasattr(op, "axis") and [a % rank for a in axes] != [rank - 1]:
            return None
        in_map = in_maps[0]
        seen = self._weighted_call(name, in_map)
        if seen is None:
            return None
        if not rules.is_exact(op):
            self.approximate.add(name)
        if not seen:
            for i, w in enumerate(op.weights):
                shape = tuple(w.shape)
                if not shape or shape[-1] == 1:
                    continue  # shared by every channel
                if shape[-1] != in_map.channels:
                    return None
                self.add_member(in_map, name, i, len(shape) - 1, "carry", w)
        return [in_map]

    def h_attention(self, op, name, node, in_maps):
        """MultiHeadAttention: query/key/value kernels consume the inputs' channels (axis 0), the output
        projection produces a new channel space (its kernel's last axis and bias)."""
        parts = kg.attention_parts(op)
        if parts is None or len(node.outputs) < 1:
            return None
        roles = kg.attention_inputs(node)
        if roles is None:
            return None
        by_id = {id(t): m for t, m in zip(node.input_tensors, in_maps)}
        maps = {r: by_id.get(id(t)) for r, t in roles.items()}
        if any(m is None or m.flat for m in maps.values()):
            return None
        seen = self._weighted_call(name, maps["query"])
        if seen is None:
            return None
        if seen:
            g = self.layer_group[name]
            size = self.size[g]
            return [ChannelMap([_Segment(g, size, 0, 1, size, 1)], size)] + [
                self.fresh(_channels(x), name, f"attention scores of {name!r}") for x in node.outputs[1:]]
        weights = op.weights
        for role in ("query", "key", "value"):
            dense = parts[role]
            self.add_member(maps[role], name, _index_of(op, dense.kernel), 0, "input", dense.kernel)
        out_dense = parts["output"]
        out = self.fresh(_channels(node.outputs[0]), name)
        g = out.segments[0].group
        self.producers[g].append((name, 0, self.size[g]))
        self.layer_group[name] = g
        self.layer_size[name] = self.size[g]
        k = out_dense.kernel
        self.add_member(out, name, _index_of(op, k), len(k.shape) - 1, "filter", k)
        if getattr(out_dense, "bias", None) is not None:
            self.add_member(out, name, _index_of(op, out_dense.bias), 0, "bias", out_dense.bias)
        del weights
        return [out] + [self.fresh(_channels(x), name, f"attention scores of {name!r}") for x in node.outputs[1:]]

    def h_merge(self, op, name, node, in_maps):
        """Element-wise ops: inputs with the full channel count share groups; size-1 inputs broadcast."""
        if len(node.outputs) != 1:
            return None
        out_c = _channels(node.outputs[0])
        if not rules.merge_constants_ok(node, out_c):
            return None
        full = [m for m in in_maps if m.channels == out_c]
        if not full or any(m.channels not in (out_c, 1) for m in in_maps):
            return None
        # broadcasting a (N, C) tensor against a feature map is fine; a flattened layout is not
        for m in full[1:]:
            if not self.unify(full[0], m):
                return None
        if type(op).__name__ in ("Add", "Subtract") and len(full) < len(in_maps):
            # a broadcast tensor (a learnable scalar bias) is added to every channel: a removed channel
            # was not zero after it, so pruning the group is approximate
            self.inexact.update(s.group for s in self.segs(full[0]))
        return [full[0]]

    def h_concat(self, op, name, node, in_maps):
        if len(node.outputs) != 1:
            return None
        rank = len(node.outputs[0].shape)
        axis = op.axis if hasattr(op, "axis") else rules.op_axis(node)
        if axis is None:
            return None
        if axis % rank != rank - 1:
            return self.h_merge(op, name, node, in_maps)
        segments, offset = [], 0
        for m in in_maps:
            if m.flat:
                return None
            for s in self.segs(m):
                segments.append(_Segment(s.group, s.size, s.offset + offset, s.mult, 0, 1))
            offset += m.channels
        for s in segments:
            s.period = offset
        return [ChannelMap(segments, offset)]

    def h_flatten(self, op, name, node, in_maps):
        if len(in_maps) != 1:
            return None
        in_map, x = in_maps[0], node.input_tensors[0]
        if len(x.shape) <= 2:
            return [in_map]
        if in_map.flat or getattr(op, "data_format", "channels_last") != "channels_last":
            return None
        spatial = x.shape[1:-1]
        if any(d is None for d in spatial):
            return None
        reps = int(math.prod(spatial))
        c = in_map.channels
        return [ChannelMap([_Segment(s.group, s.size, s.offset, s.mult, c, reps) for s in self.segs(in_map)], c * reps)]

    def h_reshape(self, op, name, node, in_maps):
        if len(in_maps) != 1 or len(node.outputs) != 1:
            return None
        x, y = node.input_tensors[0], node.outputs[0]
        if not in_maps[0].flat and len(x.shape) > 1 and len(y.shape) > 1 and x.shape[-1] is not None and \
                x.shape[-1] == y.shape[-1]:
            return [in_maps[0]]       # the last axis keeps its meaning (row-major), whatever the other axes
        if any(d is None for d in x.shape[1:]) or any(d is None for d in y.shape[1:]):
            return None
        if in_maps[0].flat:
            # (N, C*S) -> anything: only an identity reshape is safe
            return [in_maps[0]] if tuple(x.shape[1:]) == tuple(y.shape[1:]) else None
        if x.shape[-1] == y.shape[-1]:
            return [in_maps[0]]       # the last axis keeps its meaning (row-major)
        if len(y.shape) == 2:
            return self.h_flatten(op, name, node, in_maps)
        return None

    def h_permute(self, op, name, node, in_maps):
        if len(in_maps) != 1:
            return None
        if hasattr(op, "dims"):          # keras.layers.Permute: dims exclude the batch axis, 1-based
            keeps_last = tuple(op.dims)[-1] == len(op.dims)
        else:                            # keras.ops.transpose: axes include the batch axis
            axes = getattr(op, "axes", None)
            rank = len(node.input_tensors[0].shape)
            keeps_last = axes is not None and len(axes) == rank and axes[-1] % rank == rank - 1 and axes[0] == 0
        return [in_maps[0]] if keeps_last else None


_index_of = weight_index


def _channels(x):
    shape = x.shape
    if len(shape) == 0:
        return 1
    c = shape[-1]
    return int(c) if c is not None else 0


def _short(weight):
    return getattr(weight, "name", None) or str(getattr(weight, "path", "")).split("/")[-1]


def _describe(op, name):
    return f"{name!r} ({type(op).__name__})"


def _dedupe(members):
    seen, out = set(), []
    for m in members:
        key = (m.layer_name, m.weight_index, m.axis, m.offset, m.multiplier, m.period, m.repeats)
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out


def build_dependency_graph(model, expand=True):
    """Build the :class:`~kslim.graph.DependencyGraph` of a functional or Sequential Keras 3 model.

    Composite layers (a user or keras-hub layer whose ``call()`` runs Keras layers and ``keras.ops``)
    are seen through: the graph is built on ``graph.model``, the model with each such layer replaced
    by a nested Functional model of the same name (:func:`kslim.graph.keras_graph.expand_composites`;
    ``graph.source`` is the model you passed). Layers inside nested models are named by their path
    (``"backbone/conv1"``); a bare name unique at every depth is accepted wherever a name is asked for.
    A composite that cannot be expanded stays opaque, with the reason in ``graph.opaque``.

    Args:
        model: a built functional or Sequential ``keras.Model``.
        expand: False keeps composite layers opaque.

    Returns:
        A :class:`~kslim.graph.DependencyGraph`; ``graph.groups`` lists every channel space.

    Raises:
        ModelError: subclassed model or Sequential without an input shape.

    Example:
        >>> import keras
        >>> from kslim.graph import build_dependency_graph
        >>> inp = keras.Input((8, 8, 3))
        >>> a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inp)
        >>> b = keras.layers.Conv2D(4, 1, name="b")(inp)
        >>> out = keras.layers.Conv2D(2, 1, name="head")(keras.layers.Add()([a, b]))
        >>> g = build_dependency_graph(keras.Model(inp, out))
        >>> [(grp.name, grp.layer_names, grp.prunable) for grp in g.groups if grp.layer_names]
        [('a', ['a', 'b'], True), ('head', ['head'], False)]
    """
    from kslim.validation import check_model

    check_model(model, "build_dependency_graph()")
    kg.graph_of(model)  # a clear error for subclassed models before anything else
    opaque = {}
    work = kg.expand_composites(model, known=rules.is_known, reasons=opaque) if expand else model
    graph = _Builder(work, opaque).build()
    graph.source = model
    graph.opaque = opaque
    return graph


__all__ = ["build_dependency_graph", "ChannelMap"]
