"""Ctrl-C (issue 17.6): the first SIGINT stops training at the next batch, exit 130, the run resumable."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import yaml

from kslim import _interrupt


def test_first_sigint_stops_fit_at_the_next_batch():
    """In-process: a SIGINT during fit sets stop_training (no exception inside TensorFlow), then
    KeyboardInterrupt is raised from kslim's code once fit has returned."""
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    m.compile("sgd", "mse")
    seen = []

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)
            if batch == 2:
                os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        _interrupt.fit(m, np.zeros((64, 4)), np.zeros((64, 2)), batch_size=4, epochs=3, verbose=0,
                       callbacks=[Kill()])
    assert 3 <= len(seen) <= 4  # stopped at the batch after the signal, not after 3 x 16 batches
    assert signal.getsignal(signal.SIGINT) is before
    assert _interrupt.requested()
    _interrupt.reset()


@pytest.fixture
def run_config(tmp_path):
    from kslim.models import compile_classifier, vgg

    keras.utils.set_random_seed(0)
    path = tmp_path / "tiny.keras"
    compile_classifier(vgg(width=0.25, hidden=16)).save(path)
    cfg = {"name": "sigint", "model": {"path": str(path)},
           "data": {"source": "small", "train_limit": 3000, "test_limit": 32, "batch_size": 16},
           "report": {"latency_runs": 5},
           "strategies": [{"prune": {"ratios": 0.5, "fine_tune": {"epochs": 2}}}]}
    f = tmp_path / "cfg.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def test_ctrl_c_in_the_real_cli_exits_130_and_the_run_resumes(tmp_path, run_config):
    run = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "kslim", "compress", str(run_config), "--out", str(run),
                          "--verbose", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
    reader.start()
    deadline = time.time() + 90
    while not any("epoch 2/2" in line for line in lines):  # fit_resumable prints it before epoch 2's fit
        assert p.poll() is None and time.time() < deadline, ("".join(lines), p.stderr.read())
        time.sleep(0.05)
    time.sleep(0.3)  # inside epoch 2 (about 190 batches)
    p.send_signal(signal.SIGINT)
    t0 = time.time()
    rc = p.wait(timeout=60)
    err = p.stderr.read()
    assert rc == 130, err
    assert time.time() - t0 < 15  # stopped at the next batch, not after the epochs left
    assert f"the run directory {run} is resumable: kslim compress --resume {run}" in err
    assert "Traceback" not in err
    state = json.loads((run / "state.json").read_text())
    assert state["finished"] is False and "1" not in state["stages"]
    with np.load(run / "stages" / "01_prune" / "ckpt" / "fine_tune" / "train.npz") as z:
        assert int(z["epochs_done"]) == 1  # epoch 2 was cut short: not checkpointed

    from kslim.compressor import Compressor

    result = Compressor(str(run_config), out=run, verbose=0).run(resume=True)
    assert result.final_tflite.is_file()
    csv = (run / "logs" / "01_prune_fine_tune.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in csv] == ["epoch", "0", "1"]  # each epoch once
