"""The run directory of a compression run and its resumable state.

Layout::

    RUN_DIR/
      config.yaml            the validated config (defaults filled in) this run was started with
      state.json             progress: config hash, finished stages and their metrics
      stages/NN_<strategy>/  one folder per strategy, in order:
          model.keras        the stage's output model (Keras stages)
          model.tflite       the stage's output model (TFLite stages: PTQ, export)
          ckpt/              in-stage checkpoints (fine-tuning epochs: weights + optimizer state;
                             sensitivity.json; search trials)
          metrics.json       what the report shows for the stage
      final.tflite           the last TFLite artefact of the pipeline
      logs/                  training logs (CSV per fine-tuning) and TensorBoard logs
      report.md, report.html the per-stage table and the plots
      plots/                 figures produced by strategies and the report

Every file is written atomically (temp file + rename), so a run killed at any moment (even
``kill -9``) leaves either the previous or the new version of each file, never a torn one, and
``kslim compress CONFIG --resume RUN_DIR`` continues from the last finished step.
"""

import os
import signal
from pathlib import Path

import yaml

from kslim._io import atomic_write_json, atomic_write_text, read_json
from kslim.compressor.config import config_hash, diff_configs
from kslim.errors import ConfigError, KslimFileError

STATE_VERSION = 1


class RunDir:
    """A run directory (see the module docstring for its layout)."""

    def __init__(self, path):
        self.path = Path(path)

    # ---------------------------------------------------------------- paths
    @property
    def state_file(self):
        return self.path / "state.json"

    @property
    def config_file(self):
        return self.path / "config.yaml"

    def stage_dir(self, index, name):
        d = self.path / "stages" / f"{index:02d}_{name}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def logs(self):
        d = self.path / "logs"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def plots(self):
        d = self.path / "plots"
        d.mkdir(parents=True, exist_ok=True)
        return d

    # ---------------------------------------------------------------- state
    def start(self, config, base_dir=None):
        """Create a fresh run directory for ``config``; refuses a folder that already holds a run.

        ``base_dir`` (the folder relative config paths resolve from) is kept in the state, so that a
        run resumed from its stored config finds the same files whatever the working directory.
        """
        if self.state_file.exists():
            raise KslimFileError(
                f"{self.path} already holds a run; resume it with `--resume {self.path}` or choose "
                "another output folder."
            )
        self.path.mkdir(parents=True, exist_ok=True)
        guarded_write(atomic_write_text, self.config_file, yaml.safe_dump(config, sort_keys=False))
        state = {"version": STATE_VERSION, "config_hash": config_hash(config), "stages": {}, "finished": False}
        if base_dir is not None:
            state["base_dir"] = str(Path(base_dir).resolve())
        self.write_state(state)
        return state

    def resume(self, config):
        """Load the state of an interrupted run, refusing one that was started from another config."""
        if not self.state_file.is_file():
            raise KslimFileError(
                f"{self.path} is not a kslim run directory (no state.json); start a run with "
                "`kslim compress CONFIG --out DIR`."
            )
        state = read_json(self.state_file, "Run state")
        if not isinstance(state, dict) or not isinstance(state.get("stages"), dict):
            raise KslimFileError(f"Run state {str(self.state_file)!r} is corrupt: not a kslim run state.")
        if state.get("config_hash") != config_hash(config):
            old = yaml.safe_load(self.config_file.read_text()) if self.config_file.is_file() else {}
            fields = diff_configs(old, config) or ["(unknown)"]
            raise ConfigError(
                f"refusing to resume {self.path}: it was started from another config (differs in "
                f"{', '.join(fields[:8])}). Resume with the same config, or start a new run with --out.",
                path="--resume",
            )
        return state

    def write_state(self, state):
        guarded_write(atomic_write_json, self.state_file, state)

    def stored_config(self):
        if not self.config_file.is_file():
            raise KslimFileError(f"{self.path} has no config.yaml: not a kslim run directory.")
        return yaml.safe_load(self.config_file.read_text())


def guarded_write(writer, path, *args):
    """Run an atomic writer; turn a disk-full / permission error into a clear kslim error.

    The write is atomic, so on failure the previous version of ``path`` is intact and the run can
    be resumed once the cause is fixed.
    """
    try:
        return writer(path, *args)
    except OSError as e:
        raise KslimFileError(
            f"could not write {path}: {getattr(e, 'reason', None) or e.strerror or e}. Nothing was corrupted: the previous checkpoint "
            "is intact. Free disk space / fix permissions, then resume with "
            "`kslim compress CONFIG --resume RUN_DIR`."
        ) from e


def crash_point(name):
    """Test hook: ``KSLIM_CRASH_AT=<name>`` kills this process with SIGKILL at that point.

    Points are named ``<stage index>:<strategy>:<step>`` (e.g. ``0:prune:pruned``,
    ``0:prune:epoch1``, ``2:quant_aware:done``). Used by the resume tests to simulate ``kill -9``
    right after a checkpoint; does nothing unless the variable is set.
    """
    if os.environ.get("KSLIM_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
