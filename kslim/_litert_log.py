"""Silence LiteRT's INFO log lines ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.") at the source.

Where the line comes from: the TFLite runtime inside ai-edge-litert logs through
``tflite::logging_internal::MinimalLogger``, which prints every message of severity >=
``MinimalLogger::minimum_log_severity_`` to stderr. In release builds that threshold is
``TFLITE_LOG_INFO``, and the XNNPACK delegate logs its creation at INFO once per process, i.e. on
every kslim command that runs a ``.tflite``. ``TF_CPP_MIN_LOG_LEVEL`` does not apply (that is
TensorFlow's logger), and the wheel exposes no setter (``SetMinimumLogSeverity`` is not exported).

:func:`quiet_litert_info` raises the threshold to ``TFLITE_LOG_WARNING``: warnings and errors are
still printed, INFO lines are not. The threshold is a static ``int`` of
``libpywrap_litert_common.so``; its offset is read from the library's ELF symbol table and its
address from the loader (``dlinfo``). The write happens only if everything checks out: Linux, the
symbol found with size 4, the address inside a writable mapping of that very file, and the current
value INFO (or VERBOSE). Otherwise nothing is touched and the INFO line simply stays.
"""

import ctypes
import importlib.util
import struct
import sys
from pathlib import Path

_SYMBOL = b"_ZN6tflite16logging_internal13MinimalLogger21minimum_log_severity_E"
_VERBOSE, _INFO, _WARNING = 0, 1, 2
_done = {}


def _library():
    spec = importlib.util.find_spec("ai_edge_litert")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(next(iter(spec.submodule_search_locations))) / "libpywrap_litert_common.so"
    return lib if lib.is_file() else None


def _symbol(path, name):
    """``(st_value, st_size)`` of ``name`` in the ``.symtab`` of the ELF64 little-endian file ``path``."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return None
        shoff, = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
        f.seek(shoff)
        sections = [struct.unpack("<IIQQQQIIQQ", f.read(shentsize)[:64]) for _ in range(shnum)]
        symtab = next((s for s in sections if s[1] == 2), None)  # SHT_SYMTAB
        if symtab is None:
            return None
        strtab = sections[symtab[6]]
        f.seek(strtab[4])
        strings = f.read(strtab[5])
        at = strings.find(b"\0" + name + b"\0")
        if at < 0:
            return None
        f.seek(symtab[4])
        table = f.read(symtab[5])
    for st_name, _info, _other, _shndx, value, size in struct.iter_unpack("<IBBHQQ", table):
        if st_name == at + 1:
            return value, size
    return None


def _writable_mapping(path, address):
    real = str(Path(path).resolve())
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 6 or parts[5] != real:
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= address < hi:
                return parts[1].startswith("rw")
    return False


def quiet_litert_info():
    """Make LiteRT print warnings and errors only (see the module docstring). Returns whether it did."""
    if "ok" in _done:
        return _done["ok"]
    ok = False
    try:
        lib = _library() if sys.platform.startswith("linux") else None
        sym = _symbol(lib, _SYMBOL) if lib else None
        if sym and sym[1] == 4:
            handle = ctypes.CDLL(str(lib))  # the library the interpreter wrapper will use (loaded once)
            dlinfo = ctypes.CDLL(None).dlinfo
            link_map = ctypes.c_void_p()
            if dlinfo(ctypes.c_void_p(handle._handle), 2, ctypes.byref(link_map)) == 0 and link_map.value:
                address = ctypes.c_size_t.from_address(link_map.value).value + sym[0]  # l_addr + st_value
                if _writable_mapping(lib, address):
                    level = ctypes.c_int.from_address(address)
                    if level.value in (_VERBOSE, _INFO):
                        level.value = _WARNING
                    ok = level.value >= _WARNING
    except (OSError, AttributeError, ValueError, struct.error):
        ok = False
    _done["ok"] = ok
    return ok
