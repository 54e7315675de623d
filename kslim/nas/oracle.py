"""Simulated annealing as a keras-tuner ``Oracle``, with resource constraints checked before training."""

import math
import threading
import time
import traceback

import keras_tuner
import numpy as np
from keras_tuner.src.distribute import utils as dist_utils
from keras_tuner.src.engine import hyperparameters as hp_module
from keras_tuner.src.engine import trial as trial_module
from keras_tuner.src.engine.oracle import synchronized

from kslim._io import atomic_write_json
from kslim.errors import KslimTypeError, KslimValueError, ModelError
from kslim.nas.constraints import Constraint, InfeasibleConstraintError

TrialStatus = trial_module.TrialStatus

# at most this many rejected candidates are kept in the state / history (the count is kept in full)
_MAX_REJECTED_KEPT = 2000


class SimulatedAnnealingOracle(keras_tuner.Oracle):
    """Simulated annealing over a keras-tuner search space, with FLOPs/latency constraints.

    The search keeps a *current* configuration. Each new trial perturbs ``perturb`` of its
    hyperparameters (chosen at random, each given another value of its range), never proposing a
    configuration already tried. When a trial ends with score ``s``, it becomes the current one if
    it is better, or else with probability ``exp(delta / T)`` where ``delta`` (< 0) is how much
    worse it is, in objective units (sign-adjusted for ``direction="min"``), and
    ``T = init_temperature * reduce_rate ** k`` after ``k`` finished trials — the semantics of
    PaddleSlim's ``SAController``. The first trial is ``initial_values`` (missing entries: the
    hyperparameters' defaults).

    Constraints (:class:`kslim.nas.MaxFlops`, :class:`kslim.nas.MaxLatency`, ...) are checked on the
    model ``hypermodel.build(hp)`` of each candidate *before* it becomes a trial: candidates over a
    limit are rejected (``oracle.rejected`` records the values and why) and another one is drawn,
    so no trial is spent on them. If no feasible candidate is found in ``max_tries`` draws (or the
    hypermodel's :meth:`~kslim.nas.SearchSpace.smallest_values` is already over a limit) an
    :class:`~kslim.nas.InfeasibleConstraintError` is raised at once.

    The state (current point, temperature step, random generator, history, rejections) is part of
    ``get_state``/``set_state``, so a search killed and restarted with ``overwrite=False`` resumes
    where it was. Works with any ``Tuner`` and in keras-tuner's distributed mode; there, a worker
    silent for more than ``worker_timeout`` seconds is presumed dead: its trial is retried
    (``max_retries_per_trial``) or marked failed, and the chief goes on.

    Args:
        objective: as for any keras-tuner oracle (``"val_accuracy"``, ``keras_tuner.Objective``).
        max_trials: trials to run (rejected candidates do not count).
        init_temperature: starting temperature, in objective units (0.05 suits an accuracy in [0, 1]:
            a candidate 0.02 worse is accepted with p = 0.67 at first, p = 0.13 after 10 trials).
        reduce_rate: temperature factor applied after each finished trial (0 < r <= 1).
        initial_values: dict of starting values (the rest: defaults).
        perturb: how many hyperparameters change per step.
        constraints: list of :class:`kslim.nas.Constraint`.
        hypermodel: the ``keras_tuner.HyperModel`` (or ``hp -> model`` callable) used to build
            candidates for the constraint checks; required when ``constraints`` are given.
        max_tries: candidates drawn per trial before giving up (space exhausted / infeasible).
        worker_timeout: seconds (distributed mode) after which a silent worker is presumed dead;
            must exceed the longest trial. ``None``: wait forever (keras-tuner's behaviour).
        seed: random seed (perturbations and acceptance draws).
        history_file: name of the JSON history written (atomically) in the project directory after
            every trial; ``None`` to disable.
        hyperparameters, allow_new_entries, tune_new_entries, max_retries_per_trial,
        max_consecutive_failed_trials: as for ``keras_tuner.Oracle``.

    Example:
        >>> import keras_tuner
        >>> from kslim.nas import SimulatedAnnealingOracle
        >>> class Toy(keras_tuner.engine.base_tuner.BaseTuner):
        ...     def run_trial(self, trial, **kw):
        ...         hp = trial.hyperparameters
        ...         return {"score": -(hp.Int("x", 0, 9) - 7) ** 2}
        >>> oracle = SimulatedAnnealingOracle(keras_tuner.Objective("score", "max"), max_trials=8,
        ...                                   init_temperature=1.0, seed=1)
        >>> tuner = Toy(oracle, directory="/tmp/kslim_sa_doc", overwrite=True)
        >>> tuner.search(verbose=0)
        >>> len(oracle.history)
        8
    """

    def __init__(
        self,
        objective=None,
        max_trials=10,
        init_temperature=0.05,
        reduce_rate=0.85,
        initial_values=None,
        perturb=1,
        constraints=None,
        hypermodel=None,
        max_tries=100,
        worker_timeout=None,
        seed=None,
        history_file="sa_history.json",
        hyperparameters=None,
        allow_new_entries=True,
        tune_new_entries=True,
        max_retries_per_trial=0,
        max_consecutive_failed_trials=3,
    ):
        if max_trials is None or int(max_trials) < 1:
            raise KslimValueError(f"max_trials must be a positive integer, got {max_trials!r}.")
        if not (isinstance(init_temperature, (int, float)) and init_temperature > 0):
            raise KslimValueError(f"init_temperature must be > 0, got {init_temperature!r}.")
        if not (isinstance(reduce_rate, (int, float)) and 0 < reduce_rate <= 1):
            raise KslimValueError(f"reduce_rate must be in (0, 1], got {reduce_rate!r}.")
        if int(perturb) < 1:
            raise KslimValueError(f"perturb must be >= 1, got {perturb!r}.")
        if initial_values is not None and not isinstance(initial_values, dict):
            raise KslimTypeError(f"initial_values must be a dict of hyperparameter values, got {initial_values!r}.")
        constraints = list(constraints or [])
        for c in constraints:
            if not isinstance(c, Constraint):
                raise KslimTypeError(f"constraints must be kslim.nas.Constraint objects, got {c!r}.")
        if constraints and hypermodel is None:
            raise KslimValueError(
                "constraints are checked on the built candidate model: pass hypermodel=<the same "
                "HyperModel or build function given to the Tuner> to SimulatedAnnealingOracle."
            )
        super().__init__(
            objective=objective,
            max_trials=int(max_trials),
            hyperparameters=hyperparameters,
            allow_new_entries=allow_new_entries,
            tune_new_entries=tune_new_entries,
            seed=seed,
            max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
        )
        self.init_temperature = float(init_temperature)
        self.reduce_rate = float(reduce_rate)
        self.initial_values = dict(initial_values or {})
        self.perturb = int(perturb)
        self.constraints = constraints
        if hypermodel is not None and not (callable(getattr(hypermodel, "build", None)) or callable(hypermodel)):
            raise KslimTypeError(
                f"hypermodel must be a keras_tuner.HyperModel (anything with build(hp)) or a function "
                f"hp -> keras.Model, got {hypermodel!r}."
            )
        self.hypermodel = hypermodel
        self.max_tries = int(max_tries)
        self.worker_timeout = worker_timeout
        self.history_file = history_file

        self._rng = np.random.default_rng(self.seed)
        self._step = 0  # finished (scored) trials: the temperature exponent
        self._current_values = None
        self._current_score = None
        self._best_values = None
        self._best_score = None
        self._records = {}  # trial_id -> history record
        self._rejected = []  # rejected candidates (capped)
        self._n_rejected = 0
        self._measures = {}  # values hash -> {constraint name: value} (or {"error": msg})
        self._feasibility_checked = False
        self._closest_values, self._closest_excess = None, math.inf  # least-violating rejection
        self._last_seen = {}  # tuner_id -> time of last contact (distributed mode)
        self._reaper = None

    # ----------------------------------------------------------------------------- properties
    @property
    def temperature(self):
        """The current temperature ``init_temperature * reduce_rate ** k``."""
        return self.init_temperature * self.reduce_rate ** self._step

    @property
    def history(self):
        """One dict per trial, in start order: values, status, score, constraint measures, and the
        SA decision (temperature, current score before, acceptance probability, accepted)."""
        return [dict(self._records[t]) for t in self.start_order if t in self._records]

    @property
    def rejected(self):
        """Candidates rejected before training: ``{"values", "reason", "measures", "before_trial"}``."""
        return list(self._rejected)

    @property
    def current(self):
        """``(values, score)`` of the current SA point (``(None, None)`` before the first result)."""
        return (dict(self._current_values) if self._current_values is not None else None), self._current_score

    # ------------------------------------------------------------------------- value handling
    def _sign(self):
        return 1.0 if self.objective.direction == "max" else -1.0

    def _fill(self, values, randomize_new=False):
        """Active values of the space for ``values`` (missing: default, or random if ``randomize_new``)."""
        hps = hp_module.HyperParameters()
        for hp in self.hyperparameters.space:
            hps.merge([hp])
            if hps.is_active(hp):
                if hp.name in values:
                    v = values[hp.name]
                elif randomize_new:
                    v = hp.prob_to_value(float(self._rng.random()))
                else:
                    v = hp.default
                hps.values[hp.name] = _py(v)
        return dict(hps.values)

    def _perturb(self, base, k):
        values = self._fill(base)
        names = [
            hp.name for hp in self.hyperparameters.space
            if hp.name in values and not isinstance(hp, hp_module.Fixed) and _n_values(hp) != 1
        ]
        if not names:
            return values
        by_name = {hp.name: hp for hp in self.hyperparameters.space}
        for i in self._rng.permutation(len(names))[: min(k, len(names))]:
            hp = by_name[names[int(i)]]
            old = values[hp.name]
            for _ in range(20):
                new = _py(hp.prob_to_value(float(self._rng.random())))
                if new != old:
                    break
            values[hp.name] = new
        # (de)activated conditional hyperparameters: new ones get random values
        return self._fill(values, randomize_new=True)

    def _hash(self, values):
        return self._compute_values_hash(values)

    # ---------------------------------------------------------------------------- constraints
    def _build(self, values):
        hp = self.hyperparameters.copy()
        hp.values = dict(values)
        build = getattr(self.hypermodel, "build", None)
        return build(hp) if callable(build) else self.hypermodel(hp)

    def _measure(self, values):
        """``(ok, measures, reason)`` for a candidate; measurements are cached by values."""
        if not self.constraints:
            return True, {}, None
        key = self._hash(values)
        measures = self._measures.get(key)
        if measures is None:
            measures = {}
            try:
                model = self._build(values)
            except Exception as e:  # a hypermodel that fails to build for these values
                measures = {"error": f"build failed: {type(e).__name__}: {e}"}
            else:
                for c in self.constraints:
                    try:
                        measures[c.name] = float(c.measure(model))
                    except Exception as e:
                        measures = {"error": f"{c.name} could not be measured: {type(e).__name__}: {e}"}
                        break
                del model
            self._measures[key] = measures
        if "error" in measures:
            return False, measures, measures["error"]
        over = [c.describe(measures[c.name]) for c in self.constraints if measures[c.name] > c.limit]
        return not over, measures, ("; ".join(over) or None)

    def _reject(self, values, measures, reason, trial_id):
        self._n_rejected += 1
        if "error" not in measures:
            excess = max(measures[c.name] / c.limit for c in self.constraints)
            if excess < self._closest_excess:
                self._closest_values, self._closest_excess = values, excess
        if len(self._rejected) < _MAX_REJECTED_KEPT:
            self._rejected.append({"values": values, "reason": reason, "measures": measures,
                                   "before_trial": trial_id})

    def _check_feasible(self):
        """Fail early if even the smallest candidate of the space is over a limit."""
        self._feasibility_checked = True
        if not self.constraints:
            return
        smallest = getattr(self.hypermodel, "smallest_values", None)
        if not callable(smallest):
            return
        values = self._fill(smallest())
        ok, measures, reason = self._measure(values)
        if not ok and "error" not in measures:
            raise InfeasibleConstraintError(
                f"no candidate can meet the constraints: even the smallest configuration of the search "
                f"space has {reason} ({values}). Relax the limit or use a smaller search space."
            )

    # ------------------------------------------------------------------------------ proposals
    def populate_space(self, trial_id):
        if not self._feasibility_checked:
            self._check_feasible()
        duplicates = 0
        feasible_seen = self._current_values is not None or any(
            r.get("status") != "REJECTED" for r in self._records.values())
        for attempt in range(self.max_tries):
            if self._current_values is None and not self._records and attempt == 0:
                candidate = self._fill(self.initial_values)
            else:
                # before any result: walk from the least-violating candidate seen (towards feasibility)
                base = self._current_values if self._current_values is not None else (
                    self._closest_values or self.initial_values)
                if attempt >= self.max_tries // 2:  # stuck around the current point: jump anywhere
                    candidate = self._fill({}, randomize_new=True)
                else:
                    candidate = self._perturb(base, self.perturb + attempt // 10)
            key = self._hash(candidate)
            if key in self._tried_so_far:
                duplicates += 1
                continue
            known = key in self._measures
            ok, measures, reason = self._measure(candidate)
            if not ok:
                if known:  # rejected before: already recorded
                    duplicates += 1
                else:
                    self._reject(candidate, measures, reason, trial_id)
                continue
            self._records[trial_id] = {
                "trial_id": trial_id, "values": candidate, "status": TrialStatus.RUNNING,
                "score": None, **{k: v for k, v in measures.items()},
                "temperature": self.temperature,
            }
            return {"status": TrialStatus.RUNNING, "values": candidate}
        if not feasible_seen and self.constraints and self._n_rejected:
            errors = [r["reason"] for r in self._rejected[-self.max_tries:]]
            if all(e.startswith("build failed") for e in errors):
                raise ModelError(
                    f"the hypermodel failed to build all {self.max_tries} candidates tried; last error: {errors[-1]}"
                )
            best = self._closest_rejection()
            raise InfeasibleConstraintError(
                f"no candidate met the constraints in {self.max_tries} draws "
                f"({self._n_rejected} rejected, closest: {best}). Relax the limit or shrink the search space."
            )
        # every nearby configuration was tried (or is infeasible): the space is exhausted
        return {"status": TrialStatus.STOPPED, "values": None}

    def _closest_rejection(self):
        best, best_excess = None, math.inf
        for r in self._rejected:
            m = r["measures"]
            if "error" in m:
                continue
            excess = max(m[c.name] / c.limit for c in self.constraints)
            if excess < best_excess:
                best, best_excess = r["reason"], excess
        return best or (self._rejected[-1]["reason"] if self._rejected else "none")

    # ---------------------------------------------------------------------------- lifecycle
    @synchronized
    def create_trial(self, tuner_id):
        self._last_seen[tuner_id] = time.time()
        if self.worker_timeout and dist_utils.is_chief_oracle() and self._reaper is None:
            self._start_reaper()
        if (self.max_trials and len(self.trials) >= self.max_trials and not self._retry_queue
                and self.max_retries_per_trial > 0 and tuner_id not in self.ongoing_trials
                and self.ongoing_trials):
            # budget handed out, but another worker's trial may still fail and need a retry:
            # keep this worker waiting (IDLE) instead of letting it exit
            time.sleep(0.1)
            return trial_module.Trial(self.get_space(), status=TrialStatus.IDLE)
        trial = super().create_trial(tuner_id)
        if trial.status == TrialStatus.RUNNING and trial.trial_id in self._records:
            rec = self._records[trial.trial_id]
            rec["status"] = TrialStatus.RUNNING
            rec.setdefault("tuner_id", tuner_id)
            rec["runs"] = rec.get("runs", 0) + 1
            rec["tuner_ids"] = sorted(set(rec.get("tuner_ids", [])) | {tuner_id})
            self.save()
        return trial

    @synchronized
    def update_trial(self, trial_id, metrics, step=0):
        self._touch(trial_id)
        return super().update_trial(trial_id, metrics, step=step)

    @synchronized
    def end_trial(self, trial):
        self._touch(trial.trial_id)
        if trial.trial_id in self.end_order:
            # a late report of a trial already ended (e.g. a worker presumed dead that was only slow)
            return
        super().end_trial(trial)
        trial = self.trials[trial.trial_id]
        rec = self._records.setdefault(trial.trial_id, {
            "trial_id": trial.trial_id, "values": dict(trial.hyperparameters.values)})
        rec["status"] = trial.status
        if trial.status == TrialStatus.COMPLETED:
            self._anneal(trial, rec)
        elif trial.status == TrialStatus.FAILED:
            rec["message"] = _last_line(trial.message)
        self.save()

    def _anneal(self, trial, rec):
        score = float(trial.score)
        values = dict(trial.hyperparameters.values)
        temperature = self.temperature
        if self._current_score is None:
            p, accepted = 1.0, True
        else:
            delta = self._sign() * (score - self._current_score)
            p = 1.0 if delta >= 0 else math.exp(delta / temperature)
            accepted = bool(delta >= 0 or self._rng.random() < p)
        rec.update({
            "score": score, "temperature": temperature, "current_score_before": self._current_score,
            "accept_probability": p, "accepted": accepted, "step": self._step,
        })
        if accepted:
            self._current_values, self._current_score = values, score
        if self._best_score is None or self._sign() * (score - self._best_score) > 0:
            self._best_values, self._best_score = values, score
        rec["best_score"] = self._best_score
        self._step += 1

    # -------------------------------------------------------------------- dead workers (chief)
    def _touch(self, trial_id):
        for tuner_id, t in self.ongoing_trials.items():
            if t.trial_id == trial_id:
                self._last_seen[tuner_id] = time.time()

    def _start_reaper(self):
        interval = max(0.5, min(5.0, float(self.worker_timeout) / 4))

        def loop():
            while True:
                time.sleep(interval)
                try:
                    self.reap_dead_workers()
                except Exception:  # pragma: no cover - never kill the chief from this thread
                    traceback.print_exc()

        self._reaper = threading.Thread(target=loop, name="kslim-sa-reaper", daemon=True)
        self._reaper.start()

    @synchronized
    def reap_dead_workers(self, now=None):
        """End the trials of workers silent for more than ``worker_timeout`` s (retried or FAILED).

        Called periodically by the chief; returns the tuner ids presumed dead.
        """
        if not self.worker_timeout:
            return []
        now = time.time() if now is None else now
        dead = [tid for tid in list(self.tuner_ids)
                if now - self._last_seen.get(tid, now) > float(self.worker_timeout)]
        for tuner_id in dead:
            trial = self.ongoing_trials.pop(tuner_id, None)
            self.tuner_ids.discard(tuner_id)
            if trial is None:
                continue
            trial.status = TrialStatus.INVALID
            trial.message = f"worker {tuner_id!r} silent for more than {self.worker_timeout}s (presumed dead)"
            self._run_times[trial.trial_id] += 1
            rec = self._records.get(trial.trial_id)
            if not self._retry(trial):  # sets FAILED when out of retries
                self.end_order.append(trial.trial_id)
                if rec is not None:
                    rec.update(status=trial.status, message=trial.message)
            elif rec is not None:
                rec.update(status="RETRY", message=trial.message)
            self._save_trial(trial)
        if dead:
            self.save()
        return dead

    # -------------------------------------------------------------------------------- state
    def get_state(self):
        state = super().get_state()
        state["simulated_annealing"] = {
            "step": self._step,
            "current_values": self._current_values,
            "current_score": self._current_score,
            "best_values": self._best_values,
            "best_score": self._best_score,
            "rng": self._rng.bit_generator.state,
            "records": self._records,
            "rejected": self._rejected,
            "n_rejected": self._n_rejected,
            "measures": self._measures,
            "feasibility_checked": self._feasibility_checked,
            "closest": [self._closest_values, None if math.isinf(self._closest_excess) else self._closest_excess],
        }
        return state

    def set_state(self, state):
        super().set_state(state)
        sa = state.get("simulated_annealing")
        if not sa:
            return
        self._step = int(sa["step"])
        self._current_values = sa["current_values"]
        self._current_score = sa["current_score"]
        self._best_values = sa["best_values"]
        self._best_score = sa["best_score"]
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = sa["rng"]
        self._records = dict(sa["records"])
        self._rejected = list(sa["rejected"])
        self._n_rejected = int(sa["n_rejected"])
        self._measures = dict(sa["measures"])
        self._feasibility_checked = bool(sa["feasibility_checked"])
        values, excess = sa.get("closest", [None, None])
        self._closest_values, self._closest_excess = values, (math.inf if excess is None else float(excess))

    def save(self):
        # atomic (a kill while saving leaves the previous state); then the readable history
        atomic_write_json(self._get_oracle_fname(), self.get_state())
        if self.history_file:
            self.export_history(f"{self._project_dir}/{self.history_file}")

    # -------------------------------------------------------------------------------- export
    def summary(self):
        """The search as a JSON-able dict: settings, trials (``history``), rejections, best."""
        constraints = [{"name": c.name, "limit": c.limit, "unit": c.unit, "type": type(c).__name__}
                       for c in self.constraints]
        return {
            "oracle": type(self).__name__,
            "objective": self.objective.name,
            "direction": self.objective.direction,
            "settings": {
                "max_trials": self.max_trials, "init_temperature": self.init_temperature,
                "reduce_rate": self.reduce_rate, "perturb": self.perturb, "seed": self.seed,
                "initial_values": self.initial_values, "max_tries": self.max_tries,
            },
            "constraints": constraints,
            "trials": self.history,
            "rejected": self._rejected,
            "n_rejected": self._n_rejected,
            "best": {"values": self._best_values, "score": self._best_score},
            "current": {"values": self._current_values, "score": self._current_score,
                        "temperature": self.temperature},
        }

    def export_history(self, path):
        """Write :meth:`summary` as JSON to ``path`` (atomically); returns the path."""
        return atomic_write_json(path, self.summary())


def _n_values(hp):
    if isinstance(hp, hp_module.Choice):
        return len(hp.values)
    if isinstance(hp, hp_module.Boolean):
        return 2
    if isinstance(hp, hp_module.Int) and hp.step is not None:
        return hp._get_n_values()
    return None


def _py(v):
    if isinstance(v, np.generic):
        return v.item()
    return v


def _last_line(message):
    lines = [ln for ln in (message or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""
