"""Lottery Ticket: iterative magnitude pruning with weight rewinding (Frankle & Carbin 2019; NNI's LotteryTicketPruner).

Each of ``iterations`` rounds trains the model (your ``train_fn``, with the masks of the previous rounds
held at zero through :class:`~kslim.prune.gradual.VariableMasks`), zeroes the smallest-magnitude
weights of every kernel up to that round's sparsity ``1 - (1 - sparsity) ** (round / iterations)``
(masks only grow), and **rewinds** every weight of the model to the saved initial values (or to the
``rewind_weights`` you give: *late rewinding*, Frankle et al. 2020), masked entries zero. At the end the
model holds the winning ticket: the initial weights under the final mask, untrained; train it with
:meth:`LotteryTicket.train` (the mask held) to get the sparse network.

Resumable like :func:`kslim.prune.sensitivity`: after each round the state is written atomically to
``checkpoint`` (JSON: model architecture, settings, rounds with their metric) and ``checkpoint + ".npz"``
(the rewind weights and the masks). Started again with the same arguments after an interruption, it
loads the saved rewind weights (whatever the model's current weights) and continues with the next
round; a checkpoint of another architecture or other settings is refused with the reason.

Example:
    >>> import keras, numpy as np
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="fc1"), keras.layers.Dense(2)])
    >>> m.compile("sgd", "mse")
    >>> init = [w.copy() for w in m.get_weights()]
    >>> train = lambda mm: mm.fit(np.ones((16, 8)), np.ones((16, 2)), epochs=1, verbose=0)
    >>> ticket = lottery_ticket(m, train, sparsity=0.75, iterations=2, checkpoint=None, verbose=0)
    >>> [round(r.sparsity, 2) for r in ticket.rounds]
    [0.5, 0.75]
    >>> bool(np.array_equal(m.get_layer("fc1").kernel.numpy(), init[0] * ticket.masks["fc1/kernel"]))
    True
"""

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kslim._io import atomic_write_bytes, atomic_write_json, read_json
from kslim.errors import KslimFileError, KslimTypeError, KslimValueError, ModelError
from kslim.validation import check_model
from kslim.prune.base import _check_ratio
from kslim.prune.gradual import VariableMasks
from kslim.prune.unstructured import magnitude_mask, prunable_weights

CHECKPOINT_FORMAT = "kslim.lottery_ticket/1"


@dataclass
class LotteryRound:
    """One round: its index (1-based), the sparsity of the mask after it, and ``eval_fn``'s metric of
    the model trained in it (None without ``eval_fn``)."""

    iteration: int
    sparsity: float
    metric: float = None


@dataclass
class LotteryTicket:
    """The result of :func:`lottery_ticket`: the final masks, the rounds, and the rewind weights."""

    masks: dict
    rounds: list = field(default_factory=list)
    rewind_weights: list = field(default_factory=list, repr=False)

    @property
    def sparsity(self):
        """Overall fraction of masked entries of the pruned kernels."""
        total = sum(m.size for m in self.masks.values())
        return float(sum(m.size - m.sum() for m in self.masks.values()) / total) if total else 0.0

    def train(self, model, train_fn):
        """Run ``train_fn(model)`` with the masks held at zero (the ticket's final training)."""
        return _masked_training(model, self.masks, train_fn)


def _masked_training(model, masks, train_fn):
    weights = prunable_weights(model)
    vm = VariableMasks()
    arrays = {vm.track(weights[n]): m for n, m in masks.items()}
    vm.assign(arrays)
    vm.install(model)
    try:
        return train_fn(model)
    finally:
        vm.remove(model)


def _rewind(model, rewind_weights, masks):
    model.set_weights(rewind_weights)
    weights = prunable_weights(model)
    for n, m in masks.items():
        var = weights[n]
        var.assign(np.asarray(var.numpy()) * m.astype(var.dtype))


def _save(checkpoint, state, rewind_weights, masks):
    buf = io.BytesIO()
    arrays = {f"rewind/{i}": w for i, w in enumerate(rewind_weights)}
    arrays.update({f"mask/{n}": m.astype(np.uint8) for n, m in masks.items()})
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(_npz(checkpoint), buf.getvalue())    # arrays first: the JSON names a complete state
    atomic_write_json(checkpoint, state)


def _npz(checkpoint):
    return Path(f"{checkpoint}.npz")


def _load(checkpoint, fingerprint, settings):
    path = Path(checkpoint)
    if not path.exists():
        return None
    try:
        state = read_json(path, "Lottery ticket checkpoint")
    except OSError as e:
        raise KslimFileError(f"{e} Delete it or choose another checkpoint.") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise KslimFileError(f"{path} is not a kslim lottery-ticket checkpoint (no format {CHECKPOINT_FORMAT!r}); "
                             "refusing to overwrite it: choose another checkpoint path.")
    if state["model"]["architecture"] != fingerprint["architecture"]:
        raise ModelError(f"Checkpoint {path} was made for another model ({state['model']['name']!r}, other layers) "
                         f"than {fingerprint['name']!r}. Delete it or use another checkpoint path.")
    if state["settings"] != settings:
        diff = sorted(k for k in settings if state["settings"].get(k) != settings[k])
        raise KslimValueError(f"Checkpoint {path} was made with other settings ({', '.join(diff)}: "
                              f"{ {k: state['settings'].get(k) for k in diff} }). Use the same ones or another path.")
    try:
        with np.load(_npz(path)) as z:
            rewind = [z[f"rewind/{i}"] for i in range(len([k for k in z.files if k.startswith("rewind/")]))]
            masks = {k[len("mask/"):]: z[k].astype("float32") for k in z.files if k.startswith("mask/")}
    except (OSError, ValueError, KeyError) as e:
        raise KslimFileError(f"{_npz(path)} (the arrays of checkpoint {path}) is missing or unreadable: {e}. "
                             "Delete the checkpoint to start again.") from e
    return state, rewind, masks


def lottery_ticket(model, train_fn, sparsity=0.8, iterations=3, eval_fn=None, layers=None, rewind_weights=None,
                   checkpoint="lottery.json", verbose=1):
    """Find a winning ticket of ``model`` by iterative magnitude pruning with rewinding (see the module doc).

    Args:
        model: a built, compiled ``keras.Model``; it holds the ticket (rewound, masked) on return.
        train_fn: ``callable(model)`` training it in place (e.g. ``lambda m: m.fit(x, y, epochs=2)``).
        sparsity: final fraction of zeros of each pruned kernel, in (0, 1).
        iterations: rounds of train / prune / rewind.
        eval_fn: optional ``callable(model) -> float`` recorded after each round's training.
        layers: restrict pruning to these layers (default every kernel, see
            :func:`kslim.prune.unstructured.prunable_weights`).
        rewind_weights: the weights to rewind to (``model.get_weights()`` after a few steps); default
            the model's weights when called.
        checkpoint: JSON path of the resumable state (``None``: none kept).
        verbose: 1 prints each round.

    Returns:
        a :class:`LotteryTicket`.
    """

    from kslim.prune.sensitivity import model_fingerprint

    check_model(model, "lottery_ticket()")
    if not callable(train_fn):
        raise KslimTypeError(f"train_fn must be callable(model), got {type(train_fn).__name__}.")
    sparsity = _check_ratio(sparsity, "sparsity")
    if sparsity <= 0:
        raise KslimValueError("sparsity must be in (0, 1), got 0.")
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise KslimValueError(f"iterations must be an integer >= 1, got {iterations!r}.")
    names = list(prunable_weights(model, layers))
    rewind = [np.array(w) for w in (rewind_weights if rewind_weights is not None else model.get_weights())]
    if [w.shape for w in rewind] != [tuple(w.shape) for w in model.weights]:
        raise KslimValueError("rewind_weights must be model.get_weights() of this model (same shapes, same order).")
    fingerprint = model_fingerprint(model)
    settings = {"sparsity": sparsity, "iterations": int(iterations), "weights": names,
                "late_rewinding": rewind_weights is not None}
    rounds, masks = [], {n: np.ones(tuple(prunable_weights(model)[n].shape), "float32") for n in names}
    loaded = _load(checkpoint, fingerprint, settings) if checkpoint else None
    if loaded is not None:
        state, rewind, masks = loaded
        rounds = [LotteryRound(**r) for r in state["rounds"]]
        _rewind(model, rewind, masks)
        if verbose:
            print(f"lottery_ticket: resuming after round {len(rounds)} of {iterations} from {checkpoint}")
    for it in range(len(rounds) + 1, int(iterations) + 1):
        _masked_training(model, masks, train_fn)
        metric = None
        if eval_fn is not None:
            metric = float(np.asarray(eval_fn(model)).reshape(()))
        target = 1.0 - (1.0 - sparsity) ** (it / iterations)
        weights = prunable_weights(model, layers)
        masks = {n: magnitude_mask(weights[n].numpy(), target, masks[n]) for n in names}
        ticket = LotteryTicket(masks)
        rounds.append(LotteryRound(it, ticket.sparsity, metric))
        _rewind(model, rewind, masks)
        if checkpoint:
            state = {"format": CHECKPOINT_FORMAT, "model": {"name": fingerprint["name"],
                                                             "architecture": fingerprint["architecture"]},
                     "settings": settings, "rounds": [vars(r) for r in rounds]}
            _save(checkpoint, state, rewind, masks)
        if verbose:
            extra = f", metric {metric:.4f}" if metric is not None else ""
            print(f"lottery_ticket: round {it}/{iterations}: sparsity {rounds[-1].sparsity:.3f}{extra}")
    return LotteryTicket(masks, rounds, rewind)


__all__ = ["lottery_ticket", "LotteryTicket", "LotteryRound", "CHECKPOINT_FORMAT"]
