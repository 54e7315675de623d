"""The one public import surface: every name kslim/__init__.py promises resolves, lazily."""

import subprocess
import sys

import kslim


def test_every_public_name_resolves():
    missing = [name for name in kslim.__all__ if not hasattr(kslim, name)]
    assert missing == []


def test_import_is_cheap():
    """`import kslim` (and `kslim --help`) must not import TensorFlow."""
    code = "import sys, kslim, kslim.cli; kslim.cli.build_parser(); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_errors_are_kslim_errors_and_builtins():
    assert issubclass(kslim.ConfigError, kslim.KslimError) and issubclass(kslim.ConfigError, ValueError)
    assert issubclass(kslim.DataNotFoundError, FileNotFoundError)
    assert issubclass(kslim.UnsupportedLayerError, kslim.ModelError)


def test_every_quantized_layer_is_exported():
    import kslim.quant
    from kslim.quant.layers import QUANT_LAYERS

    assert all(getattr(kslim.quant, cls.__name__, None) is cls for cls in QUANT_LAYERS)
    assert {cls.__name__ for cls in QUANT_LAYERS} <= set(kslim.quant.__all__)
