"""The compression config file: YAML, validated against a JSON schema, with defaults filled in.

A config names the model, the data, the fine-tuning settings and an ordered list of strategies::

    seed: 0
    distribute: none               # none | mirrored | multi_worker (kslim.compressor.distribute)
    model:
      reference: mobilenet_v1      # or  path: my_model.keras
      width: 1.0
      # pretrain_epochs: 3         # without it: the shipped converged weights (mobilenet_v1, resnet);
                                   # with it (or for vgg): trained on the data first, then cached
    data:
      source: small                # small (bundled subset) | full | hook
      # hook: my_data.py:load      # a function returning (train, test): tf.data or (x, y) numpy
      batch_size: 128
    train:                         # default fine-tuning settings of every strategy
      epochs: 1
      learning_rate: 0.0005
    strategies:
      - prune: {importance: l1, flops_reduction: 0.5, round_to: 4, fine_tune: {epochs: 2}}
      - distill: {teacher: {reference: resnet}, epochs: 2}
      - quant_aware: {epochs: 1}
      - export: {}
      - profile: {device: local, num_threads: 1}

Errors name the field path (``strategies[0].prune.importance``) and the allowed values. The field
names are those of the Python API (``importance``, ``ratios``, ``flops_reduction``, ``skip``,
``num_threads``); the kslim 0.1 names in :data:`RENAMED_FIELDS` still work for one release, with a
``DeprecationWarning``.

The strategy names and each strategy's parameters are not listed here: they are the registry of
:mod:`kslim.compressor.strategies` (:func:`~kslim.compressor.strategies.register_strategy`), from
which :func:`config_schema`, the error messages and ``STRATEGIES`` are derived.
"""

import copy
import hashlib
import json
import os
from pathlib import Path

import yaml

from kslim.compressor.distribute import MODES as DISTRIBUTE_MODES
from kslim.errors import ConfigError
from kslim.validation import warn_renamed

#: the ``fine_tune`` settings of a step (any left out: the config's ``train`` section)
FINE_TUNE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "epochs": {"type": "integer", "minimum": 0},
        "learning_rate": {"type": "number", "exclusiveMinimum": 0},
        "batch_size": {"type": "integer", "minimum": 1},
        "schedule": {"enum": ["constant", "cosine"]},  # cosine: decays to 0 over the step's epochs
    },
}

#: a model: a reference model of the zoo (its shipped weights, or ``pretrain_epochs`` of training, cached) or
#: a ``.keras`` file
MODEL_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "reference": {"enum": ["mobilenet_v1", "resnet", "vgg"]},
        "path": {"type": "string", "minLength": 1},
        "width": {"type": "number", "exclusiveMinimum": 0},
        "pretrain_epochs": {"type": "integer", "minimum": 0},
    },
    "oneOf": [{"required": ["reference"]}, {"required": ["path"]}],
}

#: a pruning ratio, in [0, 1)
RATIO_SCHEMA = {"type": "number", "minimum": 0, "exclusiveMaximum": 1}

_TOP_LEVEL = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "version": {"const": 1},
        "name": {"type": "string"},
        "quick": {"type": "boolean"},
        "seed": {"type": "integer", "minimum": 0},
        "distribute": {"enum": list(DISTRIBUTE_MODES)},  # the training stages under tf.distribute
        "model": MODEL_SCHEMA,
        "data": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "source": {"enum": ["small", "full", "hook"]},
                "path": {"type": "string"},
                "hook": {"type": "string", "pattern": r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$"},
                "batch_size": {"type": "integer", "minimum": 1},
                "train_limit": {"type": ["integer", "null"], "minimum": 1},
                "test_limit": {"type": ["integer", "null"], "minimum": 1},
            },
        },
        "train": FINE_TUNE_SCHEMA,
        "report": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "latency_runs": {"type": "integer", "minimum": 1},
                "num_threads": {"type": "integer", "minimum": 1},
            },
        },
    },
    "required": ["model", "strategies"],
}


def _registry():
    """:mod:`kslim.compressor.strategies`, which registers the built-in strategies when imported (not at
    this module's import: the strategies import this module's schema fragments)."""
    from kslim.compressor import strategies

    return strategies


def strategy_names():
    """The names of the registered strategies (:func:`kslim.compressor.register_strategy`), in order."""
    return tuple(s.name for s in _registry().registered_strategies())


def config_schema():
    """The JSON schema of a config, with the strategy names of the registry (built at each call, so a
    strategy registered later is in it); each strategy's parameters are checked against its own schema."""
    schema = copy.deepcopy(_TOP_LEVEL)
    names = list(strategy_names())
    schema["properties"]["strategies"] = {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1,
            "propertyNames": {"enum": names},
            "properties": {k: {"type": ["object", "null"]} for k in names},
        },
    }
    return schema


def __getattr__(name):
    # derived from the registry when read: STRATEGIES (the names), SCHEMA, _STRATEGY_SCHEMAS (name -> schema)
    if name == "STRATEGIES":
        return strategy_names()
    if name == "SCHEMA":
        return config_schema()
    if name == "_STRATEGY_SCHEMAS":
        return {s.name: s.schema for s in _registry().registered_strategies()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DEFAULTS = {
    "version": 1,
    "name": "kslim-run",
    "seed": 0,
    "data": {"source": "small", "batch_size": 128, "train_limit": None, "test_limit": None},
    "train": {"epochs": 1, "learning_rate": 5e-4},
    "report": {"latency_runs": 50, "num_threads": 1},
}

#: kslim 0.1 field names still read (with a DeprecationWarning): (section, old name) -> new name;
#: a section is a strategy (``prune``), a sub-section (``prune.sensitivity``) or a top-level key
RENAMED_FIELDS = {
    ("prune", "criterion"): "importance",
    ("prune", "ratio"): "ratios",
    ("prune", "flops_target"): "flops_reduction",
    ("prune.sensitivity", "flops_target"): "flops_reduction",
    ("prune.auto", "flops_target"): "flops_reduction",
    ("profile", "threads"): "num_threads",
    ("report", "threads"): "num_threads",
}


def _rename_fields(mapping, section, where, errors):
    """A copy of ``mapping`` with the old field names of ``section`` renamed (warning once for each)."""
    if not isinstance(mapping, dict):
        return mapping
    out = dict(mapping)
    for (sec, old), new in RENAMED_FIELDS.items():
        if sec == section and old in out:
            if new in out:
                errors.append((f"{where}.{old}", f"give {new!r} only ({old!r} is its old name)"))
                out.pop(old)
                continue
            warn_renamed(f"field {old!r}", f"{new!r}", where, stacklevel=5)
            out[new] = out.pop(old)
    for (sec, _), _new in RENAMED_FIELDS.items():
        head, _, sub = sec.partition(".")
        if head == section and sub and isinstance(out.get(sub), dict):
            out[sub] = _rename_fields(out[sub], sec, f"{where}.{sub}", errors)
    return out


def rename_old_fields(config):
    """``config`` with the kslim 0.1 field names of :data:`RENAMED_FIELDS` renamed, and the errors
    (``(field path, message)``) of fields given under both names."""
    errors = []
    if not isinstance(config, dict):
        return config, errors
    out = dict(config)
    for key in ("report",):
        if key in out:
            out[key] = _rename_fields(out[key], key, key, errors)
    if isinstance(out.get("strategies"), list):
        items = []
        for i, item in enumerate(out["strategies"]):
            if isinstance(item, dict) and len(item) == 1:
                (name, params), = item.items()
                item = {name: _rename_fields(params, name, f"strategies[{i}].{name}", errors)}
            items.append(item)
        out["strategies"] = items
    return out, errors


def _path_str(path):
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _describe(error):
    """A jsonschema error as 'what is wrong; allowed values'."""
    v = error.validator
    if v == "enum":
        return f"{error.instance!r} is not allowed; choose one of {error.validator_value}"
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        return f"unknown field(s) {extra}; allowed fields: {allowed}"
    if v == "propertyNames":
        return f"unknown strategy {error.instance!r}; choose one of {list(strategy_names())}"
    if v == "oneOf" and isinstance(error.instance, dict):
        choices = [s.get("required", [None])[0] for s in error.validator_value]
        given = [c for c in choices if c in error.instance]
        if given:
            return f"give exactly one of {choices}, not {given}"
        return f"give one of {choices}"
    if v == "oneOf" and error.context:  # e.g. ratios: a number or a mapping, and it is neither
        return _describe(sorted(error.context, key=lambda c: c.validator == "type")[0])
    if v == "type":
        return f"{error.instance!r} has the wrong type; expected {error.validator_value}"
    if v == "required":
        return error.message
    return error.message


def _schema_errors(schema, instance, prefix=()):
    """Every violation of ``schema`` as ``(field path, message)``, shallowest first."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    out = []
    for e in errors:
        path = prefix + tuple(e.absolute_path)
        # oneOf errors over-report: prefer a deeper, more specific sub-error when there is one
        if e.context:
            deeper = sorted(e.context, key=lambda c: -len(c.absolute_path))
            if deeper and len(deeper[0].absolute_path) > 0 and deeper[0].validator != "required":
                path, e = prefix + tuple(deeper[0].absolute_path), deeper[0]
        item = (_path_str(path), _describe(e))
        if item not in out:
            out.append(item)
    return out


def raise_config_errors(errors):
    """One :class:`ConfigError` for all ``errors`` (``.path``: the first one's; ``.errors``: all of them)."""
    if len(errors) == 1:
        err = ConfigError(errors[0][1], path=errors[0][0])
    else:
        lines = "\n".join(f"  {path}: {message}" for path, message in errors)
        err = ConfigError(f"the config has {len(errors)} errors:\n{lines}")
        err.path = errors[0][0]
    err.errors = list(errors)
    raise err


def validate_config(config):
    """Validate a config dict; returns a new dict with defaults filled in.

    Every error is reported at once, each with the field path.

    Raises:
        ConfigError: with ``.path`` naming the (first) field at fault, ``.errors`` the list of
            ``(field path, message)`` and a message with the allowed values.

    Example:
        >>> cfg = validate_config({"model": {"reference": "vgg"}, "strategies": [{"export": {}}]})
        >>> cfg["data"]["source"], cfg["seed"]
        ('small', 0)
    """
    if not isinstance(config, dict):
        raise ConfigError(f"the config must be a mapping, got {type(config).__name__}", path="(top level)")
    config, errors = rename_old_fields(config)
    errors += _schema_errors(config_schema(), config)
    strategies = config.get("strategies")
    names = strategy_names()
    for i, item in enumerate(strategies if isinstance(strategies, list) else []):
        if not (isinstance(item, dict) and len(item) == 1):
            continue
        (name, params), = item.items()
        if name in names and (params is None or isinstance(params, dict)):
            strategy, where = _registry().get_strategy(name), ("strategies", i, name)
            found = _schema_errors(strategy.schema, params or {}, prefix=where)
            if not found and strategy.check is not None:  # what the schema cannot declare, on valid fields
                found = [(_path_str(where + tuple(field.split("."))), message)
                         for field, message in strategy.check(params or {})]
            errors += found
    data = config.get("data", {})
    if isinstance(data, dict) and data.get("source") == "hook" and not data.get("hook"):
        errors.append(("data.hook", "source 'hook' needs a 'hook: file.py:function' field"))
    if errors:
        raise_config_errors(errors)
    out = copy.deepcopy(DEFAULTS)
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(copy.deepcopy(value))
        else:
            out[key] = copy.deepcopy(value)
    out["strategies"] = [{name: dict(params or {})} for item in config["strategies"] for name, params in item.items()]
    return out


QUICK = {"train_limit": 512, "test_limit": 256, "latency_runs": 10}


def quick_config(config):
    """A validated config's smoke version (``kslim compress --quick``, ``kslim demo --quick``).

    At most 512 training and 256 test images (``data.train_limit`` / ``test_limit``), 1 epoch for
    every training stage (``train.epochs``, ``fine_tune.epochs``, ``epochs``), 10 latency runs.
    Reference models keep their ``pretrain_epochs`` (so the cached ones are reused). Marks the
    config ``quick: true`` and its name ``-quick``; applying it twice changes nothing more.
    """
    cfg = copy.deepcopy(config)
    data = cfg.setdefault("data", {})
    for key in ("train_limit", "test_limit"):
        data[key] = min(int(data.get(key) or QUICK[key]), QUICK[key])
    cfg.setdefault("train", {})["epochs"] = 1
    report = cfg.setdefault("report", {})
    report["latency_runs"] = min(int(report.get("latency_runs", QUICK["latency_runs"])), QUICK["latency_runs"])
    for item in cfg["strategies"]:
        (name, params), = item.items()
        strategy = _registry().get_strategy(name)
        if strategy.trains:
            if isinstance(params.get("fine_tune"), dict):
                params["fine_tune"]["epochs"] = min(int(params["fine_tune"].get("epochs", 1)), 1)
            if "epochs" in params:
                params["epochs"] = min(int(params["epochs"]), 1)
        if strategy.quick is not None:
            strategy.quick(params)
    name = cfg.get("name", "kslim-run")
    cfg["name"] = name if name.endswith("-quick") else f"{name}-quick"
    cfg["quick"] = True
    return validate_config(cfg)


def _is_file(path):
    try:
        return path.is_file()
    except OSError:  # e.g. ENAMETOOLONG: a long line of YAML is no file name
        return False


def config_file(source):
    """The config file ``source`` names, or ``None`` when it is a dict or YAML text.

    A ``Path`` is a file; a string is a file unless it spans several lines, or it names no existing
    file and reads as a YAML mapping (a one-line config such as ``"{model: ..., strategies: ...}"``).
    """
    if isinstance(source, os.PathLike):
        return Path(source)
    if not isinstance(source, str) or "\n" in source:
        return None
    path = Path(source)
    if _is_file(path):
        return path
    try:
        return None if isinstance(yaml.safe_load(source), dict) else path
    except yaml.YAMLError:
        return path


def load_config(source):
    """Load and validate a config from a YAML file path, a YAML string or a dict."""
    if isinstance(source, dict):
        return validate_config(source)
    path = config_file(source)
    if path is not None:
        if not _is_file(path):
            raise ConfigError(f"config file {path} does not exist", path=str(path))
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}", path=str(path)) from None
    elif isinstance(source, str):
        text = source
    else:
        return validate_config(source)  # not a mapping: a ConfigError naming the type
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = f"{path}" if path else "config"
        mark = getattr(e, "problem_mark", None)
        loc = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"malformed YAML{loc}: {getattr(e, 'problem', e)}", path=where) from None
    if data is None:
        raise ConfigError("the config is empty", path=str(path) if path else "(top level)")
    return validate_config(data)


def config_hash(config):
    """A stable hash of a validated config (what makes two runs 'the same run')."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def diff_configs(a, b, prefix=""):
    """Field paths where two configs differ (for the 'resume from another config' refusal)."""
    out = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            out += diff_configs(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            out += diff_configs(x, y, f"{prefix}[{i}]")
    elif a != b:
        out.append(prefix or "(top level)")
    return out
