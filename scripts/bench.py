#!/usr/bin/env python3
"""kslim benchmarks: one entry point that runs every table and renders ``BENCHMARKS.md``.

Each table is produced by its own script, run here as a separate process (so that no table
pollutes another, and so that tfmot, which forces legacy Keras on its process, never shares a
process with kslim's Keras 3 code):

====================  ===================================  ==========================================
table                 script                               writes
====================  ===================================  ==========================================
``prune``             scripts/bench_prune.py               benchmarks/prune.{json,md}
``quant``             scripts/bench_quant.py               benchmarks/quant.{json,md}
``ptq``               scripts/bench_ptq.py                 benchmarks/ptq.{json,md}
``lowbit``            scripts/bench_lowbit.py              benchmarks/lowbit.{json,md}
``peers``             scripts/bench_peers_tfmot.py         benchmarks/peers_tfmot.{json,md}
``distill``           scripts/bench_distill.py             benchmarks/distill.{json,md}
``combined``          scripts/bench_combined.py            benchmarks/combined.{json,md}
``nas``               scripts/bench_nas.py                 benchmarks/nas.{json,md} (+ .png)
``latency``           scripts/bench_latency.py             benchmarks/latency.{json,md}
``latency224``        scripts/bench_latency224.py          benchmarks/latency224.{json,md}
``cost``              scripts/bench_cost.py                benchmarks/cost.{json,md}
``zoo``               scripts/bench_zoo.py                 benchmarks/zoo.{json,md}
``prune_methods``     scripts/bench_prune_methods.py       benchmarks/prune_methods.{json,md} (on request)
====================  ===================================  ==========================================

``prune_methods`` (every importance, ranking and scheme at -50/-70 % MACs, 3 seeds, both nets) takes hours
on 2 cores: it is not part of ``all``; run it with ``--tables prune_methods`` or its script in pieces
(``--only``/``--models``/``--seeds`` merge into the saved table).

then ``scripts/render_benchmarks.py`` assembles ``BENCHMARKS.md`` from the fragments (machine,
date, commands, and what failed). Usage::

    nice -n 10 python scripts/bench.py                        # every table, full (the start line prints the sum of EXPECTED_MIN)
    nice -n 10 python scripts/bench.py --tables prune peers   # some tables, then render
    python scripts/bench.py --quick                           # smoke run of every script (CI), ~15-20 min
    python scripts/bench.py --render-only                     # re-render BENCHMARKS.md from the fragments

A table whose script fails or is missing is recorded in ``benchmarks/bench_status.json`` (exit code,
last lines of its log in ``benchmarks/logs/<table>.log``) and BENCHMARKS.md says so; the other
tables still run. The exit status is 1 if any table failed.

``--quick`` runs each script's own ``--quick`` mode in a scratch copy of ``scripts/`` so that no
smoke figure overwrites a full one in ``benchmarks/``; its fragments and a smoke ``BENCHMARKS.md``
land in ``--quick-out`` (default ``/tmp/kslim-bench-quick``).
"""

import argparse
import gzip
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# table -> (script, its fragment stem(s), extra args of the full run, extra args of the quick run)
TABLES = {  # in the order of a full run
    "quant": ("bench_quant.py", ("quant",), [], []),
    "ptq": ("bench_ptq.py", ("ptq",), [], []),
    "lowbit": ("bench_lowbit.py", ("lowbit",), [], []),
    "distill": ("bench_distill.py", ("distill",), [], []),
    "cost": ("bench_cost.py", ("cost",), [], []),
    "nas": ("bench_nas.py", ("nas",), [], []),
    "prune": ("bench_prune.py", ("prune",), [], []),
    "latency": ("bench_latency.py", ("latency",), [], []),
    "latency224": ("bench_latency224.py", ("latency224",), [], []),
    "peers": ("bench_peers_tfmot.py", ("peers_tfmot",), [], []),
    "combined": ("bench_combined.py", ("combined",), [], []),
    "zoo": ("bench_zoo.py", ("zoo",), [], []),
    "prune_methods": ("bench_prune_methods.py", ("prune_methods",), ["--seeds", "0,1,2"], ["--models", "mobilenet_v1"]),
}
#: tables run only when named (hours of compute): not part of --tables all
ON_REQUEST = ("prune_methods",)
# wall time of each table's last full run on 2 cores (minutes), for the progress log (quant, peers, combined,
# distill, prune: their ports to the converged nets and the full set; the others still run on the bundled subset)
EXPECTED_MIN = {"prune": 31, "quant": 26, "ptq": 35, "lowbit": 20, "peers": 24, "distill": 52, "combined": 15, "nas": 10,
                "latency": 4, "latency224": 16, "cost": 2, "zoo": 12,
                "prune_methods": 240}
TFMOT_PACKAGES = ["tensorflow-model-optimization", "tf-keras", "dm-tree"]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchlib import cpu_name, utc_now  # noqa: E402

STATUS_FILE = "bench_status.json"


# ------------------------------------------------------------------------------------ shared helpers
def _version(dist):
    import importlib.metadata as md

    for d in (dist,) if isinstance(dist, str) else dist:
        try:
            return md.version(d)
        except md.PackageNotFoundError:
            continue
    return None


def machine():
    """Machine description (no heavy import): CPU, cores, OS, Python and package versions, load."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        load = None
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": _version(("tensorflow-cpu", "tensorflow")),
        "keras": _version("keras"),
        "ai-edge-litert": _version("ai-edge-litert"),
        "kslim": _version("kslim"),
        "load_avg_1_5_15": load,
    }


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def gzip_size(content):
    """Bytes of the gzip-compressed flatbuffer (what unstructured sparsity buys)."""
    return len(gzip.compress(bytes(content), compresslevel=9))


def step_timer(keras_module):
    """A Keras callback (Keras 3 or tf_keras) recording the wall and CPU time of every training step (s)."""

    class StepTimer(keras_module.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times, self.cpu_times = [], []
            self._t0 = self._c0 = None

        def on_train_batch_begin(self, batch, logs=None):
            self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._t0)
            self.cpu_times.append(time.process_time() - self._c0)

        @staticmethod
        def _median_ms(values, skip):
            t = values[skip:] if len(values) > skip + 2 else values
            return 1e3 * statistics.median(t) if t else None

        def median_ms(self, skip=3):
            """Median wall time of a step (ms), the first ``skip`` steps (tracing) left out."""
            return self._median_ms(self.times, skip)

        def median_cpu_ms(self, skip=3):
            """Median process CPU time of a step (ms, all threads): robust to other jobs' load."""
            return self._median_ms(self.cpu_times, skip)

    return StepTimer()


def load_data(quick):
    """The bundled Fashion-MNIST subset as float32 NHWC; train shuffled once with seed 0.

    Quick: 2000 train / 500 test images. Numpy only (safe in the tfmot process).
    """
    import numpy as np

    from kslim.datasets import fashion_mnist_small, preprocess

    (xtr, ytr), (xte, yte) = fashion_mnist_small()
    xtr, xte = preprocess(xtr), preprocess(xte)
    ytr, yte = ytr.astype(np.int32), yte.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(xtr))
    xtr, ytr = xtr[perm], ytr[perm]
    if quick:
        xtr, ytr, xte, yte = xtr[:2000], ytr[:2000], xte[:500], yte[:500]
    return (xtr, ytr), (xte, yte)


def command_line(script, argv=None):
    """The command that reproduces a run: ``python <script> <args>`` without output-folder arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--out", "--md", "--workdir"):
            skip = True
            continue
        if a.startswith(("--out=", "--md=", "--workdir=")):
            continue
        out.append(a)
    return " ".join(["python", script, *out])


def fmt(v, spec=".2f", none="n/a"):
    return none if v is None else format(v, spec)


# ------------------------------------------------------------------------------------ orchestration
def ensure_tfmot(log=print):
    """Install the tfmot peer (``--no-deps``, with tf-keras and dm-tree) when it is missing."""
    missing = [p for p, mod in zip(TFMOT_PACKAGES, ("tensorflow_model_optimization", "tf_keras", "tree"))
               if importlib.util.find_spec(mod) is None]
    if not missing:
        return True
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *TFMOT_PACKAGES]
    log("installing the tfmot peer: " + " ".join(cmd))
    return subprocess.run(cmd, check=False).returncode == 0


def _sandbox(tmp):
    """A scratch copy of scripts/ whose ROOT is ``tmp``: quick runs write there, not in benchmarks/."""
    (tmp / "scripts").mkdir(parents=True, exist_ok=True)
    (tmp / "benchmarks").mkdir(exist_ok=True)
    for f in (ROOT / "scripts").glob("*.py"):
        shutil.copy2(f, tmp / "scripts" / f.name)
    return tmp


def run_table(table, quick, root, logs, log=print, timeout=None, extra=()):
    """Run one table's script as a subprocess; returns its status entry."""
    script, stems, full_args, quick_args = TABLES[table]
    path = root / "scripts" / script
    entry = {"table": table, "script": f"scripts/{script}", "quick": quick, "started": utc_now()}
    if not path.is_file():
        entry.update(status="missing", returncode=None, seconds=0.0,
                     error=f"scripts/{script} does not exist")
        log(f"[{table}] MISSING scripts/{script}")
        return entry
    args = ["--quick", *quick_args] if quick else list(full_args)
    if quick and table in ("prune",):  # bench_prune writes nothing in --quick unless told where
        args += ["--out", str(root / "benchmarks")]
    args += list(extra)
    cmd = [sys.executable, str(path), *args]
    entry["command"] = " ".join(["python", f"scripts/{script}", *[a for a in args if not a.startswith("/")]])
    log_path = logs / f"{table}.log"
    log(f"[{table}] running {entry['command']} (log {log_path}; full run ~{EXPECTED_MIN[table]} min idle)")
    t0 = time.time()
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("TF_USE_LEGACY_KERAS", None)  # each script decides; only the tfmot worker sets it
    with open(log_path, "w", encoding="utf-8") as fh:
        try:
            rc = subprocess.run(cmd, cwd=str(root), stdout=fh, stderr=subprocess.STDOUT, env=env,
                                timeout=timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    entry["seconds"] = round(time.time() - t0, 1)
    entry["returncode"] = rc
    produced = [s for s in stems if (root / "benchmarks" / f"{s}.md").is_file()
                and (root / "benchmarks" / f"{s}.md").stat().st_mtime >= t0 - 1]
    entry["fragments"] = produced
    if rc == 0:
        entry["status"] = "ok"
    else:
        entry["status"] = "failed"
        try:
            tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        except OSError:
            tail = []
        entry["error"] = f"exit {rc}; last lines of the log: " + " | ".join(t.strip() for t in tail)[-600:]
    log(f"[{table}] {entry['status']} in {entry['seconds']:.0f} s; fragments {produced or 'none'}")
    return entry


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Tables: " + ", ".join(TABLES))
    p.add_argument("--tables", nargs="+", default=["all"], choices=["all", *TABLES],
                   help="which tables to run (default all), in the order given")
    p.add_argument("--quick", action="store_true",
                   help="smoke version: each script's --quick, in a scratch copy (never overwrites benchmarks/)")
    p.add_argument("--quick-out", default=os.path.join(tempfile.gettempdir(), "kslim-bench-quick"),
                   help="where --quick writes its fragments and smoke BENCHMARKS.md")
    p.add_argument("--render-only", action="store_true", help="only re-render BENCHMARKS.md from the fragments")
    p.add_argument("--no-render", action="store_true", help="run the tables but do not render BENCHMARKS.md")
    p.add_argument("--timeout", type=float, default=None, help="per-table time limit (minutes)")
    args = p.parse_args(argv)
    args.tables = ([t for t in TABLES if t not in ON_REQUEST] if "all" in args.tables
                   else list(dict.fromkeys(args.tables)))
    return args


def main(argv=None):
    args = parse_args(argv)
    start = time.time()

    def log(msg):
        print(f"[{time.time() - start:6.0f}s] {msg}", flush=True)

    if args.quick:
        root = _sandbox(Path(args.quick_out))
    else:
        root = ROOT
    bench_dir = root / "benchmarks"
    logs = bench_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    status_path = bench_dir / STATUS_FILE
    try:
        status = json.loads(status_path.read_text())
    except (OSError, ValueError):
        status = {}
    status.setdefault("tables", {})
    argv_used = sys.argv[1:] if argv is None else list(argv)

    if not args.render_only:
        if "peers" in args.tables and not ensure_tfmot(log):
            log("could not install the tfmot peer; the peers table will fail and say so")
        if not args.quick:
            total = sum(EXPECTED_MIN[t] for t in args.tables)
            log(f"{len(args.tables)} table(s), about {total} min on 2 idle cores (the sum of their last full runs)")
        status["command"] = "python scripts/bench.py " + " ".join(argv_used)
        status["machine_start"] = machine()
        status["started"] = utc_now()
        for table in args.tables:
            entry = run_table(table, args.quick, root, logs, log,
                              timeout=args.timeout * 60 if args.timeout else None)
            status["tables"][table] = entry
            _write_json(status_path, status)
        status["finished"] = utc_now()
        status["machine_end"] = machine()
        status["wall_s"] = round(time.time() - start, 1)
        _write_json(status_path, status)

    if not args.no_render:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import render_benchmarks

        out = root / "BENCHMARKS.md"
        render_benchmarks.main(["--bench-dir", str(bench_dir), "--out", str(out)]
                               + (["--quick"] if args.quick else []))
        log(f"rendered {out}")
    failed = [t for t in args.tables if status["tables"].get(t, {}).get("status") not in ("ok", None)]
    if failed and not args.render_only:
        log(f"tables that failed or are missing: {failed} (BENCHMARKS.md says so)")
    return 1 if failed and not args.render_only else 0


def _write_json(path, obj):
    sys.path.insert(0, str(ROOT))
    from kslim._io import atomic_write_json

    atomic_write_json(path, obj)


if __name__ == "__main__":
    sys.exit(main())
