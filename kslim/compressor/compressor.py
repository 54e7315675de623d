"""``Compressor``: runs a config's strategies in order, checkpointing into a run directory."""

import shutil
import time
from pathlib import Path

from kslim import _progress
from kslim._io import atomic_save_model
from kslim.compressor.config import raise_config_errors, config_file, load_config, quick_config
from kslim.compressor import distribute
from kslim.compressor.data import PipelineData, load_hook
from kslim.compressor.report import write_report
from kslim.lite.profiling import measure_latencies
from kslim.compressor.run_dir import RunDir, crash_point, guarded_write
from kslim.compressor.strategies import (
    _build_model, _load_keras, _macs, accuracy, describe_model, get_strategy,
)
from kslim.errors import ConfigError

LATENCY_ROUNDS = 5


class _Context:
    """What the strategies share: config, data, run directory and the current artefacts."""

    def __init__(self, config, data, run, base_dir, verbose, progress=False, unsafe=False):
        self.config, self.data, self.run, self.base_dir, self.verbose = config, data, run, base_dir, verbose
        self.progress, self.unsafe = progress, unsafe
        self.model = None   # current Keras model
        self.lite = None    # current LiteModel (after PTQ / export)
        self.qat = False    # the current Keras model is a QAT model
        self.stage_seed = config["seed"]
        self.strategy = None  # the tf.distribute strategy of the training stages (kslim.compressor.distribute)
        self.info = {}
        self._stage = None  # (index, total, name) of the running stage, until its header is printed

    def note(self, text, indent=True):
        """A progress line, indented under the stage header (printed only when progress is shown)."""
        if self.progress:
            _progress.note(f"      {text}" if indent else text)

    def begin_stage(self, index, total, name):
        self._stage = (index, total, name)

    def header(self, text):
        """The stage's header the first time (``[2/5] distill: text``), an indented line afterwards."""
        if self._stage is None:
            self.note(text)
            return
        index, total, name = self._stage
        self._stage = None
        if self.config.get("quick"):
            d = self.config["data"]
            text += f" [quick: {d.get('train_limit')} training / {d.get('test_limit')} test images, 1 epoch]"
        if self.progress:
            _progress.note(_progress.stage_header(index, total, name, text))

    def float_lite(self, model):
        """The TFLite conversion used to measure a Keras stage's latency (int8 for a QAT model)."""
        from kslim.lite import convert

        return convert(model, check=self.qat)  # kslim.lite.convert gives a QAT model int8 kernels


class CompressionResult:
    """What :meth:`Compressor.run` returns."""

    def __init__(self, run_dir, rows, model, lite, report):
        self.run_dir = Path(run_dir)
        self.rows = rows
        self.model = model
        self.lite = lite
        self.report = report

    @property
    def final_tflite(self):
        return self.run_dir / "final.tflite"

    def __repr__(self):
        return f"CompressionResult(run_dir={str(self.run_dir)!r}, stages={[r['stage'] for r in self.rows]})"


class Compressor:
    """Run a compression config: prune -> distill -> quantize -> export -> profile, resumably.

    Args:
        config: a path to a YAML config, a YAML string or a dict (see :mod:`kslim.compressor.config`).
        out: run directory (default ``kslim_runs/<name>-<timestamp>``).
        verbose: Keras verbosity of training (0, 1, 2).
        quick: the smoke version of the config (:func:`~kslim.compressor.config.quick_config`).
        progress: print stage headers, estimates and the resume line (default ``verbose > 0``).
        unsafe: load ``.keras`` files with Keras' safe mode off (models with ``Lambda`` layers you trust).

    Everything that can be checked without the work is checked before anything is created or
    TensorFlow is imported: the config (all errors at once), the ``TF_CONFIG`` of ``distribute:
    multi_worker``, the output folder, the model and teacher files, the data hook (imported then). A
    first Ctrl-C stops at the next training batch with the run directory resumable (:mod:`kslim._interrupt`).

    With ``distribute: mirrored`` / ``multi_worker`` the training stages run under ``tf.distribute``
    (:mod:`kslim.compressor.distribute`); a multi-worker task other than the chief writes to a
    folder of its own in the temporary folder instead of ``out``, removed at the end of the run.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import keras
        >>> tmp = Path(tempfile.mkdtemp(prefix="kslim_doc_run_"))
        >>> model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
        ...                           keras.layers.Conv2D(8, 3, activation="relu"),
        ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
        >>> model.save(tmp / "model.keras")  # your trained model
        >>> # tiny on purpose (no fine-tuning, 1 latency run); fine-tune a few epochs in practice
        >>> cfg = {"model": {"path": str(tmp / "model.keras")},
        ...        "data": {"train_limit": 128, "test_limit": 64}, "report": {"latency_runs": 1},
        ...        "strategies": [{"prune": {"ratios": 0.5, "fine_tune": {"epochs": 0}}}, {"export": {}}]}
        >>> result = Compressor(cfg, out=tmp / "run", verbose=0).run()
        >>> result.final_tflite.exists()
        True
    """

    def __init__(self, config, out=None, verbose=1, quick=False, progress=None, unsafe=False):
        path = config_file(config)
        # relative paths of the config (model.path, data.hook ...) are relative to its file's folder
        self._base_from_file = path is not None
        self.base_dir = path.resolve().parent if path is not None else Path.cwd()
        self.config = load_config(path if path is not None else config)
        if quick:
            self.config = quick_config(self.config)
        if out is None:
            out = Path("kslim_runs") / f"{self.config['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.run_dir = RunDir(out)
        self.verbose = verbose
        self.progress = verbose > 0 if progress is None else bool(progress)
        self.unsafe = bool(unsafe)

    # ------------------------------------------------------------------ public
    def run(self, resume=False):
        """Execute the strategies in order; with ``resume=True`` continue an interrupted run in ``out``."""
        from kslim.validation import check_output_dir

        config = self.config
        errors = distribute.tf_config_errors(config)
        if errors:
            raise_config_errors(errors)
        worker = distribute.worker_dir(self.run_dir.path, config)
        if worker is not None:  # a non-chief multi-worker task: its files are thrown away at the end
            if not resume and worker.exists():
                shutil.rmtree(worker)
            self.run_dir = RunDir(worker)
        check_output_dir(self.run_dir.path, "--resume" if resume else "--out")
        if resume:
            state = self.run_dir.resume(config)
            if not self._base_from_file and state.get("base_dir"):
                self.base_dir = Path(state["base_dir"])  # a stored config: its paths are the run's start's
        hook = self._preflight()
        if not resume:
            state = self.run_dir.start(config, base_dir=self.base_dir)
        strategy = distribute.get_strategy(config)  # before TensorFlow runs anything (multi_worker)
        import keras

        keras.utils.set_random_seed(config["seed"])
        data = PipelineData(config["data"], base_dir=self.base_dir, hook=hook)
        ctx = _Context(config, data, self.run_dir, self.base_dir, self.verbose, self.progress, self.unsafe)
        ctx.strategy = strategy
        x_eval, y_eval = data.eval_arrays()
        n = len(config["strategies"])
        if resume:
            self._resume_line(ctx, state)

        # -------- baseline
        base = state["stages"].get("base")
        base_dir = self.run_dir.stage_dir(0, "baseline")
        base_path = base_dir / "model.keras"
        if base and base.get("status") == "done":
            ctx.model = _load_keras(base_path, self.unsafe)
        else:
            spec = config["model"]
            from kslim.compressor.strategies import _reference_args

            what = spec.get("path")
            if "reference" in spec:
                shipped = _reference_args(ctx, spec)["source"] == "shipped"
                what = f"reference model {spec['reference']}" + (
                    " (kslim's shipped weights, trained on the full Fashion-MNIST training set)" if shipped else
                    f" ({int(spec.get('pretrain_epochs', 3))} epochs of training on the data, cached)")
            ctx.note(f"baseline: {what}, evaluated on {len(y_eval):,} test images", indent=False)
            ctx.model = _build_model(ctx, spec, "model")
            guarded_write(atomic_save_model, ctx.model, base_path)
            row = self._measure(ctx, "baseline", base_path, base_dir, x_eval, y_eval)
            ctx.note(f"baseline: {describe_model(ctx.model)}, top-1 accuracy {100 * row['accuracy']:.2f} %",
                     indent=False)
            state["stages"]["base"] = {"status": "done", "row": row, "model": _rel(base_path, self.run_dir)}
            self.run_dir.write_state(state)
            crash_point("base:done")

        # -------- strategies
        for i, item in enumerate(config["strategies"], start=1):
            (name, params), = item.items()
            key = str(i)
            sdir = self.run_dir.stage_dir(i, name)
            done = state["stages"].get(key)
            if done and done.get("status") == "done":
                self._restore(ctx, done)
                continue
            ctx.stage_seed = config["seed"] * 1000 + i * 100
            ctx.info = {}
            ctx.begin_stage(i, n, name)
            strategy = get_strategy(name)
            strategy.run(ctx, params, sdir, f"{i}:{name}")
            entry = {"status": "done", "qat": ctx.qat}
            if ctx.lite is not None:
                path = sdir / "model.tflite"
                guarded_write(lambda p, lm: lm.save(p), path, ctx.lite)
                entry["lite"] = _rel(path, self.run_dir)
                artefact = path
            else:
                artefact = None
            if ctx.model is not None and strategy.keras_output:
                path = sdir / "model.keras"
                guarded_write(atomic_save_model, ctx.model, path)
                artefact = path
            entry["model"] = _rel(self._last_model_path(state, i, sdir), self.run_dir)
            if not strategy.measured:  # e.g. profile: the previous stage's row, plus the step's figures
                row = dict(self._previous_row(state, i))
                row["stage"] = f"{i}. {name}"
                row.pop("info", None)
                row.update(ctx.info)
                ctx.info = {}
            else:
                row = self._measure(ctx, f"{i}. {name}", artefact, sdir, x_eval, y_eval)
            if ctx.info:
                row["info"] = ctx.info
            entry["row"] = row
            state["stages"][key] = entry
            self.run_dir.write_state(state)
            crash_point(f"{i}:{name}:done")

        # -------- final artefact, latency of every stage, report
        final = self.run_dir.path / "final.tflite"
        lite = ctx.lite or ctx.float_lite(ctx.model)
        guarded_write(lambda p, lm: lm.save(p), final, lite)
        rows = [state["stages"]["base"]["row"]] + [
            state["stages"][str(i)]["row"] for i in range(1, len(config["strategies"]) + 1)
        ]
        if worker is None:  # a worker's report is thrown away: no need to time it
            self._final_latency(ctx, rows)
        self.run_dir.write_state(state)  # the rows now hold the interleaved latency figures
        plots = sorted(f"plots/{p.name}" for p in self.run_dir.plots.glob("*.png") if p.name != "stages.png")
        md, _ = write_report(self.run_dir, config, rows, plots)
        state["finished"] = True
        self.run_dir.write_state(state)
        ctx.note(f"report: {md} and {md.with_suffix('.html')}", indent=False)
        if worker is not None:
            shutil.rmtree(worker, ignore_errors=True)
        return CompressionResult(self.run_dir.path, rows, ctx.model, lite, md)

    # ------------------------------------------------------------------ checks before the work
    def _preflight(self):
        """Model/teacher files and the data hook, checked before a run directory or TensorFlow exists.

        Returns the hook function (imported once, here) or ``None``. All problems are reported at once.
        """
        config, errors = self.config, []

        def check_path(spec, field):
            if isinstance(spec, dict) and "path" in spec:
                path = Path(spec["path"]).expanduser()
                path = path if path.is_absolute() else self.base_dir / path
                if not path.is_file():
                    errors.append((field, f"model file {path} does not exist"))

        check_path(config["model"], "model.path")
        for i, item in enumerate(config["strategies"]):
            (name, params), = item.items()
            if name == "distill":
                check_path(params.get("teacher"), f"strategies[{i}].distill.teacher.path")
        hook = None
        if config["data"].get("source") == "hook":
            try:
                hook = load_hook(config["data"]["hook"], self.base_dir)
            except ConfigError as e:
                errors.append((e.path or "data.hook", str(e).split(": ", 1)[-1]))
        if errors:
            raise_config_errors(errors)
        return hook

    # ------------------------------------------------------------------ helpers
    def _resume_line(self, ctx, state):
        done = [i for i in range(1, len(self.config["strategies"]) + 1)
                if (state["stages"].get(str(i)) or {}).get("status") == "done"]
        names = [f"{i:02d}_{next(iter(self.config['strategies'][i - 1]))}"
                 for i in range(1, len(self.config["strategies"]) + 1)]
        todo = [j for j in range(1, len(names) + 1) if j not in done]
        if (state["stages"].get("base") or {}).get("status") != "done":
            where = "at the baseline"
        elif todo:
            where = f"at stage {names[todo[0] - 1]}"
        else:
            where = "after the last stage (latency and report only)"
        ctx.note(f"resuming {self.run_dir.path} {where}, {len(done)} stage{'' if len(done) == 1 else 's'} done"
                 + (f" ({', '.join(names[j - 1] for j in done)})" if done else ""), indent=False)

    def _restore(self, ctx, entry):
        ctx.qat = bool(entry.get("qat"))
        if entry.get("model"):
            ctx.model = _load_keras(self.run_dir.path / entry["model"], self.unsafe)
        if entry.get("lite"):
            from kslim.lite import LiteModel

            ctx.lite = LiteModel.load(self.run_dir.path / entry["lite"])
        else:
            ctx.lite = None

    def _last_model_path(self, state, i, sdir):
        if (sdir / "model.keras").is_file():
            return sdir / "model.keras"
        for j in range(i - 1, 0, -1):
            e = state["stages"].get(str(j))
            if e and e.get("model"):
                return self.run_dir.path / e["model"]
        return self.run_dir.path / state["stages"]["base"]["model"]

    @staticmethod
    def _previous_row(state, i):
        for j in range(i - 1, 0, -1):
            e = state["stages"].get(str(j))
            if e:
                return e["row"]
        return state["stages"]["base"]["row"]

    def _measure(self, ctx, stage, artefact, sdir, x, y):
        """Accuracy, size, params and MACs of a stage, on the stage's own artefact; the TFLite file its
        latency is measured on at the end of the run (:meth:`_final_latency`)."""
        row = {"stage": stage}
        if ctx.lite is not None:
            row.update(kind="tflite", bytes=ctx.lite.size, accuracy=ctx.lite.evaluate((x, y)))
            latency_file = artefact
        else:
            from kslim.analysis import model_size

            row.update(kind="keras (QAT)" if ctx.qat else "keras", bytes=int(model_size(ctx.model)),
                       accuracy=accuracy(ctx.model, x, y))
            latency_file = sdir / "latency.tflite"
            guarded_write(lambda p, lm: lm.save(p), latency_file, ctx.float_lite(ctx.model))
        if ctx.model is not None:
            row["params"] = int(ctx.model.count_params())
            row["macs"] = _macs(ctx.model)
        row["latency_tflite"] = _rel(latency_file, self.run_dir)
        return row

    def _final_latency(self, ctx, rows):
        """Every stage's latency, measured now in interleaved rounds (host load then affects all alike)."""
        from kslim.lite import LiteModel

        files = sorted({r["latency_tflite"] for r in rows if r.get("latency_tflite")
                        and (self.run_dir.path / r["latency_tflite"]).is_file()})
        if not files:
            return
        report = self.config["report"]
        ctx.note(f"latency of every stage: {len(files)} TFLite model(s) timed in {LATENCY_ROUNDS} interleaved rounds of "
                 f"{-(-int(report['latency_runs']) // LATENCY_ROUNDS)} runs, {report['num_threads']} thread(s)", indent=False)
        stats = measure_latencies({f: LiteModel.load(self.run_dir.path / f) for f in files},
                                  num_threads=report["num_threads"], runs=report["latency_runs"], rounds=LATENCY_ROUNDS,
                                  progress=ctx.progress)
        for r in rows:
            s = stats.get(r.get("latency_tflite"))
            if s:
                r.update(latency_ms=s["median_ms"], latency_p5_ms=s["p5_ms"], latency_p95_ms=s["p95_ms"],
                         latency_runs=s["runs"])


def _rel(path, run):
    return str(Path(path).relative_to(run.path))
