"""Recurrent layers unrolled into a graph of Dense layers and element-wise ops, one time step after another.

TFLite runs a Keras LSTM/GRU/SimpleRNN as a loop of float ops. For quantization-aware training,
:func:`unroll` rewrites one call of such a layer (or of a ``Bidirectional`` of them) of *fixed sequence
length* into a Functional model of the same name that computes the same thing from parts QAT quantizes
one by one, and that TFLite runs as int8 FULLY_CONNECTED / ADD / MUL / SUB / LOGISTIC / TANH / UNPACK /
PACK ops:

* the input projection of every step at once, ``Dense(gates * units, name="kernel")`` on the whole
  sequence (the cell's kernel and input bias), split per step (``keras.ops.unstack``);
* the recurrent projection ``Dense(gates * units, name="recurrent_kernel")``, one layer called at every
  step after the first (weights shared over time, as in the cell);
* per step ``t``, the gates and the state update as ``Add``/``Multiply``/``Subtract``/``Activation``
  layers named ``t{t}_...``, in the cell's own order (see ``LSTMCell.call``/``GRUCell.call``).

The state starts at zero, as in Keras, so the first step has no recurrent term (a GRU with
``reset_after=True`` has one, its recurrent bias: the ``z``/``r`` parts are folded into the input
bias, and the reset gate's product with the ``h`` part is a frozen diagonal ``Dense`` named
``reset_bias``). The unrolled model is checked to compute what the layer computes on a random batch.

Differences when it is *trained* (QAT fine-tuning): input dropout is one ``Dropout`` on the input
sequence and recurrent dropout one ``Dropout`` on the state of each step (Keras draws one mask per
gate, shared over the steps); a GRU's first-step reset bias stays frozen.

Not unrolled (:class:`~kslim.graph.keras_graph.NotExpandable` with the reason): a sequence length
that is not fixed or exceeds :data:`MAX_STEPS`, an input mask, an initial state, ``stateful=True``,
a subclass that overrides ``call``, a cell other than ``LSTMCell``/``GRUCell``/``SimpleRNNCell``.

Example:
    >>> import keras, numpy as np
    >>> m = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4, name="lstm")])
    >>> lstm = m.get_layer("lstm")
    >>> sub = unroll(lstm, kg.layer_nodes(lstm)[0])
    >>> sub.name, len(sub.outputs)
    ('lstm', 1)
    >>> x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")
    >>> bool(np.allclose(sub(x), m(x), atol=1e-5))
    True
"""

import numpy as np

import keras

from kslim.graph import keras_graph as kg

#: the longest sequence :func:`unroll` writes out step by step
MAX_STEPS = 512

_GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}


def _kind(layer):
    """``"LSTM"``/``"GRU"``/``"SimpleRNN"`` of a plain Keras RNN layer, or raise NotExpandable."""
    L = keras.layers
    for name in _GATES:
        cls, cell = getattr(L, name), getattr(L, name + "Cell")
        if isinstance(layer, cls):
            if type(layer).call is not cls.call:
                raise kg.NotExpandable(f"{type(layer).__name__} overrides call(); kslim cannot know its maths")
            if type(layer.cell) is not cell:
                raise kg.NotExpandable(f"its cell is a {type(layer.cell).__name__}, not a {cell.__name__}")
            return name
    raise kg.NotExpandable(f"{type(layer).__name__} is not an LSTM, GRU or SimpleRNN")


def _check_call(layer, node):
    """The input KerasTensor of ``node`` (a call of ``layer``), or raise NotExpandable."""
    args, kwargs = kg.node_arguments(node)
    tensors = kg.tensor_args(args, kwargs)
    if kg.keras_mask(tensors[0]) is not None or kwargs.get("mask") is not None:
        raise kg.NotExpandable("its input carries a Keras mask (Embedding(mask_zero=True), Masking), which the "
                               "unrolled steps would ignore")
    if len(tensors) != 1:
        raise kg.NotExpandable("it is called with an initial state, which kslim does not unroll")
    x = tensors[0]
    if len(x.shape) != 3 or x.shape[-1] is None:
        raise kg.NotExpandable(f"its input has shape {tuple(x.shape)}; kslim unrolls (batch, steps, features) inputs")
    steps = x.shape[1]
    if steps is None:
        raise kg.NotExpandable(f"its input has no fixed sequence length (shape {tuple(x.shape)}): give the model "
                               f"input a fixed length (keras.Input((steps, ...))) to quantize it")
    if steps > MAX_STEPS:
        raise kg.NotExpandable(f"its sequence has {steps} steps; kslim unrolls at most {MAX_STEPS}")
    for part in _parts(layer):
        if part.stateful:
            raise kg.NotExpandable("it is stateful (its state carries over between batches)")
    return x


def _parts(layer):
    return [layer.forward_layer, layer.backward_layer] if isinstance(layer, keras.layers.Bidirectional) else [layer]


class _Steps:
    """Writes the unrolled steps of one RNN layer ``rnn`` into the graph being built (names prefixed)."""

    def __init__(self, rnn, prefix, aligned=False):
        self.rnn, self.kind, self.prefix = rnn, _kind(rnn), prefix
        self.cell, self.units = rnn.cell, int(rnn.cell.units)
        self.aligned = aligned   # a go_backwards sequence in input order (as Bidirectional returns it)

    def _name(self, name):
        return self.prefix + name

    def _act(self, fn, x, name):
        return keras.layers.Activation(fn, name=self._name(name))(x)

    def _layers(self, features):
        """The input and recurrent projections, with the cell's weights."""
        cell, g, u = self.cell, _GATES[self.kind], self.units
        kernel, rkernel = np.asarray(cell.kernel), np.asarray(cell.recurrent_kernel)
        bias = np.asarray(cell.bias) if cell.use_bias else None
        in_bias = rec_bias = None
        if bias is not None and bias.ndim == 2:  # GRU reset_after: [input bias, recurrent bias]
            in_bias, rec_bias = bias[0].copy(), bias[1].copy()
            in_bias[:2 * u] += rec_bias[:2 * u]  # z and r add both biases: one bias does
            rec_bias[:2 * u] = 0.0
        elif bias is not None:
            in_bias = bias
        self.first_reset = rec_bias[2 * u:] if rec_bias is not None and np.any(rec_bias[2 * u:]) else None
        self.x_proj = keras.layers.Dense(g * u, use_bias=in_bias is not None, name=self._name("kernel"))
        self.x_proj.build((None, features))
        self.x_proj.set_weights([kernel] + ([in_bias] if in_bias is not None else []))
        if self.kind == "GRU" and not cell.reset_after:   # the h part multiplies r * h first
            self.h_proj = keras.layers.Dense(2 * u, use_bias=False, name=self._name("recurrent_kernel"))
            self.h_proj.build((None, u))
            self.h_proj.set_weights([rkernel[:, :2 * u]])
            self.rh_proj = keras.layers.Dense(u, use_bias=False, name=self._name("recurrent_kernel_h"))
            self.rh_proj.build((None, u))
            self.rh_proj.set_weights([rkernel[:, 2 * u:]])
        else:
            self.h_proj = keras.layers.Dense(g * u, use_bias=rec_bias is not None,
                                             name=self._name("recurrent_kernel"))
            self.h_proj.build((None, u))
            self.h_proj.set_weights([rkernel] + ([rec_bias] if rec_bias is not None else []))
        if self.first_reset is not None:
            self.reset_bias = keras.layers.Dense(u, use_bias=False, trainable=False, name=self._name("reset_bias"))
            self.reset_bias.build((None, u))
            self.reset_bias.set_weights([np.diag(self.first_reset).astype("float32")])
        self.rec_dropout = (keras.layers.Dropout(cell.recurrent_dropout, name=self._name("recurrent_dropout"))
                            if cell.recurrent_dropout else None)

    def run(self, x):
        """``(outputs per original time index, final states)`` of the RNN on the sequence ``x``."""
        cell = self.cell
        self._layers(x.shape[-1])
        if cell.dropout:
            x = keras.layers.Dropout(cell.dropout, name=self._name("dropout"))(x)
        xs = keras.ops.unstack(self.x_proj(x), axis=1)
        order = range(len(xs) - 1, -1, -1) if self.rnn.go_backwards else range(len(xs))
        h = c = None
        outputs = {}
        for step, t in enumerate(order):
            h_in = h if self.rec_dropout is None or h is None else self.rec_dropout(h)
            h, c = getattr(self, "_" + self.kind.lower())(step, xs[t], h, h_in, c)
            outputs[t] = h
        if self.rnn.go_backwards and self.rnn.return_sequences and not self.aligned:
            outputs = {len(xs) - 1 - t: v for t, v in outputs.items()}  # a plain go_backwards RNN: processing order
        return [outputs[t] for t in range(len(xs))], ([h, c] if self.kind == "LSTM" else [h])

    def _add(self, a, b, name):
        return keras.layers.Add(name=self._name(name))([a, b])

    def _mul(self, a, b, name):
        return keras.layers.Multiply(name=self._name(name))([a, b])

    def _gates(self, z, count, used=None):
        """``z`` split into ``count`` gate blocks; only the ``used`` ones (indices) when not all are read:
        TFLite leaves a SPLIT with an unread output in float, so those are sliced out instead."""
        if used is None:
            return keras.ops.split(z, count, axis=-1)
        u = self.units
        return [z[..., i * u:(i + 1) * u] if i in used else None for i in range(count)]

    def _lstm(self, step, x_t, h, h_in, c):
        cell, n = self.cell, f"t{step}_"
        z = x_t if h is None else self._add(x_t, self.h_proj(h_in), n + "z")
        zi, zf, zc, zo = self._gates(z, 4, used=(0, 2, 3) if c is None else None)
        i = self._act(cell.recurrent_activation, zi, n + "i")
        g = self._act(cell.activation, zc, n + "g")
        o = self._act(cell.recurrent_activation, zo, n + "o")
        ig = self._mul(i, g, n + "ig")
        if c is None:
            c = ig
        else:
            f = self._act(cell.recurrent_activation, zf, n + "f")
            c = self._add(self._mul(f, c, n + "fc"), ig, n + "c")
        h = self._mul(o, self._act(cell.activation, c, n + "c_act"), n + "h")
        return h, c

    def _gru(self, step, x_t, h, h_in, c):
        cell, n, u = self.cell, f"t{step}_", self.units
        first = h is None
        xz, xr, xh = self._gates(x_t, 3, used=(0, 2) if first and self.first_reset is None else None)
        if first:
            z = self._act(cell.recurrent_activation, xz, n + "z")
            if self.first_reset is not None:
                r = self._act(cell.recurrent_activation, xr, n + "r")
                xh = self._add(xh, self.reset_bias(r), n + "xh")
            hh = self._act(cell.activation, xh, n + "hh")
            return keras.layers.Subtract(name=self._name(n + "h"))([hh, self._mul(z, hh, n + "zhh")]), None
        if cell.reset_after:
            rz, rr, rh = keras.ops.split(self.h_proj(h_in), 3, axis=-1)
            z = self._act(cell.recurrent_activation, self._add(xz, rz, n + "zz"), n + "z")
            r = self._act(cell.recurrent_activation, self._add(xr, rr, n + "rr"), n + "r")
            hh = self._act(cell.activation, self._add(xh, self._mul(r, rh, n + "rh"), n + "hz"), n + "hh")
        else:
            rz, rr = keras.ops.split(self.h_proj(h_in), 2, axis=-1)
            z = self._act(cell.recurrent_activation, self._add(xz, rz, n + "zz"), n + "z")
            r = self._act(cell.recurrent_activation, self._add(xr, rr, n + "rr"), n + "r")
            hh = self._act(cell.activation, self._add(xh, self.rh_proj(self._mul(r, h_in, n + "rh")), n + "hz"),
                           n + "hh")
        # h = z * h_prev + (1 - z) * hh, written without a constant: hh + z * (h_prev - hh)
        diff = keras.layers.Subtract(name=self._name(n + "dh"))([h, hh])
        return self._add(hh, self._mul(z, diff, n + "zdh"), n + "h"), None

    def _simplernn(self, step, x_t, h, h_in, c):
        n = f"t{step}_"
        z = x_t if h is None else self._add(x_t, self.h_proj(h_in), n + "z")
        return self._act(self.cell.activation, z, n + "h"), None


def _sequence(hs):
    return keras.ops.stack(hs, axis=1) if len(hs) > 1 else keras.ops.expand_dims(hs[0], 1)


def _rnn_outputs(steps, x):
    hs, states = steps.run(x)
    return (_sequence(hs) if steps.rnn.return_sequences else states[0]), states


def _merge(mode, a, b, name):
    L = keras.layers
    merge = {"concat": L.Concatenate, "sum": L.Add, "mul": L.Multiply, "ave": L.Average}
    return merge[mode](name=name)([a, b])


def unroll(layer, node):
    """A Functional model (named like ``layer``) computing the call at ``node`` step by step (see the
    module docstring); ``layer`` is an LSTM, GRU, SimpleRNN or a Bidirectional of them.

    Raises:
        NotExpandable: with the reason (not of fixed length, masked, stateful ...).
    """
    x = _check_call(layer, node)
    inp = keras.Input(shape=tuple(x.shape[1:]), dtype=x.dtype, name=f"{layer.name}_input")
    if isinstance(layer, keras.layers.Bidirectional):
        if layer.merge_mode not in ("concat", "sum", "mul", "ave"):
            raise kg.NotExpandable(f"its merge_mode is {layer.merge_mode!r}; kslim unrolls concat, sum, mul, ave")
        fwd, bwd = _Steps(layer.forward_layer, "forward_"), _Steps(layer.backward_layer, "backward_", aligned=True)
        (yf, sf), (yb, sb) = _rnn_outputs(fwd, inp), _rnn_outputs(bwd, inp)
        outputs = [_merge(layer.merge_mode, yf, yb, "merge")]
        if layer.return_state:
            outputs += sf + sb
    else:
        steps = _Steps(layer, "")
        y, states = _rnn_outputs(steps, inp)
        outputs = [y] + (states if layer.return_state else [])
    sub = keras.Model(inp, outputs if len(outputs) > 1 else outputs[0], name=layer.name)
    if not kg.same_outputs(layer, sub, node):
        raise kg.NotExpandable("its unrolled graph does not compute what the layer computes")
    return sub


__all__ = ["MAX_STEPS", "unroll"]
