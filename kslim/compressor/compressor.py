"""``Compressor``: runs a config's strategies in order, checkpointing into a run directory."""

import time
from pathlib import Path

from kslim._io import atomic_save_model
from kslim.compressor.config import config_file, load_config
from kslim.compressor.data import PipelineData
from kslim.compressor.report import latency_value, measure_latency, write_report
from kslim.compressor.run_dir import RunDir, crash_point, guarded_write
from kslim.compressor.strategies import STRATEGY_FUNCTIONS, _build_model, _load_keras, accuracy


class _Context:
    """What the strategies share: config, data, run directory and the current artefacts."""

    def __init__(self, config, data, run, base_dir, verbose):
        self.config, self.data, self.run, self.base_dir, self.verbose = config, data, run, base_dir, verbose
        self.model = None   # current Keras model
        self.lite = None    # current LiteModel (after PTQ / export)
        self.qat = False    # the current Keras model is a QAT model
        self.stage_seed = config["seed"]
        self.info = {}

    def float_lite(self, model):
        """The TFLite conversion used to measure a Keras stage's latency (int8 for a QAT model)."""
        if self.qat:
            from kslim.quant import convert as qconvert

            return qconvert(model)
        from kslim.lite import convert

        return convert(model, check=False)


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

    Example:
        >>> cfg = {"model": {"reference": "vgg", "width": 0.25, "pretrain_epochs": 1},
        ...        "data": {"train_limit": 256, "test_limit": 128},
        ...        "strategies": [{"prune": {"ratio": 0.5, "fine_tune": {"epochs": 1}}}, {"export": {}}]}
        >>> result = Compressor(cfg, out="/tmp/kslim_doc_run", verbose=0).run()  # doctest: +SKIP
        >>> result.final_tflite.exists()  # doctest: +SKIP
        True
    """

    def __init__(self, config, out=None, verbose=1):
        path = config_file(config)
        # relative paths of the config (model.path, data.hook ...) are relative to its file's folder
        self._base_from_file = path is not None
        self.base_dir = path.resolve().parent if path is not None else Path.cwd()
        self.config = load_config(path if path is not None else config)
        if out is None:
            out = Path("kslim_runs") / f"{self.config['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.run_dir = RunDir(out)
        self.verbose = verbose

    # ------------------------------------------------------------------ public
    def run(self, resume=False):
        """Execute the strategies in order; with ``resume=True`` continue an interrupted run in ``out``."""
        import keras

        config = self.config
        if resume:
            state = self.run_dir.resume(config)
            if not self._base_from_file and state.get("base_dir"):
                self.base_dir = Path(state["base_dir"])  # a stored config: its paths are the run's start's
        else:
            state = self.run_dir.start(config, base_dir=self.base_dir)
        keras.utils.set_random_seed(config["seed"])
        data = PipelineData(config["data"], base_dir=self.base_dir)
        ctx = _Context(config, data, self.run_dir, self.base_dir, self.verbose)
        x_eval, y_eval = data.eval_arrays()

        # -------- baseline
        base = state["stages"].get("base")
        base_path = self.run_dir.stage_dir(0, "baseline") / "model.keras"
        if base and base.get("status") == "done":
            ctx.model = _load_keras(base_path)
        else:
            ctx.model, _ = _build_model(ctx, config["model"], "model")
            guarded_write(atomic_save_model, ctx.model, base_path)
            row = self._measure(ctx, "baseline", base_path, x_eval, y_eval)
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
            STRATEGY_FUNCTIONS[name](ctx, params, sdir, f"{i}:{name}")
            entry = {"status": "done", "qat": ctx.qat}
            if ctx.lite is not None:
                path = sdir / "model.tflite"
                guarded_write(lambda p, lm: lm.save(p), path, ctx.lite)
                entry["lite"] = _rel(path, self.run_dir)
                artefact = path
            else:
                artefact = None
            if ctx.model is not None and name not in ("export", "profile", "quant_post_static",
                                                      "quant_post_dynamic"):
                path = sdir / "model.keras"
                guarded_write(atomic_save_model, ctx.model, path)
                artefact = path
            entry["model"] = _rel(self._last_model_path(state, i, sdir), self.run_dir)
            if name == "profile":
                row = dict(self._previous_row(state, i))
                row["stage"] = f"{i}. profile"
                row["latency_ms"] = latency_value(ctx.info.get("profile", {}))
                row["profile"] = ctx.info.get("profile")
            else:
                row = self._measure(ctx, f"{i}. {name}", artefact, x_eval, y_eval)
            if ctx.info:
                row["info"] = ctx.info
            entry["row"] = row
            state["stages"][key] = entry
            self.run_dir.write_state(state)
            crash_point(f"{i}:{name}:done")

        # -------- final artefact and report
        final = self.run_dir.path / "final.tflite"
        lite = ctx.lite or ctx.float_lite(ctx.model)
        guarded_write(lambda p, lm: lm.save(p), final, lite)
        rows = [state["stages"]["base"]["row"]] + [
            state["stages"][str(i)]["row"] for i in range(1, len(config["strategies"]) + 1)
        ]
        plots = sorted(f"plots/{p.name}" for p in self.run_dir.plots.glob("*.png") if p.name != "stages.png")
        md, _ = write_report(self.run_dir, config, rows, plots)
        state["finished"] = True
        self.run_dir.write_state(state)
        return CompressionResult(self.run_dir.path, rows, ctx.model, lite, md)

    # ------------------------------------------------------------------ helpers
    def _restore(self, ctx, entry):
        ctx.qat = bool(entry.get("qat"))
        if entry.get("model"):
            ctx.model = _load_keras(self.run_dir.path / entry["model"])
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

    def _measure(self, ctx, stage, artefact, x, y):
        """Accuracy, size, params, MACs and latency of a stage, on the stage's own artefact."""
        threads = ctx.config["report"]["threads"]
        runs = ctx.config["report"]["latency_runs"]
        row = {"stage": stage}
        if ctx.lite is not None:
            row.update(kind="tflite", bytes=ctx.lite.size, accuracy=ctx.lite.evaluate((x, y)))
            lite = ctx.lite
        else:
            from kslim.analysis import model_size

            row.update(kind="keras (QAT)" if ctx.qat else "keras", bytes=int(model_size(ctx.model)),
                       accuracy=accuracy(ctx.model, x, y))
            lite = ctx.float_lite(ctx.model)
        if ctx.model is not None:
            row["params"] = int(ctx.model.count_params())
            try:
                from kslim.analysis import flops

                row["macs"] = int(flops(ctx.model).macs)
            except Exception:
                row["macs"] = None
        row["latency_ms"] = latency_value(measure_latency(lite, threads=threads, runs=runs))
        return row


def _rel(path, run):
    return str(Path(path).relative_to(run.path))
