"""Unstructured pruning (kslim.prune.unstructured): Level one shot, AGP masks held during fit, strip,
and a .tflite that stores the zeros as sparse tensors."""

import keras
import numpy as np
import pytest

from kslim.errors import KslimValueError, ModelError
from kslim.prune import AGP
from kslim.prune.unstructured import (LevelPruner, UnstructuredPruning, convert_sparse, prunable_weights,
                                      sparse_tensors, strip_unstructured, weight_sparsity)
from test_gradual import data, tiny_model  # conv1 -> bn1 -> dw -> pw -> head -> logits, compiled


def test_level_pruner_zeroes_the_smallest_weights():
    model = tiny_model()
    before = [w.copy() for w in model.get_weights()]
    assert sorted(prunable_weights(model)) == ["conv1/kernel", "dw/kernel", "head/kernel", "logits/kernel",
                                               "pw/kernel"]
    p = LevelPruner(model, {"pw": 0.8, "head": 0.5})
    sparse = p.prune()
    for a, b in zip(before, model.get_weights()):      # copy=True: the original is untouched
        np.testing.assert_array_equal(a, b)
    w0, w1 = model.get_layer("pw").kernel.numpy(), sparse.get_layer("pw").kernel.numpy()
    zeros = w1 == 0
    assert zeros.sum() == int(0.8 * w0.size)
    assert np.abs(w0[zeros]).max() <= np.abs(w0[~zeros]).min()   # the smallest magnitudes went
    np.testing.assert_array_equal(w1[~zeros], w0[~zeros])
    report = weight_sparsity(sparse)
    rows = {r.name: r.sparsity for r in report.rows}
    assert rows["head/kernel"] == 0.5 and rows["conv1/kernel"] == 0 and "total" in str(report)
    with pytest.raises(KslimValueError, match="'nope'"):
        LevelPruner(model, {"nope": 0.5})
    with pytest.raises(ModelError, match="'bn1'.*no kernel"):
        LevelPruner(model, 0.5, layers=["bn1"])
    with pytest.raises(KslimValueError, match="sparsity"):
        LevelPruner(model, 1.0)


def test_agp_masks_hold_during_and_after_fit_then_strip(tmp_path):
    model = tiny_model()
    x, y = data()
    cb = UnstructuredPruning(0.8, schedule=AGP(begin_step=2, end_step=8, frequency=2))
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[cb])   # 16 steps: 8 Adam steps after the last prune
    assert [s for s, _ in cb.history] == [2, 4, 6, 8]
    reached = [r for _, r in cb.history]
    assert reached == sorted(reached) and reached[-1] == pytest.approx(0.8, abs=2e-3)
    for name, var in prunable_weights(model).items():
        assert np.all(var.numpy()[cb.masks[name] == 0] == 0), name       # held through the Adam steps
        assert var.constraint is None                                    # the mask constraint is gone
    small = strip_unstructured(model, cb)
    assert weight_sparsity(small).sparsity == pytest.approx(0.8, abs=2e-3)
    np.testing.assert_allclose(small.predict(x[:4], verbose=0), model.predict(x[:4], verbose=0), atol=1e-6)
    # a second fit with the same callback keeps the masks (no re-pruning past the schedule's end)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    assert weight_sparsity(model).sparsity == pytest.approx(0.8, abs=2e-3)
    # a plain fit afterwards trains the zeros again: strip re-applies the masks
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert weight_sparsity(model).sparsity < 0.5
    assert weight_sparsity(strip_unstructured(model, cb)).sparsity == pytest.approx(0.8, abs=2e-3)
    with pytest.raises(ModelError, match="another model"):
        strip_unstructured(tiny_model(), cb)


def test_sparse_tflite_stores_sparse_tensors():
    from kslim.lite import convert

    model = LevelPruner(tiny_model(), 0.9).prune()
    x, _ = data(8)
    dense = convert(model, check_data=x)
    lite = convert_sparse(model, check_data=x)
    names = sparse_tensors(lite)
    assert sparse_tensors(dense) == [] and len(names) >= 3
    assert any("head" in n for n in names)
    assert lite.size < 0.7 * dense.size
    assert lite.parity["value"] < 1e-4
    with pytest.raises(KslimValueError, match="converter_hook"):
        convert_sparse(model, converter_hook=print)
