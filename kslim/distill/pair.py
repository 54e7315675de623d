"""``Pair``: which teacher layer(s) are matched to which student layer(s), with which loss."""

import difflib
import re

import keras

from kslim.distill.losses import BUILTIN_LOSSES
from kslim.errors import KslimTypeError, KslimValueError

_ADAPTOR_CHOICES = (False, True, "auto")


def _names(value, side):
    """None (the model output), one layer name, or a tuple of names -> tuple (None kept)."""
    if value is None or isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and value and all(v is None or isinstance(v, str) for v in value):
        return tuple(value)
    raise KslimTypeError(
        f"Pair {side} must be a layer name, a path like 'backbone/conv1', a tuple of them, or None "
        f"(the model output); got {value!r}."
    )


def _loss_label(loss):
    if isinstance(loss, str):
        return loss
    name = getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", str(name)).lower().strip("<>_") or "custom"


class Pair:
    """One distillation term: ``weight * loss(teacher tensors, student tensors)``.

    Args:
        teacher: teacher layer whose output is used: a name unique at any depth (``"conv1"``), a
            path through nested models (``"backbone/conv1"``), a tuple of two names for ``"fsp"``,
            or ``None`` for the model's output.
        student: the same for the student.
        loss: ``"soft_label"`` (:class:`~kslim.distill.SoftLabelLoss`), ``"l2"``
            (:class:`~kslim.distill.L2Loss`), ``"fsp"`` (:class:`~kslim.distill.FSPLoss`, two layers
            per side), ``"attention"`` (:class:`~kslim.distill.AttentionLoss`, NHWC maps, channel
            counts may differ), ``"dkd"`` (:class:`~kslim.distill.DKDLoss` on logits, with the
            batch's labels), another Keras loss name or instance (called ``loss(teacher, student)``), or
            any callable ``fn(teacher_tensors, student_tensors) -> scalar`` (tensors are passed as a
            list when a side names several layers; a non-scalar result is averaged).
        weight: multiplier of this term in the total loss.
        adaptor: ``False`` (channel counts must match), ``True`` (always learn a 1x1 projection of
            each student tensor to the teacher's channel count, FitNets-style) or ``"auto"`` (only
            where the channel counts differ). Adaptors train with the student and are not part of
            ``distiller.student``.
        name: label of the term; its metric is ``f"{name}_loss"`` (default: the loss name,
            de-duplicated with ``_1``, ``_2`` ...).
        **loss_kwargs: arguments of a built-in loss, e.g. ``temperature=4.0`` for ``"soft_label"``.

    Example:
        >>> Pair("logits", "logits", "soft_label", temperature=4.0).loss_kwargs
        {'temperature': 4.0}
    """

    def __init__(self, teacher, student, loss="l2", weight=1.0, adaptor=False, name=None, **loss_kwargs):
        self.teacher = _names(teacher, "teacher")
        self.student = _names(student, "student")
        if isinstance(loss, str):
            if loss not in BUILTIN_LOSSES:
                try:
                    keras.losses.get(loss)
                except (ValueError, TypeError):
                    close = difflib.get_close_matches(loss, list(BUILTIN_LOSSES), n=3, cutoff=0.4)
                    raise KslimValueError(
                        f"Unknown distillation loss {loss!r}; built-in: {sorted(BUILTIN_LOSSES)}"
                        + (f" (did you mean {close}?)" if close else "")
                        + ", or any Keras loss name, Loss instance or callable."
                    ) from None
        elif not callable(loss):
            raise KslimTypeError(f"Pair loss must be a name or a callable, got {loss!r}.")
        if loss_kwargs and loss not in BUILTIN_LOSSES:
            raise KslimValueError(
                f"Pair loss arguments {sorted(loss_kwargs)} only apply to the built-in losses "
                f"{sorted(BUILTIN_LOSSES)}; configure your loss object instead."
            )
        self.loss = loss
        self.loss_kwargs = dict(loss_kwargs)
        try:
            self.weight = float(weight)
        except (TypeError, ValueError):
            raise KslimTypeError(f"Pair weight must be a number, got {weight!r}.") from None
        if adaptor not in _ADAPTOR_CHOICES:
            raise KslimValueError(f"Pair adaptor must be False, True or 'auto', got {adaptor!r}.")
        self.adaptor = adaptor
        self.name = name
        if self.builtin:
            arity = BUILTIN_LOSSES[self.builtin][1]
            for side, names in (("teacher", self.teacher), ("student", self.student)):
                if len(names) != arity:
                    raise KslimValueError(
                        f"Pair loss {loss!r} takes {arity} layer(s) per network, got {side}={names!r}."
                    )
        if isinstance(loss, str) and loss in BUILTIN_LOSSES:
            self.loss_fn = BUILTIN_LOSSES[loss][0](**loss_kwargs)  # validates the kwargs too
        elif isinstance(loss, str):
            self.loss_fn = keras.losses.get(loss)
        else:
            self.loss_fn = loss

    @property
    def label(self):
        """Default term name: ``name`` or the loss name."""
        return self.name or _loss_label(self.loss)

    @property
    def builtin(self):
        """The :data:`~kslim.distill.losses.BUILTIN_LOSSES` name of a built-in loss (name or instance), else None."""
        if isinstance(self.loss, str):
            return self.loss if self.loss in BUILTIN_LOSSES else None
        for key, (cls, _) in BUILTIN_LOSSES.items():
            if isinstance(self.loss, cls):
                return key
        return None

    @classmethod
    def coerce(cls, value):
        """A ``Pair`` from a ``Pair``, a tuple ``(teacher, student[, loss[, weight]])`` or a dict."""
        if isinstance(value, Pair):
            return value
        if isinstance(value, dict):
            return cls(**value)
        if isinstance(value, (list, tuple)) and 2 <= len(value) <= 4:
            return cls(*value)
        raise KslimTypeError(
            f"Each pair must be a kslim.distill.Pair, a tuple (teacher, student[, loss[, weight]]) or a dict; "
            f"got {value!r}."
        )

    def get_config(self):
        loss = self.loss if isinstance(self.loss, str) else keras.saving.serialize_keras_object(self.loss)
        unpack = (lambda names: names[0] if len(names) == 1 else list(names))
        return {"teacher": unpack(self.teacher), "student": unpack(self.student), "loss": loss,
                "weight": self.weight, "adaptor": self.adaptor, "name": self.name, **self.loss_kwargs}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if not isinstance(config.get("loss", "l2"), str):
            config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)

    def __repr__(self):
        t = self.teacher[0] if len(self.teacher) == 1 else self.teacher
        s = self.student[0] if len(self.student) == 1 else self.student
        return f"Pair({t!r}, {s!r}, loss={self.label!r}, weight={self.weight:g}, adaptor={self.adaptor!r})"


__all__ = ["Pair"]
