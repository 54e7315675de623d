"""Lottery Ticket (kslim.prune.lottery): rounds of train / magnitude prune / rewind to the saved initial
weights, masks held during training, resumable from its checkpoint."""

import keras
import numpy as np
import pytest

from kslim.errors import KslimValueError, ModelError
from kslim.prune.lottery import lottery_ticket


def mlp(seed=0, hidden=16):
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(hidden, activation="relu", name="fc1"),
                          keras.layers.Dense(3, name="fc2")], name="mlp")
    m.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


X = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
Y = (X[:, 0] > 0).astype("int32") + (X[:, 1] > 0)


def train(m):
    m.fit(X, Y, batch_size=16, epochs=2, shuffle=False, verbose=0)


def test_rounds_rewind_to_the_initial_weights_and_hold_masks():
    model = mlp()
    init = [w.copy() for w in model.get_weights()]
    seen = []

    def eval_fn(m):   # called after each round's training: the previous round's zeros must still be zeros
        seen.append(m.get_layer("fc1").kernel.numpy().copy())
        return float(m.evaluate(X, Y, verbose=0))

    ticket = lottery_ticket(model, train, sparsity=0.75, iterations=2, eval_fn=eval_fn, checkpoint=None, verbose=0)
    assert [r.iteration for r in ticket.rounds] == [1, 2]
    assert [round(r.sparsity, 3) for r in ticket.rounds] == [0.5, 0.75]
    assert all(r.metric is not None for r in ticket.rounds)
    mask = ticket.masks["fc1/kernel"]
    assert mask.sum() == 96 * 0.25
    # the model holds the ticket: the initial weights under the final mask (biases rewound too)
    np.testing.assert_array_equal(model.get_layer("fc1").kernel.numpy(), init[0] * mask)
    np.testing.assert_array_equal(model.get_layer("fc1").bias.numpy(), init[1])
    assert not np.array_equal(seen[0], init[0])            # it did train
    assert np.all(seen[1][np.isclose(seen[0], 0) & (mask == 0)] == 0)
    # the final training keeps the mask
    ticket.train(model, train)
    assert np.all(model.get_layer("fc1").kernel.numpy()[mask == 0] == 0)
    assert model.get_layer("fc1").kernel.constraint is None


def test_resume_from_checkpoint_after_an_interruption(tmp_path):
    ref = lottery_ticket(mlp(), train, sparsity=0.8, iterations=3, checkpoint=None, verbose=0)
    ck = tmp_path / "lt.json"
    calls = []

    def killed_in_round_2(m):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        train(m)

    with pytest.raises(KeyboardInterrupt):
        lottery_ticket(mlp(), killed_in_round_2, sparsity=0.8, iterations=3, checkpoint=ck, verbose=0)
    assert ck.exists() and (tmp_path / "lt.json.npz").exists()
    fresh = mlp(seed=5)                        # other initial weights: the saved ones are rewound to
    ticket = lottery_ticket(fresh, train, sparsity=0.8, iterations=3, checkpoint=ck, verbose=0)
    assert [r.iteration for r in ticket.rounds] == [1, 2, 3]
    for name in ref.masks:
        np.testing.assert_array_equal(ticket.masks[name], ref.masks[name])
    np.testing.assert_array_equal(fresh.get_layer("fc2").bias.numpy(), mlp().get_layer("fc2").bias.numpy())
    # finished: running again trains nothing
    ticket2 = lottery_ticket(mlp(seed=6), lambda m: 1 / 0, sparsity=0.8, iterations=3, checkpoint=ck, verbose=0)
    assert len(ticket2.rounds) == 3
    with pytest.raises(KslimValueError, match="other settings \\(sparsity"):
        lottery_ticket(mlp(), train, sparsity=0.5, iterations=3, checkpoint=ck, verbose=0)
    with pytest.raises(ModelError, match="another model"):
        lottery_ticket(mlp(hidden=8), train, sparsity=0.8, iterations=3, checkpoint=ck, verbose=0)


def test_bad_arguments():
    with pytest.raises(KslimValueError, match="iterations"):
        lottery_ticket(mlp(), train, iterations=0, checkpoint=None)
    with pytest.raises(KslimValueError, match="sparsity"):
        lottery_ticket(mlp(), train, sparsity=1.0, checkpoint=None)
    with pytest.raises(KslimValueError, match="rewind_weights"):
        lottery_ticket(mlp(), train, rewind_weights=[np.zeros(3)], checkpoint=None)
