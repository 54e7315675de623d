"""Profiling devices: the benchmark_model parser on captured output, the standalone runner, and the
adb / ssh paths end to end against local stand-ins (fake adb/ssh/scp/benchmark_model executables
that run the same commands on this host; see tests/data/fake_bin). No real phone or board here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kslim.errors import DeviceError, KslimValueError

DATA = Path(__file__).parent / "data"
RUNNER = Path(__file__).parents[1] / "kslim" / "lite" / "runner.py"


def _read(name):
    return (DATA / "benchmark_model" / name).read_text()


@pytest.fixture(scope="module")
def lite():
    import keras
    from keras import layers

    from kslim.lite import convert

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.Conv2D(16, 1, activation="relu6")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return convert(keras.Model(inp, layers.Dense(5)(x), name="devnet"), check=False)


# ----------------------------------------------------------------------------- parser on captures
def test_parse_summary_and_memory():
    from kslim.lite import parse_benchmark_output

    r = parse_benchmark_output(_read("summary_tf2.txt"))
    assert (r["init_us"], r["first_us"], r["warmup_avg_us"], r["avg_us"]) == (17851, 2104, 1041.15, 1039.66)
    assert (r["count"], r["min_us"], r["max_us"], r["std_us"]) == (1000, 1012, 1190, 22)  # timed runs, not warmup
    assert r["peak_memory_mb"] == pytest.approx(3.53516)
    assert r["op_profile"] == {}


def test_parse_op_tables_with_start_column_and_init_section():
    from kslim.lite import parse_benchmark_output

    r = parse_benchmark_output(_read("op_profiling_tf2.txt"))
    assert r["avg_us"] == 33209.4 and r["count"] == 50 and r["std_us"] == 450 and r["peak_memory_mb"] == 12.8672
    init, runs = r["op_profile"]["init"], r["op_profile"]["runs"]
    assert [x["node_type"] for x in init["run_order"]] == ["AllocateTensors"]
    order = runs["run_order"]
    assert [x["node_type"] for x in order] == ["CONV_2D", "CONV_2D", "CONV_2D", "DEPTH_TO_SPACE"]
    assert order[1] == {"node_type": "CONV_2D", "start_ms": 13.51, "first_ms": 9.815, "avg_ms": 9.882,
                        "percent": 29.805, "cdf_percent": 70.543, "mem_kb": 0.0, "times_called": 1,
                        "name": "conv2d_1/Relu", "node_index": 1}
    assert len(runs["top_by_time"]) == 4
    assert {x["node_type"]: (x["count"], x["avg_ms"]) for x in runs["by_type"]} == {
        "CONV_2D": (3, 32.14), "DEPTH_TO_SPACE": (1, 1.015)}


def test_parse_info_prefixed_xnnpack_output_without_start_column():
    from kslim.lite import parse_benchmark_output

    r = parse_benchmark_output(_read("op_profiling_xnnpack.txt"))
    assert r["avg_us"] == 55043.2 and r["init_us"] == 18777 and r["count"] == 50 and r["min_us"] == 53077
    assert r["peak_memory_mb"] == pytest.approx(21.0859)  # periodic-monitoring peak preferred
    order = r["op_profile"]["runs"]["run_order"]
    assert [(x["node_type"], x["avg_ms"], x["node_index"]) for x in order] == [
        ("TfLiteXNNPackDelegate", 52.87, 31), ("SOFTMAX", 0.01, 32)]
    assert "start_ms" not in order[0]


def test_parse_legacy_and_failures():
    from kslim.lite import parse_benchmark_output

    r = parse_benchmark_output(_read("legacy.txt"))
    assert (r["avg_us"], r["init_us"], r["warmup_avg_us"]) == (422959, 63227, 420198)
    rows = r["op_profile"]["runs"]["run_order"]
    assert [x["avg_ms"] for x in rows] == [1.016, 0.822, 5.337, 5.362] and rows[1]["node_type"] == "CONV_2D"
    with pytest.raises(DeviceError, match="Failed to mmap model"):
        parse_benchmark_output(_read("failure_bad_model.txt"))
    with pytest.raises(DeviceError, match="no 'Inference timings"):
        parse_benchmark_output("Segmentation fault\n")


# ---------------------------------------------------------------------------------------- runner
def test_runner_is_standalone_and_prints_json(lite, tmp_path):
    model = tmp_path / "m.tflite"
    lite.save(model)
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('runner', {str(RUNNER)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"m.main([{str(model)!r}, '--threads', '1', '--runs', '7', '--warmup', '2', '--op-profile', '--op-runs', '5'])\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in ('kslim', 'tensorflow', 'keras'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    res, heavy = json.loads(lines[0]), json.loads(lines[-1])
    assert heavy == []  # needs only ai-edge-litert + numpy on the device
    assert len(res["timings_us"]) == 7 and res["init_us"] > 0 and res["peak_rss_mb"] > 0
    assert [o["op"] for o in res["ops"]] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "MEAN", "FULLY_CONNECTED"]
    bad = tmp_path / "bad.tflite"
    bad.write_text("nope")
    out = subprocess.run([sys.executable, str(RUNNER), str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not a TFLite flatbuffer" in out.stderr


def test_single_op_models_reproduce_the_full_model(lite):
    """Chaining the cut-out single-op models gives the full model's output (same kernels, weights)."""
    from kslim.lite import runner

    x = np.random.default_rng(1).uniform(0, 1, (1, 16, 16, 3)).astype("float32")
    full = lite.predict(x)
    h = x
    ops = runner.describe_ops(lite.content)
    for d in ops:
        interp = runner.make_interpreter(runner.single_op_model(lite.content, d["index"]))
        inputs = interp.get_input_details()
        assert len(inputs) == 1 and list(inputs[0]["shape"]) == d["inputs"][0]["shape"]
        interp.set_tensor(inputs[0]["index"], h)
        interp.invoke()
        h = interp.get_tensor(interp.get_output_details()[0]["index"])
    np.testing.assert_allclose(h, full, rtol=1e-5, atol=1e-6)


def test_format_benchmark_model_roundtrips_through_the_parser(lite):
    from kslim.lite import parse_benchmark_output, runner

    res = runner.benchmark(lite.content, runs=9, warmup=2)
    ops = runner.op_profile(lite.content, runs=5, warmup=1)
    parsed = parse_benchmark_output(runner.format_benchmark_model(res, "m.tflite", ops))
    assert parsed["avg_us"] == pytest.approx(np.mean(res["timings_us"]), rel=1e-5)
    assert parsed["count"] == 9
    order = parsed["op_profile"]["runs"]["run_order"]
    assert [r["node_type"] for r in order] == [o["op"] for o in ops]
    assert [r["node_index"] for r in order] == list(range(len(ops)))


# ----------------------------------------------------------------------------------- LocalDevice
def test_local_profile_report(lite, tmp_path):
    from kslim.lite import LocalDevice, ProfileReport, profile

    rep = profile(lite, device=LocalDevice(), runs=30, warmup=3, op_profiling=True)
    assert isinstance(rep, ProfileReport) and rep.tool == "litert-python" and len(rep.timings_ms) == 30
    assert rep.p5_ms <= rep.median_ms <= rep.p95_ms and rep.min_ms <= rep.mean_ms <= rep.max_ms
    assert rep.init_ms > 0 and rep.first_ms > 0 and rep.peak_memory_mb > 0 and rep.std_ms >= 0
    assert rep.model_size == lite.size and rep.device["kind"] == "local"
    assert [o["op"] for o in rep.ops] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "MEAN", "FULLY_CONNECTED"]
    assert rep.by_op_type()["CONV_2D"][0] == 2
    png = rep.plot_by_op_type(tmp_path / "ops.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    rep.save(tmp_path / "rep.json")
    from kslim.lite.profiling import load_report

    assert load_report(tmp_path / "rep.json").mean_ms == rep.mean_ms
    no_xnn = profile(lite, runs=5, warmup=1, use_xnnpack=False)
    assert no_xnn.use_xnnpack is False and no_xnn.ops is None
    with pytest.raises(DeviceError, match="GPU"):
        profile(lite, use_gpu=True)
    with pytest.raises(KslimValueError, match="runs"):
        profile(lite, runs=0)
    with pytest.raises(KslimValueError, match="device"):
        profile(lite, device="pixel")


# ----------------------------------------------------------------------------- fakes on the PATH
@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """fake adb/ssh/scp/benchmark_model executables first on PATH; returns (bin dir, argv log reader)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("adb", "ssh", "scp", "benchmark_model"):
        exe = bindir / name
        exe.write_text(f"#!{sys.executable}\n" + (DATA / "fake_bin" / f"{name}.py").read_text())
        exe.chmod(0o755)
    log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))

    def calls():
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    return bindir, calls


def test_adb_end_to_end(lite, fakes, tmp_path):
    from kslim.lite import AdbDevice, profile

    bindir, calls = fakes
    phone = tmp_path / "phone"
    dev = AdbDevice(serial="FAKE0001", benchmark_binary=bindir / "benchmark_model", remote_dir=phone, timeout=120)
    rep = profile(lite, device=dev, num_threads=2, warmup=2, runs=12, use_xnnpack=False, op_profiling=True)
    assert rep.tool == "benchmark_model" and rep.mean_ms > 0 and rep.init_ms > 0 and rep.peak_memory_mb > 0
    assert rep.median_ms is None and rep.p95_ms is None  # benchmark_model gives mean/std/min/max only
    assert [o["op"] for o in rep.ops] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "MEAN", "FULLY_CONNECTED"]
    argvs = calls()
    assert ["adb", "-s", "FAKE0001", "get-state"] in argvs
    assert ["adb", "-s", "FAKE0001", "push", str(bindir / "benchmark_model"), f"{phone}/benchmark_model"] in argvs
    bench = [a for a in argvs if a[0] == "benchmark_model"]
    assert len(bench) == 1
    assert {f"--graph={phone}/model.tflite", "--num_threads=2", "--num_runs=12", "--warmup_runs=2",
            "--use_xnnpack=false", "--use_gpu=false", "--enable_op_profiling=true"} <= set(bench[0][1:])
    assert (phone / "model.tflite").read_bytes() == lite.content
    desc = dev.describe()
    assert desc["kind"] == "adb" and desc["serial"] == "FAKE0001"


def test_adb_errors(lite, fakes, tmp_path, monkeypatch):
    from kslim.lite import AdbDevice, profile

    bindir, _ = fakes
    kw = {"benchmark_binary": bindir / "benchmark_model", "remote_dir": tmp_path / "phone", "timeout": 60}
    with pytest.raises(DeviceError, match="platform-tools"):
        profile(lite, device=AdbDevice(adb=str(tmp_path / "no" / "adb"), **kw))
    monkeypatch.setenv("FAKE_ADB_STATE", "none")
    with pytest.raises(DeviceError, match="no Android device attached.*no devices/emulators found"):
        profile(lite, device=AdbDevice(**kw))
    monkeypatch.setenv("FAKE_ADB_STATE", "unauthorized")
    with pytest.raises(DeviceError, match="authorise"):
        profile(lite, device=AdbDevice(serial="X1", **kw))
    monkeypatch.setenv("FAKE_ADB_STATE", "device")
    with pytest.raises(DeviceError, match="benchmark_binary=PATH"):
        profile(lite, device=AdbDevice(remote_dir=tmp_path / "phone"))
    monkeypatch.setenv("FAKE_BENCHMARK_MODE", "garbage")
    with pytest.raises(DeviceError, match="(?s)no 'Inference timings.*different program"):
        profile(lite, device=AdbDevice(**kw), runs=3)
    monkeypatch.setenv("FAKE_BENCHMARK_MODE", "crash")
    with pytest.raises(DeviceError, match="Benchmarking failed"):
        profile(lite, device=AdbDevice(**kw), runs=3)
    monkeypatch.setenv("FAKE_BENCHMARK_MODE", "ok")
    with pytest.raises(DeviceError, match="GPU delegate is not available"):
        profile(lite, device=AdbDevice(**kw), runs=3, use_gpu=True)


def test_device_command_timeout(lite, tmp_path):
    from kslim.lite import AdbDevice

    slow = tmp_path / "adb"
    slow.write_text("#!/bin/sh\nsleep 20\n")
    slow.chmod(0o755)
    dev = AdbDevice(adb=str(slow), command_timeout=0.5)
    with pytest.raises(DeviceError, match="did not finish within 0.5 s"):
        dev.check()


def test_ssh_runner_end_to_end(lite, fakes, tmp_path):
    from kslim.lite import SshDevice, profile

    _, calls = fakes
    board = tmp_path / "board"
    dev = SshDevice("raspberrypi.local", user="pi", port=2222, python=sys.executable, remote_dir=board, timeout=120)
    rep = profile(lite, device=dev, runs=15, warmup=2, op_profiling=True)
    assert rep.tool == "kslim-runner" and len(rep.timings_ms) == 15 and rep.p5_ms <= rep.median_ms <= rep.p95_ms
    assert rep.peak_memory_mb > 0 and len(rep.ops) == 5
    assert (board / "runner.py").read_text() == RUNNER.read_text()
    argvs = calls()
    ssh_calls = [a for a in argvs if a[0] == "ssh"]
    assert all(a[1:5] == ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"] and "pi@raspberrypi.local" in a
               and "-p" in a for a in ssh_calls)
    assert any("runner.py" in a[-1] and "--op-profile" in a[-1] and "--runs 15" in a[-1] for a in ssh_calls)
    assert any(a[0] == "scp" and a[-1] == f"pi@raspberrypi.local:{board}/model.tflite" and "-P" in a for a in argvs)
    assert dev.describe()["system"]  # uname ran "on the board"


def test_ssh_benchmark_model_mode(lite, fakes, tmp_path):
    from kslim.lite import SshDevice, profile

    bindir, calls = fakes
    dev = SshDevice("jetson", mode="benchmark_model", benchmark_binary=bindir / "benchmark_model",
                    remote_dir=tmp_path / "jetson", timeout=120)
    rep = profile(lite, device=dev, num_threads=2, runs=6, warmup=1)
    assert rep.tool == "benchmark_model" and rep.mean_ms > 0 and rep.ops is None
    assert any(a[0] == "benchmark_model" and "--num_threads=2" in a for a in calls())


def test_ssh_errors(lite, fakes, tmp_path):
    from kslim.lite import SshDevice, profile

    with pytest.raises(DeviceError, match="(?s)cannot reach unreachable-pi over ssh.*Connection timed out"):
        profile(lite, device=SshDevice("unreachable-pi", python=sys.executable, remote_dir=tmp_path / "b"))
    with pytest.raises(DeviceError, match="(?s)cannot import ai_edge_litert.*pip install ai-edge-litert"):
        profile(lite, device=SshDevice("pi", python="false", remote_dir=tmp_path / "b"))
    with pytest.raises(DeviceError, match="openssh-client"):
        profile(lite, device=SshDevice("pi", ssh=str(tmp_path / "nossh"), remote_dir=tmp_path / "b"))
    with pytest.raises(KslimValueError, match="benchmark_binary"):
        SshDevice("pi", mode="benchmark_model")


def test_load_report_bad_files_name_the_file(tmp_path):
    from kslim.errors import KslimFileError
    from kslim.lite.profiling import load_report

    with pytest.raises(KslimFileError, match=r"Profile report '.*nope\.json' does not exist"):
        load_report(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"device": ')
    with pytest.raises(KslimFileError, match=r"Profile report '.*bad\.json' is not valid JSON"):
        load_report(tmp_path / "bad.json")


def test_plot_by_op_type_leaves_pyplot_alone(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    from kslim.lite.profiling import plot_by_op_type

    before = matplotlib.get_backend()
    plt.switch_backend("svg")
    try:
        user_fig = plt.figure()
        png = plot_by_op_type({"CONV_2D": (2, 0.5), "MEAN": 0.1}, tmp_path / "ops.png")
        assert png.read_bytes()[:4] == b"\x89PNG"
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == [user_fig.number]
    finally:
        plt.close("all")
        plt.switch_backend(before)


def test_make_interpreter_preserve_all_tensors(lite):
    from kslim.lite import runner

    interp = runner.make_interpreter(lite.content, use_xnnpack=False, preserve_all_tensors=True)
    for i, x in runner.random_inputs(interp):
        interp.set_tensor(i, x)
    interp.invoke()
    index = {t["name"]: t["index"] for t in interp.get_tensor_details()}
    conv, dw = runner.describe_ops(lite.content)[:2]
    assert (conv["op"], dw["op"]) == ("CONV_2D", "DEPTHWISE_CONV_2D")
    # the depthwise output's memory is reused by later ops unless every tensor is preserved: it must
    # equal the depthwise op run alone on the (preserved) conv output
    single = runner.make_interpreter(runner.single_op_model(lite.content, dw["index"]), use_xnnpack=False)
    single.set_tensor(single.get_input_details()[0]["index"], interp.get_tensor(index[conv["name"]]))
    single.invoke()
    np.testing.assert_allclose(interp.get_tensor(index[dw["name"]]),
                               single.get_tensor(single.get_output_details()[0]["index"]), atol=1e-6)


def test_local_device_records_the_cpu_isa_flags():
    """issue 16: every latency comes with the CPU's int8-relevant ISA flags (VNNI decides int8 speedups)."""
    from pathlib import Path

    from kslim.lite.devices import ISA_FLAGS, LocalDevice, cpu_info

    d = LocalDevice().describe()
    assert set(d["isa"]) <= set(ISA_FLAGS) and d["cpu"] == cpu_info()["cpu"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.read_text().splitlines()
                      if ln.startswith("flags")), [])
        assert d["isa"] == [f for f in ISA_FLAGS if f in flags]
