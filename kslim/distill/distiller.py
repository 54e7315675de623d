"""``Distiller``: a ``keras.Model`` that trains a student against a frozen teacher with plain ``fit``."""

import keras
from keras import ops

from kslim.distill.adaptor import FeatureAdaptor
from kslim.distill.features import _is_graph_model, feature_model, resolve_layer
from kslim.distill.pair import Pair
from kslim.errors import KslimTypeError, KslimValueError, ModelError
from kslim.validation import check_model


# temperature of the soft-label pair used when a Distiller is given nothing to learn from
DEFAULT_TEMPERATURE = 4.0


def _num_replicas():
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def _shape(t):
    return None if t is None else tuple(t.shape)


@keras.saving.register_keras_serializable(package="kslim")
class Distiller(keras.Model):
    """Train ``student`` on ``hard_weight * hard_loss + sum(pair.weight * pair loss)`` against ``teacher``.

    Each training/evaluation step runs the frozen teacher (``training=False``, no gradient) and the
    student on the same batch in **one** forward pass each: the teacher and student layers named
    by the pairs are tapped with feature-extractor models that share the networks' layers (nested
    models included, by path such as ``"backbone/conv1"``). It is a ``keras.Model`` overriding the
    ``compute_loss`` / ``compute_metrics`` / ``predict_step`` hooks, so ``compile``, ``fit``,
    ``evaluate``, callbacks, ``tf.data`` and ``tf.distribute`` strategies work as usual.

    Every term is reported as a metric (``keras.metrics.Mean``, unweighted value): ``hard_loss`` and
    ``f"{pair.name}_loss"`` (default names ``soft_label_loss``, ``l2_loss``, ``fsp_loss`` ...), so
    ``History`` and ``TensorBoard`` show each one next to ``loss`` (the weighted total, regularisers
    included) and the compiled metrics, which see the student's output. Callbacks that monitor a
    term need ``mode="min"`` (Keras infers the direction of ``loss`` and compiled metrics only), e.g.
    ``EarlyStopping(monitor="val_soft_label_loss", mode="min")``.

    Args:
        student: the ``keras.Model`` to train. ``distiller.student`` is that same object, trained: a
            normal Keras model to save, prune, quantize or export (adaptors are not in it).
        teacher: a trained ``keras.Model`` with the same input signature. It must be frozen
            (``teacher.trainable = False``) or ``freeze_teacher=True`` must be passed, which freezes
            it; a trainable teacher raises :class:`~kslim.errors.ModelError` rather than being
            silently frozen or, worse, updated.
        pairs: list of :class:`~kslim.distill.Pair` (or tuples ``(teacher, student, loss, weight)``
            / dicts of its arguments). With no pairs and no ``hard_loss`` there would be nothing to
            learn from: the distiller then uses soft-label distillation of the outputs,
            ``Pair(None, None, "soft_label", temperature=4.0)`` (as Keras' own distillation example
            does), and warns (``UserWarning``) so that the choice is visible.
        hard_loss: loss of the student's output against the labels, e.g.
            ``keras.losses.SparseCategoricalCrossentropy(from_logits=True)``. May instead be given as
            ``compile(loss=...)`` (not both). If neither, there is no hard-label term (labels are
            then only used by the compiled metrics; the data may be unlabelled).
        hard_weight: multiplier of the hard-label term.
        freeze_teacher: set ``teacher.trainable = False`` instead of raising when it is trainable.

    Calling the distiller returns ``{"output", "student", "teacher"}`` (student output and tapped
    tensors); ``predict`` returns the student's output only.

    Saving: ``distiller.save("d.keras")`` / ``keras.models.load_model`` round-trips (student, teacher,
    pairs, adaptors and their weights), but usually you keep ``distiller.student`` only.

    Example:
        >>> import keras
        >>> from kslim.models import mobilenet_v1, resnet
        >>> teacher = resnet(width=0.25); teacher.trainable = False
        >>> student = mobilenet_v1(width=0.25)
        >>> distiller = Distiller(
        ...     student, teacher,
        ...     pairs=[Pair("logits", "logits", "soft_label", temperature=4.0),
        ...            Pair("stage2_block1_out", "block3_pw_relu", "l2", weight=0.1, adaptor="auto")],
        ...     hard_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> distiller.compile(optimizer="adam", metrics=["accuracy"])
        >>> # distiller.fit(train_ds, epochs=3); distiller.student.save("student.keras")
    """

    def __init__(self, student, teacher, pairs=(), hard_loss=None, hard_weight=1.0, freeze_teacher=False,
                 name="distiller", **kwargs):
        super().__init__(name=name, **kwargs)
        for role, m in (("student", student), ("teacher", teacher)):
            check_model(m, f"Distiller({role}=)")
        if student is teacher:
            raise ModelError("student and teacher are the same model object; distil into a separate model.")
        self._check_inputs(student, teacher)
        if teacher.trainable_weights:
            if not freeze_teacher:
                raise ModelError(
                    f"teacher {teacher.name!r} is trainable ({len(teacher.trainable_weights)} trainable "
                    "weights): distillation must not update it. Set `teacher.trainable = False` or pass "
                    "`freeze_teacher=True`."
                )
            teacher.trainable = False
        if not student.trainable_weights:
            raise ModelError(f"student {student.name!r} has no trainable weights (student.trainable is False?).")

        self.student = student
        self.teacher = teacher
        if isinstance(pairs, (Pair, dict)):
            pairs = [pairs]
        self._pairs = tuple(Pair.coerce(p) for p in (pairs or ()))
        if not self._pairs and hard_loss is None:
            # nothing to learn from: a fit would end in Keras' "No gradients provided for any variable"
            import warnings

            warnings.warn(
                f"Distiller({student.name!r}, {teacher.name!r}) got no pairs and no hard_loss: distilling the "
                f"teacher's outputs with soft labels (Pair(None, None, 'soft_label', temperature="
                f"{DEFAULT_TEMPERATURE})), as Keras' distillation example does. Pass pairs=[...] to choose the "
                "terms (and hard_loss= or compile(loss=...) to add the labels).", UserWarning, stacklevel=2)
            self._pairs = (Pair(None, None, "soft_label", temperature=DEFAULT_TEMPERATURE),)
        self._pair_names = self._unique_names([p.label for p in self._pairs])
        self._hard_loss_arg = hard_loss
        self.hard_loss = self._get_loss(hard_loss) if hard_loss is not None else None
        try:
            self.hard_weight = float(hard_weight)
        except (TypeError, ValueError):
            raise KslimTypeError(f"hard_weight must be a number, got {hard_weight!r}.") from None
        self.freeze_teacher = bool(freeze_teacher)

        self._build_taps()
        self.adaptors = self._build_adaptors()
        self.hard_loss_tracker = keras.metrics.Mean(name="hard_loss")
        self.pair_trackers = [keras.metrics.Mean(name=f"{n}_loss") for n in self._pair_names]
        self.built = True

    # -------------------------------------------------------------------------------------------
    # construction helpers

    @staticmethod
    def _unique_names(labels):
        seen, out = {}, []
        for label in labels:
            k = seen.get(label, 0)
            out.append(label if k == 0 else f"{label}_{k}")
            seen[label] = k + 1
        return out

    @staticmethod
    def _get_loss(loss):
        try:
            fn = keras.losses.get(loss)
        except (ValueError, TypeError) as e:
            raise KslimValueError(f"hard_loss: {e}") from None
        if fn is None:
            raise KslimValueError(f"hard_loss: unknown loss {loss!r}.")
        return fn

    @staticmethod
    def _check_inputs(student, teacher):
        s_in, t_in = getattr(student, "inputs", None), getattr(teacher, "inputs", None)
        if not s_in or not t_in:
            return  # a subclassed model: checked when the first batch runs
        s_sig = [(tuple(t.shape[1:]), t.dtype) for t in s_in]
        t_sig = [(tuple(t.shape[1:]), t.dtype) for t in t_in]
        ok = len(s_sig) == len(t_sig) and all(
            len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b)) and da == db
            for (a, da), (b, db) in zip(s_sig, t_sig)
        )
        if not ok:
            fmt = (lambda sig: ", ".join(f"(None, {', '.join(map(str, s))}) {d}" for s, d in sig))
            raise ModelError(
                f"student {student.name!r} and teacher {teacher.name!r} have different input signatures: "
                f"student [{fmt(s_sig)}] vs teacher [{fmt(t_sig)}]. Both must take the same batch "
                "(resize or rebuild one of them)."
            )

    def _build_taps(self):
        """Resolve every pair's layer names and build one feature model per network."""
        keys = {"teacher": [], "student": []}  # canonical paths (None = model output), unique
        self._pair_keys = []
        for pair, label in zip(self._pairs, self._pair_names):
            entry = {}
            for role, model, names in (("teacher", self.teacher, pair.teacher), ("student", self.student,
                                                                                 pair.student)):
                resolved = []
                for n in names:
                    key = None if n is None else resolve_layer(model, n, role=f"pair {label!r}: {role}")
                    if key not in keys[role]:
                        keys[role].append(key)
                    resolved.append(key)
                entry[role] = resolved
            self._pair_keys.append(entry)
        self._keys = keys
        taps, shapes = {}, {}
        for role, model in (("teacher", self.teacher), ("student", self.student)):
            paths = [k for k in keys[role] if k is not None]
            if paths or _is_graph_model(model):
                tap = feature_model(model, paths)
                out = tap.output
                shapes[role] = {None: _shape(out["output"]) if not isinstance(out["output"], (list, tuple, dict))
                                else None}
                shapes[role].update({p: _shape(f) for p, f in zip(paths, out["features"])})
            else:  # subclassed model, output only
                tap = None
                shapes[role] = {None: None}
            taps[role] = tap
        # feature models share the networks' layers: keep them out of Keras' tracking (no duplicate
        # weights in trainable_weights / saved files)
        object.__setattr__(self, "_taps", taps)
        self._tap_shapes = shapes

    def _build_adaptors(self):
        """Validate each pair's shapes; create the adaptors it asks for. Returns the adaptor list."""
        adaptors = []
        self._pair_adaptors = []
        for pair, label, entry in zip(self._pairs, self._pair_names, self._pair_keys):
            t_shapes = [self._tap_shapes["teacher"][k] for k in entry["teacher"]]
            s_shapes = [self._tap_shapes["student"][k] for k in entry["student"]]
            idx = []
            for i, s_shape in enumerate(s_shapes):
                t_shape = t_shapes[i] if i < len(t_shapes) else None
                want = pair.adaptor
                known = s_shape is not None and t_shape is not None
                if want == "auto":
                    want = known and s_shape[-1] != t_shape[-1]
                if want:
                    if not known:
                        raise ModelError(f"pair {label!r}: adaptor needs static feature shapes on both sides.")
                    a = FeatureAdaptor(int(t_shape[-1]), name=f"adaptor_{label}_{i}")
                    a.build(s_shape)
                    adaptors.append(a)
                    idx.append(len(adaptors) - 1)
                    s_shapes[i] = (*s_shape[:-1], t_shape[-1])
                else:
                    idx.append(None)
            self._pair_adaptors.append(idx)
            self._check_pair_shapes(pair, label, entry, t_shapes, s_shapes)
        return adaptors

    @staticmethod
    def _check_pair_shapes(pair, label, entry, t_shapes, s_shapes):
        kind = pair.builtin
        if kind is None:
            return  # user loss: its own business
        where = (lambda i: f"teacher {entry['teacher'][i] or '<output>'!r} {t_shapes[i]} vs student "
                           f"{entry['student'][i] or '<output>'!r} {s_shapes[i]}")
        for i, (t, s) in enumerate(zip(t_shapes, s_shapes)):
            if t is None or s is None:
                continue
            if kind in ("fsp", "attention"):
                if len(t) != 4 or len(s) != 4:
                    raise ModelError(f"pair {label!r} ({kind}) needs rank-4 NHWC feature maps: {where(i)}.")
                same = t[-1] == s[-1] or kind == "attention"  # attention maps average over the channels
            else:
                if len(t) != len(s) or any(a is not None and b is not None and a != b
                                           for a, b in zip(t[1:-1], s[1:-1])):
                    raise ModelError(
                        f"pair {label!r} ({kind}): incompatible shapes, {where(i)}. An adaptor only maps "
                        "channels: pick layers with the same spatial size, or use a custom loss."
                    )
                same = t[-1] is None or s[-1] is None or t[-1] == s[-1]
            if not same:
                raise ModelError(
                    f"pair {label!r} ({kind}): channel counts differ, {where(i)}. Pass adaptor=True or "
                    "'auto' to learn a 1x1 projection, or pick layers with equal channel counts."
                )

    # -------------------------------------------------------------------------------------------
    # forward / loss / metrics hooks

    @property
    def pairs(self):
        """The :class:`~kslim.distill.Pair` list."""
        return list(self._pairs)

    @property
    def pair_names(self):
        """Term names; pair ``i`` is reported as metric ``f"{pair_names[i]}_loss"``."""
        return list(self._pair_names)

    def _run(self, role, model, x, training):
        tap = self._taps[role]
        if tap is None:
            out, feats = model(x, training=training), []
        else:
            res = tap(x, training=training)
            out, feats = res["output"], list(res["features"])
        paths = [k for k in self._keys[role] if k is not None]
        by_key = dict(zip(paths, feats))
        return out, [out if k is None else by_key[k] for k in self._keys[role]]

    def call(self, inputs, training=None):
        s_out, s_feats = self._run("student", self.student, inputs, training)
        if self._pairs:
            _, t_feats = self._run("teacher", self.teacher, inputs, False)
            t_feats = [ops.stop_gradient(t) for t in t_feats]
        else:
            t_feats = []
        return {"output": s_out, "student": s_feats, "teacher": t_feats}

    def _term(self, fn, teacher, student, sample_weight, n_replicas):
        """Unscaled scalar value of one loss term (``keras.losses.Loss`` results are un-scaled)."""
        if isinstance(fn, keras.losses.Loss):
            value = fn(teacher, student, sample_weight=sample_weight)
            if n_replicas > 1 and tuple(value.shape) == ():
                value = value * float(n_replicas)  # Loss.__call__ divided it by the replica count
            return ops.mean(ops.cast(value, "float32"))
        return ops.mean(ops.cast(fn(teacher, student), "float32"))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        n = _num_replicas()
        total = ops.zeros((), "float32")
        if self.hard_loss is not None:
            if y is None:
                raise KslimValueError("the batch has no labels but the Distiller has a hard_loss; "
                                      "pass hard_loss=None (and no compile loss) for label-free distillation.")
            hard = self._term(self.hard_loss, y, y_pred["output"], sample_weight, n)
            self.hard_loss_tracker.update_state(hard)
            total = total + self.hard_weight * hard
        for pair, entry, ad_idx, tracker in zip(self._pairs, self._pair_keys, self._pair_adaptors,
                                                self.pair_trackers):
            t = [y_pred["teacher"][self._keys["teacher"].index(k)] for k in entry["teacher"]]
            s = [y_pred["student"][self._keys["student"].index(k)] for k in entry["student"]]
            s = [v if a is None else self.adaptors[a](v) for v, a in zip(s, ad_idx)]
            if len(t) == 1 and len(s) == 1:
                t, s = t[0], s[0]
            elif pair.builtin == "fsp":
                t, s = tuple(t), tuple(s)
            if getattr(pair.loss_fn, "needs_labels", False):  # DKD: the batch's labels go with the teacher
                if y is None:
                    raise KslimValueError(f"the pair {pair.label!r} ({pair.builtin or 'loss'}) needs the batch's "
                                          "labels; give (x, y) batches.")
                t = (t, y)
            weights = sample_weight if isinstance(pair.loss_fn, keras.losses.Loss) else None
            value = self._term(pair.loss_fn, t, s, weights, n)
            tracker.update_state(value)
            total = total + pair.weight * value
        for extra in self.losses:  # regularisers of the student and adaptors (the teacher is frozen)
            total = total + ops.cast(ops.sum(extra), "float32")
        return total / float(n) if n > 1 else total

    @property
    def metrics(self):
        metrics = super().metrics
        if self.hard_loss is None:  # no hard-label term: do not report a constant 0
            metrics = [m for m in metrics if m is not self.hard_loss_tracker]
        return metrics

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y_pred, dict) and "output" in y_pred:
            y_pred = y_pred["output"]
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.student(x, training=False)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """``keras.Model.compile``; ``loss`` (if given) is the hard-label loss (instead of ``hard_loss=``)."""
        if loss is not None:
            if self._hard_loss_arg is not None:
                raise KslimValueError(
                    "the hard-label loss is given twice (Distiller(hard_loss=...) and compile(loss=...)); "
                    "keep one."
                )
            self.hard_loss = self._get_loss(loss)
        super().compile(optimizer=optimizer, loss=None, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        # keras.Model skips this for models that override compile(); ours only moves `loss`
        # (the hard loss is in get_config, the compile config has loss=None)
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    # -------------------------------------------------------------------------------------------
    # serialisation

    def get_config(self):
        return {
            "name": self.name,
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "pairs": [p.get_config() for p in self._pairs],
            "hard_loss": None if self.hard_loss is None else keras.losses.serialize(self.hard_loss),
            "hard_weight": self.hard_weight,
            "freeze_teacher": self.freeze_teacher,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        config["pairs"] = [Pair.from_config(p) for p in config.get("pairs", [])]
        if config.get("hard_loss") is not None:
            config["hard_loss"] = keras.losses.deserialize(config["hard_loss"])
        config["freeze_teacher"] = True  # it was frozen when saved
        return cls(**config)


__all__ = ["Distiller"]
