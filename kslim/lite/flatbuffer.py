"""The one home of kslim's TFLite flatbuffer plumbing on the host: read and write a ``.tflite``, name its
operators and tensor types.

Everything is read with the flatbuffer schema shipped in ``ai_edge_litert`` (object API, ``ModelT``);
the primitives live in :mod:`kslim.lite.runner`, which must stay a standalone file for devices, and are
re-exported here for the rest of kslim (post-training quantization, the quantization debugger,
dynamic-range repairs, LiteRT-quantizer recipes, sparsity checks).

Example:
    >>> from kslim.lite import flatbuffer as fb
    >>> fb.builtin("CONV_2D"), fb.tensor_type("INT8")
    (3, 9)
"""

import numpy as np

from kslim.lite.runner import _enum_names, _pack, _schema, builtin_code, op_name, read_model  # noqa: F401


def schema():
    """The flatbuffer schema module (``ai_edge_litert.schema_py_generated``)."""
    return _schema()


def read_flatbuffer(content):
    """A ``.tflite`` (bytes) as the schema's ``ModelT``."""
    return read_model(content)[1]


def write_flatbuffer(model_t):
    """A ``ModelT`` packed back into ``.tflite`` bytes."""
    return _pack(_schema(), model_t)


def tensor_name(t):
    """A tensor's name as ``str``."""
    return t.name.decode() if isinstance(t.name, bytes) else str(t.name)


def op_code(model_t, op):
    """The builtin operator number of ``op`` in ``model_t``."""
    return builtin_code(model_t.operatorCodes[op.opcodeIndex])


def op_names():
    """``{builtin operator number: name}`` (``3: "CONV_2D"``)."""
    return _enum_names(_schema().BuiltinOperator)


def builtin(name):
    """The builtin operator number of ``name`` (``"CONV_2D"`` -> 3)."""
    return int(getattr(_schema().BuiltinOperator, name))


def tensor_type(name):
    """The ``TensorType`` number of ``name`` (``"INT8"`` -> 9)."""
    return int(getattr(_schema().TensorType, name))


def tensor_type_names():
    """``{TensorType number: name}`` (``9: "INT8"``, ``17: "INT4"``)."""
    return _enum_names(_schema().TensorType)


def read_metadata(content, name):
    """The bytes of metadata entry ``name`` of a flatbuffer, or None (reads only the table of contents)."""
    try:
        schema = _schema()
    except SystemExit:  # pragma: no cover - no ai_edge_litert schema
        return None
    try:
        model = schema.Model.GetRootAs(content, 0)
        for i in range(model.MetadataLength()):
            m = model.Metadata(i)
            if (m.Name() or b"").decode() == name:
                return bytes(model.Buffers(m.Buffer()).DataAsNumpy().tobytes())
    except Exception:  # a foreign or truncated flatbuffer: no metadata
        return None
    return None


def add_metadata(content, name, data):
    """``content`` with metadata entry ``name`` set to ``data`` (object API round trip)."""
    schema, model = read_model(content)
    buf = schema.BufferT()
    buf.data = np.frombuffer(data, np.uint8).copy()
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name.encode(), len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if (m.name or b"").decode() != name] + [entry]
    return _pack(schema, model)


__all__ = ["schema", "read_flatbuffer", "write_flatbuffer", "tensor_name", "op_code", "op_names", "builtin",
           "tensor_type", "builtin_code", "op_name", "read_model", "read_metadata", "add_metadata"]
