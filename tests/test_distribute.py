"""The pipeline's training stages under tf.distribute (``distribute:``): config checks, and runs with
``MirroredStrategy`` over two logical CPU devices and ``MultiWorkerMirroredStrategy`` over two local
worker processes, compared with the single-device run.

Each distributed run is a subprocess (tests/distribute_run.py): logical devices and the
multi-worker collectives must be set up before TensorFlow runs anything in the process.

Tolerance: the logits of every stage (prune + fine-tune, distill, QAT; one epoch each, 256 images,
global batch 64) equal the single-device run's within ``ATOL`` = 1e-4. The replicas compute the
same steps on halves of each batch; only the order of the float32 sums differs (the gradient
all-reduce adds two halves). The tiny model has no BatchNormalization and no Dropout, whose
per-replica statistics and masks differ by design (kslim.compressor.distribute).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kslim.compressor import Compressor, validate_config
from kslim.errors import ConfigError

ATOL = 1e-4
HELPER = Path(__file__).with_name("distribute_run.py")
STAGES = ("00_baseline", "01_prune", "02_distill", "03_quant_aware")


def _tiny(seed, width):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(width, 3, strides=2, activation="relu", name="conv1"),
        keras.layers.Conv2D(width, 3, strides=2, activation="relu", name="conv2"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, name="logits"),
    ], name=f"tiny{width}")


def _config(tmp):
    from kslim._io import atomic_save_model

    for name, seed, width in (("student", 0, 8), ("teacher", 1, 16)):
        atomic_save_model(_tiny(seed, width), tmp / f"{name}.keras")
    return {
        "seed": 0,
        "model": {"path": str(tmp / "student.keras")},
        "data": {"train_limit": 256, "test_limit": 64, "batch_size": 64},
        "train": {"epochs": 1, "learning_rate": 1e-3},
        "report": {"latency_runs": 1},
        "strategies": [
            {"prune": {"ratios": {"conv1": 0.5}, "fine_tune": {"epochs": 1}}},
            {"distill": {"teacher": {"path": str(tmp / "teacher.keras")}, "epochs": 1}},
            {"quant_aware": {"epochs": 1}},
        ],
    }


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def _check(proc_result):
    assert proc_result.returncode == 0, proc_result.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with two logical CPUs: the single-device run, then the mirrored one."""
    tmp = tmp_path_factory.mktemp("distribute")
    (tmp / "config.json").write_text(json.dumps(_config(tmp)))
    _check(subprocess.run([sys.executable, str(HELPER), str(tmp / "config.json"), str(tmp), "none", "mirrored",
                           "--cpus", "2"], env=_env(), capture_output=True, text=True, timeout=600))
    return tmp


def _max_diffs(tmp, mode):
    ref, got = np.load(tmp / "none" / "outputs.npz"), np.load(tmp / mode / "outputs.npz")
    assert sorted(ref.files) == sorted(got.files) == list(STAGES)
    return {k: float(np.max(np.abs(ref[k] - got[k]))) for k in STAGES}


def test_mirrored_two_cpus_equals_single_device(runs):
    diffs = _max_diffs(runs, "mirrored")
    print("max |logit difference| mirrored vs single device:", diffs)
    assert all(d <= ATOL for d in diffs.values()), diffs
    assert (runs / "mirrored" / "final.tflite").is_file() and (runs / "mirrored" / "report.md").is_file()


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_two_local_workers_equals_single_device(runs):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        procs.append(subprocess.Popen(
            [sys.executable, str(HELPER), str(runs / "config.json"), str(runs), "multi_worker"],
            env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    diffs = _max_diffs(runs, "multi_worker")
    print("max |logit difference| multi-worker vs single device:", diffs)
    assert all(d <= ATOL for d in diffs.values()), diffs
    assert not list(Path(runs).glob("multi_worker/*worker1*"))  # the worker wrote elsewhere


# ----------------------------------------------------------------------------- config checks
BASE = {"model": {"reference": "vgg"}, "strategies": [{"export": {}}]}


def test_distribute_values():
    assert validate_config(dict(BASE, distribute="mirrored"))["distribute"] == "mirrored"
    assert "distribute" not in validate_config(BASE)  # none: the config (and its hash) as before
    with pytest.raises(ConfigError) as e:
        validate_config(dict(BASE, distribute="ring"))
    assert e.value.path == "distribute" and "multi_worker" in str(e.value)


@pytest.mark.parametrize("tf_config, words", [
    (None, "TF_CONFIG environment variable"),
    ("{not json", "is not"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}', "task worker 3"),
])
def test_multi_worker_needs_tf_config_before_work(tmp_path, monkeypatch, tf_config, words):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if tf_config is not None:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as e:
        Compressor(dict(BASE, distribute="multi_worker"), out=out, verbose=0).run()
    assert e.value.path == "distribute" and words in str(e.value)
    assert not out.exists()


def test_worker_roles(monkeypatch, tmp_path):
    from kslim.compressor import distribute

    cfg = {"distribute": "multi_worker"}
    cluster = {"worker": ["a:1", "b:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert distribute.is_chief(cfg) and distribute.worker_dir(tmp_path, cfg) is None
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert not distribute.is_chief(cfg)
    assert distribute.worker_dir(tmp_path, cfg) == distribute.worker_dir(tmp_path, cfg) != tmp_path
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": dict(cluster, chief=["c:1"]),
                                                "task": {"type": "worker", "index": 0}}))
    assert not distribute.is_chief(cfg)
    assert distribute.is_chief({"distribute": "mirrored"}) and distribute.get_strategy({}) is None


def test_checkpoint_resume_under_a_strategy(tmp_path):
    """fit_resumable's checkpoint (weights + optimizer variables) restores into mirrored variables:
    1 epoch, a new copy resumed to 2 epochs = 2 epochs at once (one replica: no other process needed)."""
    import tensorflow as tf

    from kslim.compressor.distribute import into_scope, out_of_scope
    from kslim.compressor.training import fit_resumable
    from kslim.datasets import to_dataset
    from kslim.models import compile_classifier

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    rng = np.random.default_rng(0)
    x, y = rng.random((128, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 128).astype(np.int32)
    base = _tiny(0, 4)

    def train(ckpt, epochs):
        model = into_scope(strategy, base)
        with strategy.scope():
            compile_classifier(model, learning_rate=1e-2)
            fit_resumable(model, lambda s: to_dataset(x, y, 32, shuffle=True, seed=s, normalize=False,
                                                      reshuffle_each_iteration=False), epochs, ckpt, 7, "t", verbose=0)
        return out_of_scope(strategy, model).get_weights()

    straight = train(tmp_path / "a", 2)
    train(tmp_path / "b", 1)
    resumed = train(tmp_path / "b", 2)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(straight, resumed)) <= 1e-6
