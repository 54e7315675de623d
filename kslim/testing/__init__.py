"""Test harness: a zoo of architectures kslim did not write, and the checks run on each (issue 13).

``kslim.testing.zoo`` holds the registry (:data:`~kslim.testing.zoo.ZOO`) of tiny keras-hub backbones and
keras.io-style nets built from constructor arguments with random weights, and
:func:`~kslim.testing.zoo.sample_inputs`, which makes valid random inputs for any model.
``kslim.testing.checks`` runs kslim's pruning, QAT, PTQ, conversion and FLOPs on one model and reports a
:class:`~kslim.testing.checks.CheckResult` per check. ``scripts/bench_zoo.py`` runs the whole zoo and
``tests/test_zoo.py`` a representative part of it.

keras-hub is only needed by the keras-hub entries (install it with ``pip install -r requirements-zoo.txt``,
which pins it and installs it without its TensorFlow-pulling dependencies: see that file).

Example:
    >>> from kslim.testing import ZOO, sample_inputs
    >>> model = ZOO["io_convmixer"].build()
    >>> sample_inputs(model, 2).shape
    (2, 32, 32, 3)
"""

from kslim.testing.zoo import ZOO, ZooEntry, sample_inputs

__all__ = ["ZOO", "ZooEntry", "sample_inputs"]
