"""suggest_round_to: the same MACs target with each channel multiple, the fastest chosen."""

import pytest

import kslim
from kslim.errors import KslimValueError
from kslim.prune import RoundToChoice, suggest_round_to


def _ragged_penalty(model):
    """A stand-in latency: MACs, plus a large cost per conv/dense whose channel count is not a multiple of 8."""
    import keras

    ragged = sum(1 for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
                 and layer.name != "logits" and int(layer.kernel.shape[-1]) % 8)
    return kslim.flops(model).macs / 1e6 + 10.0 * ragged


def test_the_multiple_that_runs_fastest_is_chosen_at_the_same_macs_target():
    model = kslim.models.vgg(width=0.25)
    choice = suggest_round_to(model, 0.4, candidates=[1, 8], latency_fn=_ragged_penalty)
    assert isinstance(choice, RoundToChoice) and choice.round_to == 8
    assert [r["round_to"] for r in choice.rows] == [1, 8]
    for r in choice.rows:
        assert r["reduction"] >= 0.4 and r["overshoot"] == pytest.approx(r["reduction"] - 0.4)
    assert choice.rows[0]["latency_ms"] > choice.rows[1]["latency_ms"]
    assert choice.speedup() == choice.latency_before / choice.rows[1]["latency_ms"]


@pytest.mark.slow
def test_measured_on_this_host_by_default():
    model = kslim.models.vgg(width=0.25)
    choice = suggest_round_to(model, 0.3, candidates=[1, 4])
    assert all(r["latency_ms"] > 0 for r in choice.rows) and choice.latency_before > 0
    assert choice.round_to == min(choice.rows, key=lambda r: r["latency_ms"])["round_to"]


def test_a_target_no_multiple_reaches_is_an_error_naming_it():
    with pytest.raises(KslimValueError, match="reachable with none of"):
        suggest_round_to(kslim.models.vgg(width=0.25), 0.999, candidates=[1, 8], latency_fn=lambda m: 1.0)


@pytest.mark.parametrize("bad", [[], [0], [1.5], "8", [True]])
def test_bad_candidates_are_refused(bad):
    with pytest.raises(KslimValueError, match="candidates"):
        suggest_round_to(kslim.models.vgg(width=0.25), 0.3, candidates=bad, latency_fn=lambda m: 1.0)


def test_round_to_is_not_a_pruner_argument_here():
    with pytest.raises(KslimValueError, match="candidates="):
        suggest_round_to(kslim.models.vgg(width=0.25), 0.3, round_to=8, latency_fn=lambda m: 1.0)
