# Stand-in for TFLite's `benchmark_model` binary, used by tests/test_lite_devices.py. It accepts
# the tool's flags (--graph, --num_threads, --warmup_runs, --num_runs, --use_xnnpack, --use_gpu,
# --enable_op_profiling, ...), times the model with kslim's runner (kslim/lite/runner.py, LiteRT
# on this host) and prints the result in benchmark_model's output format (summary line, memory,
# op-profiling tables). $FAKE_BENCHMARK_MODE=garbage prints unrelated text, =crash exits 1 with
# the tool's error lines. Argv is appended to $FAKE_LOG.
import json
import os
import sys

argv = sys.argv[1:]
if os.environ.get("FAKE_LOG"):
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps(["benchmark_model"] + argv) + "\n")
flags = {}
for a in argv:
    k, _, v = a.lstrip("-").partition("=")
    flags[k] = v
mode = os.environ.get("FAKE_BENCHMARK_MODE", "ok")
if mode == "garbage":
    print("Segmentation fault handler installed\nhello from a different program")
    sys.exit(0)
graph = flags.get("graph", "")
if mode == "crash" or not os.path.isfile(graph):
    print(f"INFO: Graph: [{graph}]\nERROR: Could not open '{graph}'.\nERROR: Benchmarking failed.", file=sys.stderr)
    sys.exit(1)
if flags.get("use_gpu") == "true":
    print("ERROR: GPU delegate is not available on this stand-in.", file=sys.stderr)
    sys.exit(1)
from kslim.lite import runner  # noqa: E402

with open(graph, "rb") as f:
    content = f.read()
threads = int(flags.get("num_threads", 1))
xnn = flags.get("use_xnnpack", "true") != "false"
res = runner.benchmark(content, threads, int(flags.get("warmup_runs", 1)), int(flags.get("num_runs", 50)), xnn)
ops = None
if flags.get("enable_op_profiling") == "true":
    ops = runner.op_profile(content, threads, 2, 20, xnn)
sys.stdout.write(runner.format_benchmark_model(res, graph, ops))
