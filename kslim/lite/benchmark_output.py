"""Parse the text TFLite's ``benchmark_model`` prints (summary line, memory, op-profiling tables).

The formats handled are the ones the tool has printed across TF 1.x-2.x / LiteRT releases:

* ``Inference timings in us: Init: 17851, First inference: 2104, Warmup (avg): 1041.15, Inference (avg): 1039.66``
  (and the older ``Average inference timings in us: Warmup: ..., Init: ..., no stats: ...``);
* the ``count=50 first=... curr=... min=... max=... avg=... std=...`` line of the timed runs;
* ``Peak memory footprint (MB): init=0 overall=12.8672``, ``Memory footprint delta from the start of
  the tool (MB): init=... overall=...`` and ``Overall peak memory footprint (MB) via periodic monitoring: ...``;
* with ``--enable_op_profiling=true``, the tables "Run Order", "Top by Computation Time" and
  "Summary by node type", with or without the ``[start]`` column, tab- or space-separated,
  optionally behind ``INFO:`` log prefixes, for both "Profiling Info for Benchmark Initialization"
  and "Operator-wise Profiling Info for Regular Benchmark Runs".

Example:
    >>> out = parse_benchmark_output("Inference timings in us: Init: 855, First inference: 49060, "
    ...                              "Warmup (avg): 34825.1, Inference (avg): 33209.4")
    >>> out["avg_us"]
    33209.4
"""

import re

from kslim.errors import DeviceError

_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_SUMMARY = re.compile(
    rf"Inference timings in us:\s*Init:\s*{_NUM},\s*First inference:\s*{_NUM},\s*"
    rf"Warmup \(avg\):\s*{_NUM},\s*Inference \(avg\):\s*{_NUM}")
_OLD_SUMMARY = re.compile(rf"Average inference timings in us:\s*Warmup:\s*{_NUM},\s*Init:\s*{_NUM},\s*"
                          rf"(?:no stats|Inference):\s*{_NUM}")
_COUNT = re.compile(r"count=(\d+)((?:\s+\w+=[-+\d.eE]+)*)")
_PEAK = re.compile(rf"Peak memory footprint \(MB\):\s*init={_NUM}\s+overall={_NUM}")
_DELTA = re.compile(rf"Memory footprint delta from the start of the tool \(MB\):\s*init={_NUM}\s+overall={_NUM}")
_MONITOR = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring:\s*{_NUM}")
_PREFIX = re.compile(r"^\s*(?:INFO|WARNING|ERROR|[IWE]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\]):?\s?")
_TABLE_TITLE = re.compile(r"=+\s*(Run Order|Top by Computation Time|Top by Memory Use|Summary by node type)\s*=+")
_COLUMN = re.compile(r"\[([^\]]+)\]")

_KEYS = {"node type": "node_type", "start": "start_ms", "first": "first_ms", "avg ms": "avg_ms", "%": "percent",
         "cdf%": "cdf_percent", "mem kb": "mem_kb", "times called": "times_called", "name": "name",
         "count": "count", "avg %": "percent", "cdf %": "cdf_percent"}


def _strip(line):
    return _PREFIX.sub("", line.rstrip("\n"), count=1)


def _value(key, text):
    text = text.strip()
    if key in ("node_type", "name"):
        return text
    try:
        v = float(text.rstrip("%"))
    except ValueError:
        return text
    return int(v) if key in ("times_called", "count") else v


def _parse_row(columns, line):
    parts = [p for p in re.split(r"\t+", line.strip()) if p.strip()]
    if len(parts) < len(columns):  # space-separated variant: the name is whatever is left at the end
        parts = line.split(None, len(columns) - 1)
    if len(parts) < len(columns) - (1 if columns[-1] == "name" else 0):
        return None
    row = {}
    for key, text in zip(columns, parts):
        row[key] = _value(key, text)
    if "name" in row and isinstance(row["name"], str):
        name = row["name"]
        m = re.match(r"^\[(.*)\](?::(\d+))?$", name)
        if m:
            row["name"] = m.group(1)
            if m.group(2) is not None:
                row["node_index"] = int(m.group(2))
    if not isinstance(row.get("avg_ms"), float):
        return None
    return row


def parse_op_tables(lines):
    """Parse profiling tables out of ``lines``; returns ``{section: {table: [rows]}}``.

    ``section`` is ``"init"`` for "Profiling Info for Benchmark Initialization" and ``"runs"``
    otherwise; ``table`` is ``"run_order"``, ``"top_by_time"``, ``"top_by_memory"`` or ``"by_type"``.
    """
    sections, section, table, columns = {}, "runs", None, None
    names = {"Run Order": "run_order", "Top by Computation Time": "top_by_time",
             "Top by Memory Use": "top_by_memory", "Summary by node type": "by_type"}
    for raw in lines:
        line = _strip(raw)
        if "Profiling Info for Benchmark Initialization" in line:
            section, table = "init", None
            continue
        if "Profiling Info for Regular Benchmark Runs" in line or "Operator-wise Profiling Info" in line:
            section, table = "runs", None
            continue
        m = _TABLE_TITLE.search(line)
        if m:
            table, columns = names[m.group(1)], None
            if table == "run_order" and table in sections.get(section, {}):
                # a second run of tables without a section header belongs to the regular runs
                section = "runs"
            sections.setdefault(section, {})[table] = []
            continue
        if table is None:
            continue
        if columns is None:
            heads = _COLUMN.findall(line)
            if heads:
                columns = [_KEYS.get(h.strip().lower(), h.strip().lower()) for h in heads]
            continue
        if not line.strip():
            table, columns = None, None
            continue
        row = _parse_row(columns, line)
        if row is None:
            table, columns = None, None
            continue
        sections[section][table].append(row)
    return sections


def parse_benchmark_output(text, command=None):
    """Parse ``benchmark_model`` output into a dict (times in microseconds, memory in MB).

    Keys: ``init_us``, ``first_us``, ``warmup_avg_us``, ``avg_us`` (mean of the timed runs),
    ``count``, ``min_us``, ``max_us``, ``std_us`` (from the ``count=`` line of the timed runs),
    ``peak_memory_mb`` (None if not printed), ``op_profile`` (``{section: {table: rows}}``, empty
    without ``--enable_op_profiling``). Raises :class:`DeviceError` (with the output's tail) if the
    summary line is missing, i.e. the tool failed or printed something unexpected.
    """
    lines = text.splitlines()
    out = {"init_us": None, "first_us": None, "warmup_avg_us": None, "avg_us": None, "count": None,
           "min_us": None, "max_us": None, "std_us": None, "peak_memory_mb": None, "format": None}
    m = _SUMMARY.search(text)
    if m:
        out.update(init_us=float(m.group(1)), first_us=float(m.group(2)), warmup_avg_us=float(m.group(3)),
                   avg_us=float(m.group(4)), format="summary")
    else:
        m = _OLD_SUMMARY.search(text)
        if m:
            out.update(warmup_avg_us=float(m.group(1)), init_us=float(m.group(2)), avg_us=float(m.group(3)),
                       format="legacy")
    if out["avg_us"] is None:
        tail = "\n".join(lines[-15:])
        what = f" `{command}`" if command else ""
        raise DeviceError(
            f"benchmark_model{what} printed no 'Inference timings in us: ...' summary, so it failed or is "
            "not TFLite's benchmark_model. Check the binary matches the device ABI (arm64-v8a/armeabi-v7a) "
            f"and the model runs there. Last lines of its output:\n{tail}")
    counts = []
    for line in lines:
        if "Timings (microseconds)" in line:  # the op profiler's own line, not a benchmark run
            continue
        cm = _COUNT.search(line)
        if cm:
            fields = dict(kv.split("=") for kv in cm.group(2).split())
            if "avg" in fields or "curr" in fields:  # not "Memory (bytes): count=0"
                counts.append((int(cm.group(1)), fields))
    if counts:  # the last count= line before the summary belongs to the timed (not warmup) runs
        n, f = counts[-1]
        out["count"] = n
        for key, name in (("min", "min_us"), ("max", "max_us"), ("std", "std_us")):
            if key in f:
                out[name] = float(f[key])
    for rx in (_MONITOR, _PEAK, _DELTA):
        pm = rx.search(text)
        if pm:
            out["peak_memory_mb"] = float(pm.groups()[-1])
            break
    out["op_profile"] = parse_op_tables(lines)
    return out
