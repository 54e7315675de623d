"""What several subcommands share: loading the user's model (``--unsafe``), checking output paths
before the work, and reading the user's data in the shape the model takes.

Data sources (``--data``, ``--calib``, ``--calibration-data``, ``--eval``), resolved by
:func:`load_data`:

* ``auto`` (the default): the bundled Fashion-MNIST subset, but only if the model takes 28x28x1
  images; otherwise an error saying which source to give;
* ``small`` / ``full``: Fashion-MNIST (bundled subset / full set);
* a folder of images: ``keras.utils.image_dataset_from_directory`` resized to the model's input
  size, grayscale/RGB/RGBA after its channel count, pixels scaled to [0, 1]; labels from the
  sub-folder names (sorted) when labels are needed;
* ``X.npz``: arrays ``x`` (inputs, batch first, preprocessed like the training data) and ``y``
  (integer labels, needed for evaluation); ``X.npy``: inputs only (calibration);
* ``file.py:function`` or ``package.module:function``: a data hook returning ``(train, test)`` as
  for ``kslim compress`` (calibration reads ``train``, evaluation ``test``).

``--random-calibration`` (calibration only) uses uniform random inputs instead, and says so loudly:
the int8 ranges then fit no real data.
"""

from pathlib import Path

from kslim.errors import KslimFileError, KslimValueError, ModelError

DATA_HELP = ("'auto' (bundled Fashion-MNIST, for 28x28x1 models only), 'small', 'full', a folder of images "
             "(sub-folders = classes), X.npz (arrays x, y), X.npy (inputs only) or file.py:function (a data hook)")


# ----------------------------------------------------------------------------------------- options
def add_renamed_option(p, old, new, **kwargs):
    """A hidden ``old`` flag storing into ``new``'s destination, with a deprecation note on stderr.

    The vocabulary of the CLI is the API's (``--importance``, ``--ratios``, ``--flops-reduction``,
    ``--num-threads``); the kslim 0.1 flags keep working for one release.
    """
    import argparse

    from kslim.validation import REMOVED_IN

    dest = new.lstrip("-").replace("-", "_")

    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            import sys

            print(f"kslim: {old} is deprecated, use {new} (the old name goes in {REMOVED_IN}).", file=sys.stderr)
            setattr(namespace, self.dest, values)

    p.add_argument(old, dest=dest, action=Renamed, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


# ----------------------------------------------------------------------------------------- models
def add_unsafe_option(p):
    p.add_argument("--unsafe", action="store_true",
                   help="load .keras files with Keras' safe mode off: needed for models with Lambda layers "
                        "(their Python code runs on loading; use it only for files you trust)")


def load_model(path, args):
    """The Keras model in ``path``, honouring ``--unsafe``; a Lambda model without it says to pass --unsafe."""
    from kslim._model_io import load_keras_model

    unsafe = bool(getattr(args, "unsafe", False))
    try:
        return load_keras_model(path, safe_mode=not unsafe)
    except ModelError as e:
        if "safe_mode" in str(e) and not unsafe:
            raise ModelError(
                f"{path} holds a Lambda layer with Python code, which Keras does not load by default (loading "
                "runs that code). If you trust this file, pass --unsafe.") from None
        raise


# ----------------------------------------------------------------------------------------- outputs
def check_outputs(args, *options):
    """Check, before any work, that the files given for ``options`` (dest names) can be written."""
    from kslim.validation import check_output_path

    for dest in options:
        value = getattr(args, dest, None)
        if value:
            check_output_path(value, "--" + dest.replace("_", "-") if len(dest) > 1 else "-" + dest)


# ----------------------------------------------------------------------------------------- data
def add_random_calibration_option(p):
    p.add_argument("--random-calibration", action="store_true",
                   help="calibrate on uniform random inputs of the model's shape instead of data (a last resort: "
                        "the int8 ranges then fit no real data, and the result is labelled RANDOM)")


def input_shape(model):
    """The model's single input shape without the batch axis (a tuple; ``None`` for free dimensions)."""
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1:
        raise ModelError(f"model {model.name!r} has {len(inputs)} inputs; the command line handles single-input "
                         "models (use the Python API with your own data for the others).")
    return tuple(inputs[0].shape[1:])


def _fits(shape, want):
    return len(shape) == len(want) and all(w is None or int(s) == int(w) for s, w in zip(shape, want))


def _check_shape(x, model, option, spec):
    want = input_shape(model)
    got = tuple(x.shape[1:])
    if not _fits(got, want):
        raise KslimValueError(f"{option} {spec}: the inputs have shape {got}, which does not match the model input "
                              f"{want} of {model.name!r}.")
    return x


def _fashion(source, split, limit):
    import numpy as np

    from kslim.datasets import preprocess
    from kslim.datasets.fashion_mnist import load

    train, test = load(source)
    x, y = train if split == "train" else test
    return preprocess(x[:limit]), np.asarray(y[:limit]).astype(np.int64)


def _folder(path, model, split, limit, need_labels, option):
    import keras
    import numpy as np

    shape = input_shape(model)
    if len(shape) != 3 or shape[0] is None or shape[1] is None:
        raise KslimValueError(f"{option} {path}: a folder of images needs a model with a fixed (H, W, C) input, "
                              f"but {model.name!r} takes {shape}; give an .npz or a data hook.")
    modes = {1: "grayscale", 3: "rgb", 4: "rgba"}
    if shape[2] not in modes:
        raise KslimValueError(f"{option} {path}: images have 1, 3 or 4 channels; {model.name!r} takes {shape}.")
    classes = sorted(d.name for d in Path(path).iterdir() if d.is_dir())
    if need_labels and not classes:
        raise KslimValueError(f"{option} {path}: evaluation needs labels: put the images in one sub-folder per class.")
    try:
        ds = keras.utils.image_dataset_from_directory(
            str(path), labels="inferred" if classes else None, label_mode="int" if classes else None,
            color_mode=modes[shape[2]], image_size=(int(shape[0]), int(shape[1])), batch_size=64, shuffle=False,
            verbose=False)
    except ValueError as e:
        raise KslimFileError(f"{option} {path}: {e}") from None
    xs, ys, n = [], [], 0
    for batch in ds:
        xb, yb = batch if classes else (batch, None)
        xs.append(np.asarray(xb, np.float32) / 255.0)
        if yb is not None:
            ys.append(np.asarray(yb).astype(np.int64))
        n += len(xs[-1])
        if limit and n >= limit:
            break
    if not xs:
        raise KslimFileError(f"{option} {path}: no images found (.jpg, .png, .bmp, .gif).")
    x = np.concatenate(xs)[:limit]
    return x, (np.concatenate(ys)[:limit] if ys else None)


def _npz(path, limit, option):
    import numpy as np

    try:
        z = np.load(path, allow_pickle=False)
        if isinstance(z, np.ndarray):  # a .npy file: inputs only
            x, y = z[:limit], None
        else:
            with z:
                if "x" not in z.files:
                    raise KslimFileError(f"{option} {path}: expected arrays 'x' (inputs) and 'y' (labels), found "
                                         f"{sorted(z.files)}.")
                x = z["x"][:limit]
                y = z["y"][:limit] if "y" in z.files else None
    except (OSError, ValueError) as e:
        if isinstance(e, KslimFileError):
            raise
        raise KslimFileError(f"{option} {path}: cannot read it as a numpy file: {e}") from None
    if x.dtype.kind not in "fiu":
        raise KslimFileError(f"{option} {path}: expected numeric inputs, got dtype {x.dtype}.")
    return x.astype(np.float32) if x.dtype.kind != "f" else x, (None if y is None else y.astype(np.int64))


def _hook(spec, split, limit):
    from kslim.compressor.data import PipelineData

    data = PipelineData({"source": "hook", "hook": spec}, base_dir=Path.cwd())
    if split == "train":
        return data.calibration(limit), None
    return data.eval_arrays(limit)


def load_data(spec, model, split="test", limit=None, need_labels=True, option="--data"):
    """``(x, y, description)`` from a data source (see the module docstring) in the model's input shape.

    ``split``: ``"train"`` for calibration, ``"test"`` for evaluation. ``y`` is ``None`` when the
    source has no labels (an error if ``need_labels``).
    """
    spec = str(spec or "auto")
    shape = input_shape(model)
    path = Path(spec).expanduser()
    if spec == "auto":
        if not _fits((28, 28, 1), shape):
            raise KslimValueError(
                f"{option}: model {model.name!r} takes inputs {shape}, not the 28x28x1 Fashion-MNIST images kslim "
                f"bundles: give {option} with your data ({DATA_HELP}).")
        spec = "small"
    if spec in ("small", "full"):
        x, y = _fashion(spec, split, limit)
        what = f"{len(x)} {'bundled ' if spec == 'small' else ''}Fashion-MNIST {split} images"
    elif path.is_dir():
        x, y = _folder(path, model, split, limit, need_labels, option)
        what = f"{len(x)} images from {spec}"
    elif path.suffix in (".npz", ".npy"):
        if not path.is_file():
            raise KslimFileError(f"{option} {spec}: no such file.")
        x, y = _npz(path, limit, option)
        what = f"{len(x)} samples from {spec}"
    elif ":" in spec:
        x, y = _hook(spec, split, limit)
        what = f"{len(x)} {split} samples from the data hook {spec}"
    else:
        raise KslimFileError(f"{option} {spec}: not a folder, .npz/.npy file or file.py:function hook "
                             f"(give {DATA_HELP}).")
    if need_labels and y is None:
        raise KslimValueError(f"{option} {spec}: evaluation needs labels (an .npz with 'y', class sub-folders, "
                              "or a hook returning (x, y)).")
    return _check_shape(x, model, option, spec), y, what


def random_calibration_inputs(model, n, seed=0):
    """``n`` uniform [0, 1) inputs of the model's shape (free dimensions: 32) for ``--random-calibration``."""
    import numpy as np

    shape = tuple(32 if d is None else int(d) for d in input_shape(model))
    return np.random.default_rng(seed).uniform(0, 1, size=(n, *shape)).astype(np.float32)


def calibration_data(args, model, samples, option="--calib"):
    """``(x, description)`` for calibration: ``--random-calibration`` or the data source of ``option``."""
    import sys

    if getattr(args, "random_calibration", False):
        print(f"kslim {args.command}: WARNING: calibrating on {samples} RANDOM inputs (--random-calibration): "
              "the int8 ranges fit no real data; expect an accuracy loss", file=sys.stderr, flush=True)
        return random_calibration_inputs(model, samples), f"{samples} RANDOM inputs (--random-calibration)"
    spec = getattr(args, option.lstrip("-").replace("-", "_"))
    x, _, what = load_data(spec, model, split="train", limit=samples, need_labels=False, option=option)
    return x, what
