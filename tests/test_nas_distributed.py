"""keras-tuner distributed mode with SimulatedAnnealingOracle: a chief and workers on loopback.

The test starts (as subprocesses of this very file) a chief and two workers; ``worker1`` dies
(``os._exit``) in the middle of its second trial. It checks that the chief goes on and finishes,
every trial is recorded exactly once, and the dead worker's trial was retried by ``worker0``.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

MAX_TRIALS = 8
TARGET = {"a": 3, "b": 1, "c": 2}


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- subprocess side
def _declare(hp):
    for name in TARGET:
        hp.Int(name, 0, 4, default=0)


def _run(role, directory, out):
    import keras_tuner
    from keras_tuner.src.engine.base_tuner import BaseTuner

    from kslim.nas import SimulatedAnnealingOracle

    ran = []
    marker = os.path.join(directory, "worker1.started")

    class ToyTuner(BaseTuner):
        def run_trial(self, trial, **kwargs):
            ran.append(trial.trial_id)
            if role == "fragile":
                open(marker, "w").close()
                if len(ran) == 2:
                    time.sleep(0.3)
                    os._exit(3)  # dies mid-trial: no result ever reaches the chief
            elif len(ran) == 1:  # make sure both workers overlap, whatever their start-up times
                t0 = time.time()
                while not os.path.exists(marker) and time.time() - t0 < 60:
                    time.sleep(0.05)
            time.sleep(0.3)
            hp = trial.hyperparameters
            return {"score": -float(sum((hp.get(k) - v) ** 2 for k, v in TARGET.items()))}

    oracle = SimulatedAnnealingOracle(
        keras_tuner.Objective("score", "max"), max_trials=MAX_TRIALS, init_temperature=1.0, seed=0,
        worker_timeout=4, max_retries_per_trial=1,
    )
    tuner = ToyTuner(oracle, hypermodel=_declare, directory=directory, project_name="dist",
                     overwrite=(role == "chief"))
    tuner.search(verbose=0)
    if role == "chief":
        with open(out, "w") as f:
            json.dump(oracle.summary(), f)
    else:
        with open(out, "w") as f:
            json.dump({"ran": ran}, f)


# ------------------------------------------------------------------------------------- the test
def test_chief_and_workers_on_loopback(tmp_path):
    pytest.importorskip("grpc")
    from keras_tuner.src import protos  # needs protobuf; fails loudly if the generated code does not load

    protos.get_service_grpc()
    port = _free_port()
    base_env = dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port),
                    TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    procs = {}

    def start(tuner_id, role):
        env = dict(base_env, KERASTUNER_TUNER_ID=tuner_id)
        out = tmp_path / f"{tuner_id}.json"
        log = open(tmp_path / f"{tuner_id}.log", "w")
        procs[tuner_id] = (subprocess.Popen(
            [sys.executable, __file__, role, str(tmp_path / "project"), str(out)],
            env=env, stdout=log, stderr=subprocess.STDOUT), out, log)

    t0 = time.time()
    start("chief", "chief")
    start("worker0", "worker")
    start("worker1", "fragile")
    deadline = time.time() + 120
    try:
        for tuner_id, (p, _, _) in procs.items():
            p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        for p, _, _ in procs.values():
            p.kill()
        logs = {t: (tmp_path / f"{t}.log").read_text()[-2000:] for t in procs}
        pytest.fail(f"distributed search did not finish in time; logs: {logs}")
    finally:
        for _, _, log in procs.values():
            log.close()

    logs = {t: (tmp_path / f"{t}.log").read_text()[-3000:] for t in procs}
    print(f"distributed search: {time.time() - t0:.1f}s")
    assert procs["worker1"][0].returncode == 3, logs["worker1"]
    for t in ("chief", "worker0"):
        assert procs[t][0].returncode == 0, logs[t]

    summary = json.loads(procs["chief"][1].read_text())
    trials = summary["trials"]
    ids = [t["trial_id"] for t in trials]
    assert len(ids) == MAX_TRIALS and len(set(ids)) == MAX_TRIALS
    assert all(t["status"] == "COMPLETED" and t["score"] is not None for t in trials), trials
    # distinct configurations: never re-evaluated
    assert len({json.dumps(t["values"], sort_keys=True) for t in trials}) == MAX_TRIALS

    ran0 = json.loads(procs["worker0"][1].read_text())["ran"]
    by_worker1 = [t for t in trials if "worker1" in t.get("tuner_ids", [])]
    assert len(by_worker1) == 2, trials  # worker1 took part: one trial done, one held when it died
    completed_by_1 = [t["trial_id"] for t in by_worker1 if t["runs"] == 1]
    retried = [t for t in by_worker1 if t["runs"] == 2]
    assert len(completed_by_1) == 1 and len(retried) == 1, by_worker1
    assert retried[0]["tuner_ids"] == ["worker0", "worker1"]  # handed to the live worker
    # every trial completed exactly once by a live worker
    assert sorted(ran0 + completed_by_1) == sorted(ids)

if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    _run(sys.argv[1], sys.argv[2], sys.argv[3])
