"""Subcommands of the ``kslim`` CLI, one module per area (see :mod:`kslim.cli`).

Keep these modules light: import TensorFlow/Keras/kslim areas inside the command functions.
"""
