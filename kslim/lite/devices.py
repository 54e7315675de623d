"""Where a ``.tflite`` model is timed: the host, an Android phone over adb, a Linux board over ssh.

Every device has the same small interface::

    device.describe()                       # dict: kind, name, cpu, ... (stored with latency tables)
    device.benchmark(lite_model, num_threads=1, warmup=10, runs=50,
                     use_xnnpack=True, use_gpu=False, op_profiling=False)   # -> dict (see below)
    device.measure(content, num_threads=1, warmup=10, runs=100, repeats=1) # -> latency in us

``benchmark`` returns ``{"timings_us": [...] or None, "avg_us", "std_us", "min_us", "max_us",
"init_us", "first_us", "warmup_avg_us", "peak_memory_mb", "ops": [...] or None, "tool", "raw"}``;
:func:`kslim.lite.profiling` turns it into a :class:`~kslim.lite.ProfileReport`.

Remote devices work by *push a file, run a command, read its output*, always through
``subprocess.run`` with an argument list and a timeout:

* :class:`AdbDevice` pushes the model and TFLite's prebuilt ``benchmark_model`` binary to the
  phone and parses the tool's text output (summary line, memory, op-profiling tables).
* :class:`SshDevice` copies the model with ``scp`` and runs either kslim's standalone runner
  (``kslim/lite/runner.py``, needs only ``pip install ai-edge-litert`` on the board; prints JSON)
  or ``benchmark_model``.

Testing note: no phone or board is reachable from kslim's CI. The adb and ssh paths are tested end
to end against local stand-ins (fake ``adb``/``ssh``/``scp`` executables that run the same commands
on the host and log their argv, and a fake ``benchmark_model`` that times the model with kslim's
runner and prints in benchmark_model's format), and the parsers against captured real output.
They have not been run against real hardware.
"""

import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from kslim.errors import DeviceError, KslimFileError, KslimValueError

RUNNER_PATH = Path(__file__).with_name("runner.py")


def _content(model):
    from kslim.lite.model import LiteModel

    if isinstance(model, LiteModel):
        return model.content
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        return LiteModel.load(model).content
    raise KslimValueError(f"expected a LiteModel, .tflite path or bytes, got {type(model).__name__}.")


def _result_from_timings(res, ops=None, tool="runner", raw=None):
    import numpy as np

    t = np.asarray(res["timings_us"], np.float64)
    return {"timings_us": t.tolist(), "avg_us": float(t.mean()), "std_us": float(t.std()),
            "min_us": float(t.min()), "max_us": float(t.max()), "init_us": res.get("init_us"),
            "first_us": res.get("first_us"), "warmup_avg_us": res.get("warmup_avg_us"),
            "peak_memory_mb": res.get("peak_rss_mb"), "ops": ops, "tool": tool, "raw": raw}


def _ops_from_tables(parsed):
    rows = parsed.get("op_profile", {}).get("runs", {}).get("run_order")
    if not rows:
        return None
    return [{"index": r.get("node_index", i), "op": r["node_type"], "name": r.get("name", ""),
             "avg_ms": r["avg_ms"]} for i, r in enumerate(rows)]


class Device:
    """Base class: subclasses implement :meth:`benchmark` and :meth:`describe`."""

    kind = "device"

    def describe(self):
        return {"kind": self.kind}

    def benchmark(self, model, num_threads=1, warmup=10, runs=50, use_xnnpack=True, use_gpu=False,
                  op_profiling=False):
        raise NotImplementedError

    def measure(self, content, num_threads=1, warmup=10, runs=100, repeats=1):
        """Steady-state latency (us) of a flatbuffer: the median of the timings where the device
        gives them, else the tool's mean."""
        import numpy as np

        vals = []
        for _ in range(max(int(repeats), 1)):
            r = self.benchmark(content, num_threads=num_threads, warmup=warmup, runs=runs)
            vals.append(float(np.median(r["timings_us"])) if r.get("timings_us") else r["avg_us"])
        return float(np.median(vals))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "kind")
        return f"{type(self).__name__}({args})"


#: the x86 instruction-set flags that decide which int8/fp kernels XNNPACK can use (issue 16: an int8
#: speedup depends on whether the CPU has int8 dot products, VNNI)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_info():
    """``{"cpu": model name, "isa": [flags of ISA_FLAGS present]}`` of this host, from /proc/cpuinfo
    (Linux; elsewhere what ``platform`` knows and no flags).

    Example:
        >>> sorted(cpu_info())
        ['cpu', 'isa']
    """
    import platform

    name, flags = None, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:   # the first processor's lines
                if line.startswith("model name") and name is None:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and flags is None:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": name or platform.processor() or platform.machine(),
            "isa": [f for f in ISA_FLAGS if f in (flags or ())]}


class LocalDevice(Device):
    """The host CPU, through the LiteRT interpreter in this process.

    Args:
        use_xnnpack: default for :meth:`benchmark` (the XNNPACK delegate, LiteRT's default CPU path).

    Per-op latencies (``op_profiling=True``) come from timing every op as a single-op model cut out of
    the flatbuffer (the Python interpreter has no per-op profiler), minus the fixed ``invoke()`` cost.

    Example:
        >>> dev = LocalDevice()
        >>> dev.describe()["kind"]
        'local'
    """

    kind = "local"

    def __init__(self, use_xnnpack=True):
        self.use_xnnpack = bool(use_xnnpack)

    def describe(self):
        import platform

        info = cpu_info()
        return {"kind": self.kind, "name": platform.node(), "system": f"{platform.system()} {platform.machine()}",
                "cpu": info["cpu"], "isa": info["isa"], "cores": os.cpu_count(), "l2_bytes": _cache_bytes(2),
                "l3_bytes": _cache_bytes(3), "runtime": _litert_version(), "use_xnnpack": self.use_xnnpack}

    def benchmark(self, model, num_threads=1, warmup=10, runs=50, use_xnnpack=None, use_gpu=False,
                  op_profiling=False):
        from kslim.lite import runner

        if use_gpu:
            raise DeviceError("LocalDevice has no GPU delegate: use use_gpu=False (or an AdbDevice for a phone GPU).")
        xnn = self.use_xnnpack if use_xnnpack is None else bool(use_xnnpack)
        content = _content(model)
        try:
            res = runner.benchmark(content, num_threads, warmup, runs, xnn)
            ops = runner.op_profile(content, num_threads, max(warmup, 1), max(runs, 20), xnn) if op_profiling else None
        except (ValueError, RuntimeError) as e:
            raise KslimFileError(f"LiteRT cannot run this model on the host: {e}") from e
        return _result_from_timings(res, ops, tool="litert-python")

    def measure(self, content, num_threads=1, warmup=10, runs=100, repeats=1):
        from kslim.lite import runner

        return runner.measure_content(content, num_threads, warmup, runs, self.use_xnnpack, repeats)

    def context_interpreter(self, content, num_threads=1):
        """A ready interpreter of a whole model, to run ops in its context (:meth:`measure_in_context`)."""
        from kslim.lite import runner

        interp = runner.make_interpreter(content, num_threads, self.use_xnnpack)
        for index, x in runner.random_inputs(interp):
            interp.set_tensor(index, x)
        return interp

    def measure_in_context(self, content, context, num_threads=1, warmup=3, runs=30, repeats=1):
        """Latency (us) of a single-op model timed right after each run of a whole model (``context``:
        flatbuffer or :meth:`context_interpreter`); median over ``repeats`` of per-repeat medians."""
        import numpy as np

        from kslim.lite import runner

        return float(np.median([runner.measure_in_context(content, context, num_threads, warmup, runs,
                                                          self.use_xnnpack)
                                for _ in range(max(int(repeats), 1))]))


class _CommandDevice(Device):
    """Shared plumbing of the remote devices: run an argv with a timeout, map failures to DeviceError."""

    def __init__(self, timeout=300, command_timeout=60):
        self.timeout = float(timeout)
        self.command_timeout = float(command_timeout)
        self.log = []  # argv of every command run, for debugging

    def _exec(self, argv, timeout=None, what="command", check=True):
        timeout = self.command_timeout if timeout is None else timeout
        argv = [str(a) for a in argv]
        self.log.append(argv)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError as e:
            raise DeviceError(f"{argv[0]!r} was not found: {self._missing_hint(argv[0])}") from e
        except PermissionError as e:
            raise DeviceError(f"{argv[0]!r} is not executable ({e}).") from e
        except subprocess.TimeoutExpired as e:
            raise DeviceError(
                f"{what} did not finish within {timeout:g} s: {shlex.join(argv)}. The device may be "
                "unresponsive or the model too slow; raise timeout= or lower runs=.") from e
        if check and proc.returncode != 0:
            self._raise_failed(proc, argv, what)
        return proc

    def _missing_hint(self, exe):
        return "install it or pass its path."

    def _raise_failed(self, proc, argv, what):
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-10:])
        raise DeviceError(f"{what} failed (exit {proc.returncode}): {shlex.join(argv)}\n{tail}")

    # the three primitives: push a file, run a command, read its output
    def push(self, local, remote):
        raise NotImplementedError

    def shell(self, command, timeout=None, what="remote command", check=True):
        raise NotImplementedError

    def _push_model(self, model):
        content = _content(model)
        with tempfile.TemporaryDirectory(prefix="kslim_dev_") as tmp:
            local = Path(tmp) / "model.tflite"
            local.write_bytes(content)
            remote = f"{self.remote_dir}/model.tflite"
            self.push(local, remote)
        return remote

    def _run_benchmark_model(self, binary, model, num_threads, warmup, runs, use_xnnpack, use_gpu, op_profiling):
        from kslim.lite.benchmark_output import parse_benchmark_output

        remote_model = self._push_model(model)
        cmd = [binary, f"--graph={remote_model}", f"--num_threads={int(num_threads)}",
               f"--warmup_runs={int(warmup)}", f"--num_runs={int(runs)}", "--min_secs=0", "--warmup_min_secs=0",
               f"--use_xnnpack={str(bool(use_xnnpack)).lower()}", f"--use_gpu={str(bool(use_gpu)).lower()}",
               f"--enable_op_profiling={str(bool(op_profiling)).lower()}", "--report_peak_memory_footprint=true"]
        proc = self.shell(cmd, timeout=self.timeout, what="benchmark_model", check=False)
        text = (proc.stdout or "") + "\n" + (proc.stderr or "")
        parsed = parse_benchmark_output(text, command=shlex.join(cmd))  # raises DeviceError when no summary
        if proc.returncode != 0:
            self._raise_failed(proc, cmd, "benchmark_model")
        return {"timings_us": None, "avg_us": parsed["avg_us"], "std_us": parsed["std_us"],
                "min_us": parsed["min_us"], "max_us": parsed["max_us"], "init_us": parsed["init_us"],
                "first_us": parsed["first_us"], "warmup_avg_us": parsed["warmup_avg_us"],
                "peak_memory_mb": parsed["peak_memory_mb"], "ops": _ops_from_tables(parsed),
                "op_tables": parsed["op_profile"], "tool": "benchmark_model", "raw": text}


class AdbDevice(_CommandDevice):
    """An Android phone over ``adb``, timed with TFLite's prebuilt ``benchmark_model`` binary.

    Args:
        serial: the device serial (``adb devices``); None = the only attached device.
        benchmark_binary: local path of ``benchmark_model`` for the phone's ABI (the TFLite docs link
            nightly ``android_aarch64_benchmark_model`` builds); pushed once to ``remote_dir``.
        adb: the adb executable (name on PATH or a path).
        remote_dir: a writable folder on the phone.
        timeout: seconds allowed for one benchmark run; command_timeout for push/getprop/chmod.

    ``benchmark`` runs ``benchmark_model --graph=... --num_threads=N --warmup_runs=W --num_runs=R
    --use_xnnpack=... --use_gpu=... --enable_op_profiling=...`` and parses its summary line and
    op-profiling tables. benchmark_model reports mean/std/min/max only, so the report's median and
    percentiles are None for this device.

    Tested only against a local stand-in (fake ``adb`` running the commands on the host), not a phone.

    Example:
        >>> dev = AdbDevice(serial="R58M123", benchmark_binary="android_aarch64_benchmark_model")
        >>> dev.adb_argv("get-state")
        ['adb', '-s', 'R58M123', 'get-state']
    """

    kind = "adb"

    def __init__(self, serial=None, benchmark_binary=None, adb="adb", remote_dir="/data/local/tmp/kslim",
                 timeout=300, command_timeout=60):
        super().__init__(timeout, command_timeout)
        self.serial = serial
        self.benchmark_binary = None if benchmark_binary is None else Path(benchmark_binary)
        self.adb = str(adb)
        self.remote_dir = str(remote_dir).rstrip("/")
        self._checked = False
        self._binary_pushed = None

    def adb_argv(self, *args):
        return [self.adb] + (["-s", self.serial] if self.serial else []) + [str(a) for a in args]

    def _missing_hint(self, exe):
        return ("install Android platform-tools (`apt-get install adb` or the SDK) and put `adb` on PATH, "
                "or pass AdbDevice(adb=PATH).")

    def check(self):
        """Raise :class:`DeviceError` unless exactly the requested device is attached and online."""
        proc = self._exec(self.adb_argv("get-state"), what="adb get-state", check=False)
        state = (proc.stdout or "").strip()
        if proc.returncode != 0 or state != "device":
            who = f"device {self.serial!r}" if self.serial else "Android device"
            msg = (proc.stderr or proc.stdout or "").strip()
            raise DeviceError(
                f"no {who} attached ({msg or state or 'adb get-state failed'}). Connect the phone with USB "
                "debugging enabled and authorise this computer; `adb devices` must list it as 'device'"
                + ("" if self.serial else "; pass serial= when several are attached") + ".")
        self._checked = True

    def push(self, local, remote):
        self._exec(self.adb_argv("push", local, remote), timeout=self.timeout, what="adb push")

    def shell(self, command, timeout=None, what="adb shell", check=True):
        # adb joins its arguments into one remote shell command line: quote each piece
        return self._exec(self.adb_argv("shell", shlex.join([str(c) for c in command])), timeout, what, check)

    def describe(self):
        info = {"kind": self.kind, "serial": self.serial}
        if not self._checked:
            self.check()
        for key, prop in (("model", "ro.product.model"), ("abi", "ro.product.cpu.abi"),
                          ("android", "ro.build.version.release"), ("soc", "ro.soc.model")):
            proc = self.shell(["getprop", prop], what="adb shell getprop", check=False)
            info[key] = (proc.stdout or "").strip() or None
        return info

    def _ensure_binary(self):
        if self.benchmark_binary is None:
            raise DeviceError(
                "AdbDevice needs benchmark_binary=PATH: TFLite's prebuilt benchmark_model for the phone's ABI "
                "(e.g. android_aarch64_benchmark_model, linked from the TFLite 'Performance measurement' docs).")
        if not self.benchmark_binary.is_file():
            raise DeviceError(f"benchmark binary {self.benchmark_binary} does not exist.")
        remote = f"{self.remote_dir}/benchmark_model"
        if self._binary_pushed != remote:
            self.shell(["mkdir", "-p", self.remote_dir], what="adb shell mkdir")
            self.push(self.benchmark_binary, remote)
            self.shell(["chmod", "+x", remote], what="adb shell chmod")
            self._binary_pushed = remote
        return remote

    def benchmark(self, model, num_threads=1, warmup=10, runs=50, use_xnnpack=True, use_gpu=False,
                  op_profiling=False):
        if not self._checked:
            self.check()
        binary = self._ensure_binary()
        return self._run_benchmark_model(binary, model, num_threads, warmup, runs, use_xnnpack, use_gpu, op_profiling)


class SshDevice(_CommandDevice):
    """An ARM Linux board (Raspberry Pi, Jetson, ...) over ``ssh``/``scp`` (key-based login, BatchMode).

    Args:
        host: host name or address; ``user``, ``port``, ``identity_file`` as for ssh.
        mode: ``"runner"`` (default) copies kslim's standalone ``runner.py`` and runs it with
            ``python`` on the board (needs only ``pip install ai-edge-litert`` there; gives every
            timing, so medians and percentiles) or ``"benchmark_model"`` (copies ``benchmark_binary``,
            a Linux build of TFLite's benchmark tool for the board's architecture).
        python: the Python on the board that has ai-edge-litert.
        remote_dir: a writable folder on the board.
        ssh_options: extra ``-o`` options, e.g. ``["StrictHostKeyChecking=accept-new"]``.

    Tested only against local stand-ins (fake ``ssh``/``scp`` that run the commands on the host).

    Example:
        >>> dev = SshDevice("pi@raspberrypi.local")
        >>> dev.ssh_argv("true")[-2:]
        ['pi@raspberrypi.local', 'true']
    """

    kind = "ssh"

    def __init__(self, host, user=None, port=None, identity_file=None, mode="runner", benchmark_binary=None,
                 python="python3", remote_dir="/tmp/kslim", ssh="ssh", scp="scp", connect_timeout=10,
                 timeout=300, command_timeout=60, ssh_options=()):
        super().__init__(timeout, command_timeout)
        if mode not in ("runner", "benchmark_model"):
            raise KslimValueError(f"SshDevice mode must be 'runner' or 'benchmark_model', got {mode!r}.")
        if mode == "benchmark_model" and benchmark_binary is None:
            raise KslimValueError("SshDevice(mode='benchmark_model') needs benchmark_binary=PATH.")
        self.host, self.user, self.port, self.identity_file = host, user, port, identity_file
        self.mode, self.python = mode, python
        self.benchmark_binary = None if benchmark_binary is None else Path(benchmark_binary)
        self.remote_dir = str(remote_dir).rstrip("/")
        self.ssh, self.scp = str(ssh), str(scp)
        self.connect_timeout = int(connect_timeout)
        self.ssh_options = list(ssh_options)
        self._prepared = False

    @property
    def target(self):
        return f"{self.user}@{self.host}" if self.user else self.host

    def _opts(self):
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}"]
        for o in self.ssh_options:
            opts += ["-o", o]
        if self.identity_file:
            opts += ["-i", str(self.identity_file)]
        return opts

    def ssh_argv(self, command):
        port = ["-p", str(self.port)] if self.port else []
        return [self.ssh, *self._opts(), *port, self.target, command]

    def _missing_hint(self, exe):
        return "install an OpenSSH client (`apt-get install openssh-client`) or pass ssh=/scp= paths."

    def _raise_failed(self, proc, argv, what):
        if proc.returncode == 255 and argv and argv[0] in (self.ssh, self.scp):
            msg = (proc.stderr or "").strip().splitlines()
            raise DeviceError(
                f"cannot reach {self.target} over ssh ({msg[-1] if msg else 'exit 255'}). Check the host name "
                "and network, that sshd runs on the board, and that key-based login works without a password "
                f"prompt: `ssh {self.target} true`.")
        super()._raise_failed(proc, argv, what)

    def push(self, local, remote):
        port = ["-P", str(self.port)] if self.port else []
        self._exec([self.scp, "-q", *self._opts(), *port, str(local), f"{self.target}:{remote}"],
                   timeout=self.timeout, what="scp")

    def shell(self, command, timeout=None, what="ssh command", check=True):
        proc = self._exec(self.ssh_argv(shlex.join([str(c) for c in command])), timeout, what, check=False)
        if proc.returncode == 255 or (check and proc.returncode != 0):
            self._raise_failed(proc, self.ssh_argv(shlex.join([str(c) for c in command])), what)
        return proc

    def check(self):
        """Raise :class:`DeviceError` if the board cannot be reached (or its Python lacks ai-edge-litert)."""
        self.shell(["mkdir", "-p", self.remote_dir], what="ssh mkdir")
        if self.mode == "runner":
            proc = self.shell([self.python, "-c", "import ai_edge_litert.interpreter"], what="ssh python", check=False)
            if proc.returncode != 0:
                raise DeviceError(
                    f"{self.python} on {self.target} cannot import ai_edge_litert: run `pip install ai-edge-litert` "
                    f"there (or pass python= the interpreter that has it).\n{(proc.stderr or '').strip()[-500:]}")

    def _prepare(self):
        if self._prepared:
            return
        self.check()
        if self.mode == "runner":
            self.push(RUNNER_PATH, f"{self.remote_dir}/runner.py")
        else:
            if not self.benchmark_binary.is_file():
                raise DeviceError(f"benchmark binary {self.benchmark_binary} does not exist.")
            self.push(self.benchmark_binary, f"{self.remote_dir}/benchmark_model")
            self.shell(["chmod", "+x", f"{self.remote_dir}/benchmark_model"], what="ssh chmod")
        self._prepared = True

    def describe(self):
        proc = self.shell(["uname", "-srm"], what="ssh uname", check=False)
        model = self.shell(["cat", "/proc/device-tree/model"], what="ssh cat", check=False)
        return {"kind": self.kind, "host": self.target, "mode": self.mode,
                "system": (proc.stdout or "").strip() or None,
                "model": (model.stdout or "").strip().strip("\x00") or None}

    def benchmark(self, model, num_threads=1, warmup=10, runs=50, use_xnnpack=True, use_gpu=False,
                  op_profiling=False):
        self._prepare()
        if self.mode == "benchmark_model":
            return self._run_benchmark_model(f"{self.remote_dir}/benchmark_model", model, num_threads, warmup,
                                             runs, use_xnnpack, use_gpu, op_profiling)
        if use_gpu:
            raise DeviceError("the kslim runner has no GPU delegate: use mode='benchmark_model' for use_gpu=True.")
        remote_model = self._push_model(model)
        cmd = [self.python, f"{self.remote_dir}/runner.py", remote_model, "--num-threads", int(num_threads),
               "--warmup", int(warmup), "--runs", int(runs), "--format", "json"]
        if not use_xnnpack:
            cmd.append("--no-xnnpack")
        if op_profiling:
            cmd.append("--op-profile")
        proc = self.shell(cmd, timeout=self.timeout, what="runner.py")
        lines = [ln for ln in (proc.stdout or "").splitlines() if ln.startswith("{")]
        try:
            res = json.loads(lines[-1])
            res["timings_us"]
        except (IndexError, ValueError, KeyError, TypeError) as e:
            raise DeviceError(
                f"runner.py on {self.target} printed no JSON result; its output ends with:\n"
                f"{(proc.stdout or '')[-800:]}\n{(proc.stderr or '')[-800:]}") from e
        return _result_from_timings(res, res.get("ops"), tool="kslim-runner", raw=proc.stdout)


def _cache_bytes(level):
    """Size of the CPU cache of ``level`` seen by core 0 (Linux sysfs), or None."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for idx in sorted(base.glob("index*")):
            if (idx / "level").read_text().strip() == str(level) and (idx / "type").read_text().strip() != "Instruction":
                text = (idx / "size").read_text().strip().upper()
                mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
                return int(text.rstrip("KMG")) * mult
    except (OSError, ValueError):
        pass
    return None


def _litert_version():
    try:
        import importlib.metadata

        return "ai-edge-litert " + importlib.metadata.version("ai-edge-litert")
    except Exception:
        return "ai-edge-litert"
