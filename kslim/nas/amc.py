"""``amc_prune``: AMC, a DDPG agent choosing per-group pruning ratios (He et al., ECCV 2018; NNI's ``AMCPruner``).

The agent walks the prunable channel groups of a :class:`kslim.prune.FilterPruner` in graph order. For
each group it sees a state (the group's index, producer type, channels in and out, kernel size,
stride, the MACs that scale with it, the MACs already removed, the MACs of the groups still to come,
its previous action; each feature scaled to [0, 1] over the groups) and answers a ratio in
``[0, action_max]``. The resource-constrained variant of the paper is used: each action is raised to
the smallest ratio that keeps the FLOPs budget reachable when every later group is pruned by
``action_max``, so every episode meets the target (the MACs are counted exactly, without building the
model, by :meth:`FilterPruner.estimate_macs`). The episode's pruned model is scored by ``eval_fn``
(one-shot, no fine-tuning, as in the paper's search) and that reward, minus a moving-average
baseline, trains an actor and a critic (Keras MLPs) by DDPG: target networks updated softly by
``tau``, a replay buffer, truncated-normal exploration noise whose width decays per episode, and
``warmup`` episodes of uniformly random actions first.

A latency budget (``max_latency`` milliseconds measured by ``latency_fn(model)``) cannot be clipped
per step; an episode over it is penalised (reward ``score - (latency / max_latency - 1)``) and never
chosen as the best.
"""

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from kslim.errors import KslimTypeError, KslimValueError, ModelError
from kslim.nas.constraints import InfeasibleConstraintError
from kslim.validation import check_model, check_ratio

_STATE_FILE = "amc_state.json"
_NETS = ("actor", "critic", "actor_target", "critic_target")
_FEATURES = ("index", "kind", "in_channels", "out_channels", "kernel", "stride", "macs", "reduced", "rest",
             "previous")
#: reward choices: the score itself (NNI's ``acc_reward``), or the paper's -error * log(FLOPs)
REWARDS = ("score", "error_flops")


@dataclasses.dataclass
class AMCResult:
    """What :func:`amc_prune` returns.

    Attributes:
        model: the best pruned model (not fine-tuned).
        ratios: ``{group name: ratio}`` of that model.
        score: its ``eval_fn`` score.
        flops, flops_before: FLOPs of the pruned and the original model (:func:`kslim.analysis.flops`).
        history: one record per episode: ``episode``, ``ratios``, ``score``, ``reward``, ``flops``,
            ``latency`` (or None), ``feasible``, ``warmup``.
        best_episode: index in ``history`` of the best feasible episode.
        directory: the checkpoint folder (None when none was given).
    """

    model: object
    ratios: dict
    score: float
    flops: float
    flops_before: float
    history: list
    best_episode: int
    directory: Path = None

    @property
    def flops_reduction(self):
        """Fraction of the FLOPs removed."""
        return 1.0 - self.flops / self.flops_before


def _check_int(value, what, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise KslimValueError(f"amc_prune(): {what} must be an integer >= {low}, got {value!r}.")
    return int(value)


def _check_positive(value, what, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not (
            math.isfinite(float(value)) and float(value) > 0 and (high is None or float(value) <= high)):
        bound = f"in (0, {high:g}]" if high is not None else "> 0"
        raise KslimValueError(f"amc_prune(): {what} must be a number {bound}, got {value!r}.")
    return float(value)


def _layer_features(pruner, group):
    """(kind, in channels, kernel size, stride) of the group's first producer."""
    import keras

    layer = pruner.graph.layers[group.layer_names[0]] if group.layer_names else None
    kind, cin, kernel, stride = 3.0, 0.0, 1.0, 1.0
    if layer is not None:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kind = 1.0
        elif isinstance(layer, keras.layers.Dense):
            kind = 2.0
        elif hasattr(layer, "kernel_size"):
            kind = 0.0
        kernel = float(np.prod(getattr(layer, "kernel_size", (1,))))
        stride = float(np.prod(getattr(layer, "strides", (1,))))
        try:
            cin = float(layer.input.shape[-1])
        except (AttributeError, ValueError, TypeError):
            cin = 0.0
    return kind, cin, kernel, stride


class _Episode:
    """The environment: the groups, their static features, the budget clipping."""

    def __init__(self, pruner, action_max, target_macs):
        self.pruner = pruner
        self.names = [g.name for g in pruner.groups]
        self.action_max = action_max
        self.target = target_macs
        self.before = float(pruner.macs_before)
        top = action_max
        static = []
        for i, g in enumerate(pruner.groups):
            own = self.before - pruner.estimate_macs({g.name: top})
            kind, cin, kernel, stride = _layer_features(pruner, g)
            static.append([float(i), kind, cin, float(g.size), kernel, stride, own])
        self.static = np.asarray(static, dtype=np.float64)
        self.own = self.static[:, 6]

    def macs(self, ratios):
        return float(self.pruner.estimate_macs(ratios))

    def state(self, t, ratios, previous):
        reduced = self.before - self.macs(ratios) if ratios else 0.0
        rest = float(self.own[t + 1:].sum())
        return np.concatenate([self.static[t], [reduced, rest, previous]])

    def lowest(self, t, ratios):
        """The smallest ratio of group ``t`` keeping the target reachable (later groups at action_max)."""
        if self.target is None:
            return 0.0
        later = {n: self.action_max for n in self.names[t + 1:]}

        def fits(a):
            return self.macs({**ratios, self.names[t]: a, **later}) <= self.target

        if fits(0.0):
            return 0.0
        g = self.pruner.groups[t]
        lo, hi = 0.0, self.action_max  # fits(action_max) holds: checked before the search
        for _ in range(max(4, int(math.ceil(math.log2(max(g.size, 2)))) + 2)):
            mid = (lo + hi) / 2
            if fits(mid):
                hi = mid
            else:
                lo = mid
        return hi


class _Agent:
    """DDPG actor/critic (Keras MLPs), target networks, Adam, replay buffer, moving-average baseline."""

    def __init__(self, n_states, hidden, lr_actor, lr_critic, tau, discount, seed):
        import keras

        self.tau, self.discount = float(tau), float(discount)

        def init(k):
            return keras.initializers.GlorotUniform(seed=seed * 1000 + k)

        def actor():
            s = keras.Input((n_states,))
            h = keras.layers.Dense(hidden, "relu", kernel_initializer=init(1))(s)
            h = keras.layers.Dense(hidden, "relu", kernel_initializer=init(2))(h)
            a = keras.layers.Dense(1, "sigmoid", kernel_initializer=init(3))(h)
            return keras.Model(s, a)

        def critic():
            s, a = keras.Input((n_states,)), keras.Input((1,))
            h = keras.layers.Add()([keras.layers.Dense(hidden, kernel_initializer=init(4))(s),
                                    keras.layers.Dense(hidden, kernel_initializer=init(5))(a)])
            h = keras.layers.Dense(hidden, "relu", kernel_initializer=init(6))(keras.layers.ReLU()(h))
            return keras.Model([s, a], keras.layers.Dense(1, kernel_initializer=init(7))(h))

        self.actor, self.critic = actor(), critic()
        self.actor_target, self.critic_target = actor(), critic()
        self.actor_target.set_weights(self.actor.get_weights())
        self.critic_target.set_weights(self.critic.get_weights())
        self.opt_actor = keras.optimizers.Adam(lr_actor)
        self.opt_critic = keras.optimizers.Adam(lr_critic)
        self.opt_actor.build(self.actor.trainable_variables)
        self.opt_critic.build(self.critic.trainable_variables)
        self._step = None

    def act(self, state):
        return float(np.asarray(self.actor(state[None], training=False))[0, 0])

    def update(self, s, a, r, s1, done):
        import tensorflow as tf

        if self._step is None:
            actor, critic, at, ct = self.actor, self.critic, self.actor_target, self.critic_target

            @tf.function(reduce_retracing=True)
            def step(s, a, r, s1, done):
                q_next = ct([s1, at(s1)])
                y = r + self.discount * (1.0 - done) * q_next
                with tf.GradientTape() as tape:
                    loss_c = tf.reduce_mean(tf.square(critic([s, a]) - y))
                grads = tape.gradient(loss_c, critic.trainable_variables)
                self.opt_critic.apply(grads, critic.trainable_variables)
                with tf.GradientTape() as tape:
                    loss_a = -tf.reduce_mean(critic([s, actor(s)]))
                grads = tape.gradient(loss_a, actor.trainable_variables)
                self.opt_actor.apply(grads, actor.trainable_variables)
                for net, target in ((actor, at), (critic, ct)):
                    for w, wt in zip(net.weights, target.weights):
                        wt.assign(self.tau * w + (1.0 - self.tau) * wt)
                return loss_c

            self._step = step
        f = np.float32
        return float(self._step(s.astype(f), a.astype(f)[:, None], r.astype(f)[:, None], s1.astype(f),
                                done.astype(f)[:, None]))

    def nets(self):
        return dict(zip(_NETS, (self.actor, self.critic, self.actor_target, self.critic_target)))

    def optimizer_arrays(self):
        return {f"{k}_{i}": np.asarray(v) for k, o in (("actor", self.opt_actor), ("critic", self.opt_critic))
                for i, v in enumerate(o.variables)}

    def load_optimizers(self, arrays):
        for k, o in (("actor", self.opt_actor), ("critic", self.opt_critic)):
            for i, v in enumerate(o.variables):
                v.assign(arrays[f"{k}_{i}"])


def _truncated_normal(rng, mu, sigma, low, high):
    for _ in range(100):
        x = rng.normal(mu, sigma)
        if low <= x <= high:
            return float(x)
    return float(np.clip(mu, low, high))


def _fingerprint(names, target, action_max, seed, reward, max_latency, hidden):
    return {"groups": names, "target_macs": target, "action_max": action_max, "seed": seed, "reward": reward,
            "max_latency": max_latency, "hidden": hidden}


def _save(directory, agent, state):
    """Checkpoint: the nets' ``.weights.h5`` and optimizer ``.npz`` (episode-tagged, renamed into place),
    then ``amc_state.json`` naming them (written last, atomically); older files are removed."""
    from kslim._io import atomic_path, atomic_write_json

    directory.mkdir(parents=True, exist_ok=True)
    tag = f"ep{state['episode']:05d}"
    files = {}
    for name, net in agent.nets().items():
        path = directory / f"amc_{name}_{tag}.weights.h5"
        with atomic_path(path, suffix=".weights.h5") as tmp:
            os.unlink(tmp)
            net.save_weights(tmp)
        files[name] = path.name
    opt = directory / f"amc_optimizers_{tag}.npz"
    with atomic_path(opt, suffix=".npz") as tmp:
        np.savez(tmp, **agent.optimizer_arrays())
    files["optimizers"] = opt.name
    state = {**state, "files": files}
    atomic_write_json(directory / _STATE_FILE, state)
    keep = set(files.values())
    for p in directory.glob("amc_*"):
        if p.name not in keep and p.name != _STATE_FILE and not p.name.startswith("."):
            p.unlink(missing_ok=True)


def _load(directory, agent):
    from kslim._io import read_json

    state = read_json(directory / _STATE_FILE, "AMC checkpoint")
    for name, net in agent.nets().items():
        net.load_weights(str(directory / state["files"][name]))
    with np.load(directory / state["files"]["optimizers"], allow_pickle=False) as z:
        agent.load_optimizers({k: z[k] for k in z.files})
    return state


def amc_prune(model, eval_fn, flops_reduction=None, *, episodes=100, warmup=None, importance=None, pruner=None,
              action_max=0.8, latency_fn=None, max_latency=None, reward="score", hidden=300, lr_actor=1e-4,
              lr_critic=1e-3, tau=0.01, discount=1.0, batch_size=64, replay_size=None, noise=0.5,
              noise_decay=0.95, baseline_alpha=0.5, updates=None, seed=0, directory=None, overwrite=False, verbose=0,
              **pruner_options):
    """Search per-group pruning ratios with AMC's DDPG agent; return the best pruned model.

    Each episode the agent picks one ratio per prunable channel group of ``pruner`` (clipped so the
    FLOPs budget stays reachable; see the module docstring), the model is pruned one-shot
    (:meth:`FilterPruner.prune`) and scored by ``eval_fn``. The best feasible episode's model is
    returned. Defaults are AMC's reference ones (hidden 300, actor lr 1e-4, critic lr 1e-3,
    tau 0.01, batch 64, noise 0.5 decaying by 0.95 per episode, baseline moving average 0.5, discount
    1); the paper runs 100 warm-up and 300 search episodes, far more than a test needs. With a
    search of tens of episodes the agent gets few gradient steps at these settings;
    ``scripts/bench_prune_methods.py`` runs 40 episodes with ``updates=40, lr_actor=1e-3, noise=0.2``.

    Args:
        model: a built Keras model (functional or Sequential).
        eval_fn: ``model -> float``, higher is better (e.g. validation accuracy in [0, 1]).
        flops_reduction: the share of FLOPs to remove, in (0, 1); every episode meets it.
        episodes: total episodes (warm-up included); a resumed search runs only the missing ones.
        warmup: episodes of random actions before the agent acts and learns (default: a quarter).
        importance, pruner, **pruner_options: how channels are ranked, as for
            :func:`kslim.prune.make_pruner` (``skip``, ``keep_classifier``, ``round_to`` ...).
        action_max: the largest ratio of one group, in (0, 1).
        latency_fn, max_latency: an optional latency budget in ms measured by ``latency_fn(model)``.
        reward: ``"score"`` (NNI's default: the score, the budget being enforced) or ``"error_flops"``
            (the paper's ``-(1 - score) * log(FLOPs)``, for scores in [0, 1]).
        hidden, lr_actor, lr_critic, tau, discount, batch_size, replay_size, noise, noise_decay,
        baseline_alpha: DDPG settings (``replay_size`` transitions, default ``100 x`` the groups).
        updates: gradient steps per episode after the warm-up (default: one per group, as AMC).
        seed: seeds the networks, the noise and the replay sampling: same seed, same search.
        directory: a folder checkpointed after every episode; calling again with it continues the
            search (``overwrite=True`` starts over). None: no checkpoint.

    Returns:
        :class:`AMCResult`.

    Example:
        >>> import keras, numpy as np
        >>> from kslim.nas import amc_prune
        >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(8, 3, name="c1"),
        ...                       keras.layers.Conv2D(8, 3, name="c2"), keras.layers.GlobalAveragePooling2D(),
        ...                       keras.layers.Dense(2, name="head")])
        >>> res = amc_prune(m, lambda p: 1.0, flops_reduction=0.5, episodes=3, warmup=2, hidden=16,
        ...                 batch_size=2)
        >>> res.flops_reduction >= 0.5, len(res.history)
        (True, 3)
    """
    from kslim.analysis import flops as count_flops
    from kslim.prune import make_pruner

    check_model(model, "amc_prune()")
    if not callable(eval_fn):
        raise KslimTypeError(f"amc_prune(): eval_fn must be callable (model -> score), got {eval_fn!r}.")
    if flops_reduction is None and max_latency is None:
        raise KslimValueError("amc_prune(): needs a goal: flops_reduction=<fraction to remove> and/or "
                              "max_latency=<ms> (with latency_fn).")
    if flops_reduction is not None:
        flops_reduction = check_ratio(flops_reduction, "amc_prune(): flops_reduction", low_open=True,
                                      meaning="the share of FLOPs removed")
    if max_latency is not None:
        max_latency = _check_positive(max_latency, "max_latency")
        if latency_fn is None or not callable(latency_fn):
            raise KslimTypeError(f"amc_prune(): max_latency needs latency_fn (model -> ms), got {latency_fn!r}.")
    elif latency_fn is not None and not callable(latency_fn):
        raise KslimTypeError(f"amc_prune(): latency_fn must be callable (model -> ms), got {latency_fn!r}.")
    episodes = _check_int(episodes, "episodes", 1)
    warmup = max(1, episodes // 4) if warmup is None else _check_int(warmup, "warmup", 0)
    action_max = check_ratio(action_max, "amc_prune(): action_max", low_open=True,
                             meaning="the largest ratio of one group")
    if reward not in REWARDS:
        raise KslimValueError(f"amc_prune(): reward must be one of {REWARDS}, got {reward!r}.")
    hidden = _check_int(hidden, "hidden", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    if replay_size is not None:
        replay_size = _check_int(replay_size, "replay_size", 1)
    for what, v in (("lr_actor", lr_actor), ("lr_critic", lr_critic), ("noise", noise)):
        _check_positive(v, what)
    discount = check_ratio(discount, "amc_prune(): discount", high_open=False)
    for what, v in (("tau", tau), ("noise_decay", noise_decay),
                    ("baseline_alpha", baseline_alpha)):
        _check_positive(v, what, high=1.0)
    seed = _check_int(seed, "seed", 0)
    if updates is not None:
        updates = _check_int(updates, "updates", 1)
    if directory is not None:
        from kslim.validation import check_output_dir

        directory = check_output_dir(directory, "amc_prune(): directory")

    pruner = make_pruner(model, pruner, importance, where="amc_prune()", **pruner_options)
    if not pruner.groups:
        raise ModelError(f"amc_prune(): model {model.name!r} has no prunable channel group.")
    before = float(pruner.macs_before)
    target = None if flops_reduction is None else (1.0 - flops_reduction) * before
    names = [g.name for g in pruner.groups]
    if target is not None:
        most = float(pruner.estimate_macs({n: action_max for n in names}))
        if most > target:
            raise InfeasibleConstraintError(
                f"amc_prune(): flops_reduction {flops_reduction:g} is not reachable: pruning action_max="
                f"{action_max:g} of every group removes only {1 - most / before:.3f} of the FLOPs. Raise "
                "action_max, relax the target, or prune the groups kept by the pruner (skip/keep_classifier).")

    env = _Episode(pruner, action_max, target)
    n = len(names)
    agent = _Agent(len(_FEATURES), hidden, lr_actor, lr_critic, tau, discount, seed)
    rng = np.random.default_rng(seed)
    capacity = replay_size or 100 * n
    fp = _fingerprint(names, target, action_max, seed, reward, max_latency, hidden)
    state = {"version": 1, "config": fp, "episode": 0, "history": [], "best": None, "baseline": None,
             "rng": rng.bit_generator.state, "buffer": {"s": [], "a": [], "r": [], "s1": [], "done": []}}
    if directory is not None and (directory / _STATE_FILE).is_file() and not overwrite:
        saved = _load(directory, agent)
        if saved.get("config") != fp:
            raise KslimValueError(
                f"amc_prune(): {directory} holds an AMC search of another setting (groups, target, seed, "
                "reward, max_latency or hidden differ); pass overwrite=True or another directory.")
        state = saved
        rng.bit_generator.state = state["rng"]
    buf = {k: [np.asarray(x, dtype=np.float32) for x in v] for k, v in state["buffer"].items()}

    while state["episode"] < episodes:
        ep = state["episode"]
        ratios, raw_states, actions = {}, [], []
        previous = 0.0
        for t in range(n):
            raw_states.append(env.state(t, ratios, previous))
            s = _normalised(env, raw_states)[-1]
            if ep < warmup:
                a = float(rng.uniform(0.0, action_max))
            else:
                mu = agent.act(s) * action_max
                a = _truncated_normal(rng, mu, noise * noise_decay ** (ep - warmup), 0.0, action_max)
            a = max(a, env.lowest(t, ratios))
            a = min(a, action_max)
            ratios[names[t]] = a
            actions.append(a)
            previous = a
        pruned = pruner.prune(ratios)
        score = float(eval_fn(pruned))
        if not math.isfinite(score):
            raise ModelError(f"amc_prune(): eval_fn returned {score} for ratios {ratios}.")
        macs = env.macs(ratios)
        latency = float(latency_fn(pruned)) if latency_fn is not None else None
        feasible = (target is None or macs <= target * (1 + 1e-9)) and (
            max_latency is None or latency <= max_latency)
        r = score if reward == "score" else -(1.0 - score) * math.log(max(2.0 * macs, 1.0))
        if max_latency is not None and latency > max_latency:
            r -= latency / max_latency - 1.0
        states = _normalised(env, raw_states)
        for t in range(n):
            nxt = states[t + 1] if t + 1 < n else states[t]
            for k, v in (("s", states[t]), ("a", np.float32(actions[t] / action_max)), ("r", np.float32(r)),
                         ("s1", nxt), ("done", np.float32(t == n - 1))):
                buf[k].append(np.asarray(v, dtype=np.float32))
        for k in buf:
            del buf[k][:-capacity]
        if ep >= warmup and len(buf["r"]) >= batch_size:
            for _ in range(updates or n):
                idx = rng.choice(len(buf["r"]), size=batch_size, replace=False)
                batch = {k: np.stack([buf[k][i] for i in idx]) for k in buf}
                mean = float(batch["r"].mean())
                base = state["baseline"]
                state["baseline"] = mean if base is None else base + baseline_alpha * (mean - base)
                agent.update(batch["s"], batch["a"], batch["r"] - state["baseline"], batch["s1"], batch["done"])
        record = {"episode": ep, "ratios": ratios, "score": score, "reward": r, "flops": 2.0 * macs,
                  "latency": latency, "feasible": bool(feasible), "warmup": ep < warmup}
        state["history"].append(record)
        best = state["best"]
        if feasible and (best is None or r > state["history"][best]["reward"]):
            state["best"] = ep
        state["episode"] = ep + 1
        if verbose:
            print(f"amc episode {ep + 1}/{episodes}: score {score:.4f} reward {r:.4f} "
                  f"FLOPs -{1 - macs / before:.1%}")
        if directory is not None:
            state["rng"] = rng.bit_generator.state
            state["buffer"] = {k: [x.tolist() for x in v] for k, v in buf.items()}
            _save(directory, agent, state)

    if state["best"] is None:
        raise ModelError(f"amc_prune(): none of the {len(state['history'])} episodes met the latency budget "
                         f"max_latency={max_latency} ms; relax it or raise flops_reduction/action_max.")
    best = state["history"][state["best"]]
    best_model = pruner.prune(best["ratios"])
    return AMCResult(model=best_model, ratios=dict(best["ratios"]), score=best["score"],
                     flops=float(count_flops(best_model).flops), flops_before=float(count_flops(model).flops),
                     history=state["history"], best_episode=state["best"], directory=directory)


def _normalised(env, raw_states):
    """The states so far, each feature divided by its largest magnitude over the groups' static
    features (index, kinds, channels ... MACs: known up front) and over the total MACs for the dynamic ones."""
    raw = np.asarray(raw_states, dtype=np.float64)
    scale = np.concatenate([np.maximum(np.abs(env.static).max(axis=0), 1e-12),
                            [env.before, env.before, 1.0]])
    return (raw / scale).astype(np.float32)


__all__ = ["amc_prune", "AMCResult", "REWARDS"]
