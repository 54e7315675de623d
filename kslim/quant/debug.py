"""Per-layer quantization error report: which layer to keep in float.

``quant_debug`` quantizes the model exactly as :func:`kslim.quant.quant_post_static` does, then runs
the calibrated float ``.tflite`` and the int8 ``.tflite`` side by side (ai-edge-litert,
``experimental_preserve_all_tensors``) and compares every activation tensor (they keep their names
through quantization), in graph order:

* ``snr_db`` / ``mse``: the error accumulated up to that tensor (float model vs int8 model, same
  input), ``SNR = 10 log10(sum f^2 / sum (f - q)^2)``;
* ``snr_drop_db``: how much SNR that operator loses w.r.t. its input (its own weights + output
  quantization); the layers with the largest drop are the ones worth keeping in float
  (:meth:`QuantDebugReport.suggest_skip`, to pass as ``quant_post_static(skip=...)``);
* ``local_snr_db`` and ``clipped``: the error of quantizing the float tensor alone on its int8 grid,
  and the fraction of float values outside the grid's range (a clipping range too tight shows here).

TensorFlow's ``tf.lite.experimental.QuantizationDebugger`` computes similar per-layer statistics, but
it needs ``tf.lite.Interpreter`` and the ``NumericVerify`` debug op, neither of which ai-edge-litert
(kslim's runtime) provides; the comparison is therefore done directly on the two graphs here.

Example:
    >>> import keras, numpy as np
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
    ...                       keras.layers.Dense(4)])
    >>> report = quant_debug(m, np.random.rand(64, 8).astype("float32"), algo="abs_max", batches=1)
    >>> len(report.rows) >= 2
    True
"""

import numpy as np

from kslim.errors import KslimValueError
from kslim.quant.ptq import (
    _DEQUANTIZE,
    _INT8,
    _QUANTIZE,
    _WEIGHT_OPS,
    TensorRunner,
    _quantize_static,
    batch_len,
    layers_in_name,
)
from kslim.lite.flatbuffer import op_code, op_names, read_flatbuffer, tensor_name


def _snr(signal, noise):
    if noise <= 0:
        return float("inf")
    if signal <= 0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


class QuantDebugReport:
    """Result of :func:`quant_debug`.

    Attributes:
        rows: one dict per quantized activation tensor, in graph order, with keys ``index``,
            ``tensor``, ``layers`` (Keras layer names fused into that op), ``op``, ``has_weights``,
            ``scale``, ``zero_point``, ``range`` (float ``(lo, hi)`` of the int8 grid),
            ``calibrated_range`` (the ``(lo, hi)`` kslim's algorithm chose, None if not calibrated), ``snr_db``,
            ``mse``, ``snr_drop_db``, ``local_snr_db``, ``clipped``.
        model: dict with the output ``snr_db``, ``mse`` (per element) and ``argmax_agreement`` of the
            whole model (None when the output is not class scores, e.g. a regression output).
        algo: the calibration algorithm.
    """

    def __init__(self, rows, model, algo, samples):
        self.rows = rows
        self.model = model
        self.algo = algo
        self.samples = samples

    def suggest_skip(self, n=2, min_drop_db=3.0):
        """The ``n`` conv/dense layers losing the most SNR (at least ``min_drop_db``), worst first."""
        cand = [r for r in self.rows if r["has_weights"] and r["layers"] and r["snr_drop_db"] >= min_drop_db]
        cand.sort(key=lambda r: -r["snr_drop_db"])
        out = []
        for r in cand:
            name = r["weight_layer"] or r["layers"][0]
            if name not in out:
                out.append(name)
        return out[:n]

    def worst(self, n=5, key="snr_drop_db"):
        """The ``n`` rows with the largest ``snr_drop_db`` (or smallest ``snr_db``/``local_snr_db``)."""
        reverse = key in ("snr_drop_db", "mse", "clipped")
        return sorted(self.rows, key=lambda r: r[key], reverse=reverse)[:n]

    def to_dict(self):
        def clean(v):
            if isinstance(v, float) and not np.isfinite(v):
                return None if np.isnan(v) else (1e9 if v > 0 else -1e9)
            if isinstance(v, tuple):
                return [clean(x) for x in v]
            return v

        return {"algo": self.algo, "samples": self.samples, "model": {k: clean(v) for k, v in self.model.items()},
                "rows": [{k: clean(v) for k, v in r.items()} for r in self.rows],
                "suggest_skip": self.suggest_skip()}

    def __str__(self):
        agree = self.model["argmax_agreement"]
        head = (f"Quantization error per tensor (algo={self.algo}, {self.samples} samples; "
                f"output SNR {self.model['snr_db']:.1f} dB, argmax agreement "
                f"{'n/a' if agree is None else f'{agree:.3f}'})")
        cols = ("#", "layer", "op", "SNR dB", "drop dB", "local dB", "clipped", "MSE", "scale")
        table = []
        for r in self.rows:
            layer = r["weight_layer"] or "+".join(r["layers"][:2]) or r["tensor"][-30:]
            table.append((str(r["index"]), layer, r["op"], f"{r['snr_db']:.1f}", f"{r['snr_drop_db']:.1f}",
                          f"{r['local_snr_db']:.1f}", f"{100 * r['clipped']:.2f}%", f"{r['mse']:.3g}",
                          f"{r['scale']:.3g}"))
        widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(cols)]
        lines = [head, "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(v.ljust(w) for v, w in zip(t, widths)) for t in table]
        skip = self.suggest_skip()
        lines.append(f"suggested skip (largest SNR drop): {skip}" if skip else
                     "no layer loses >= 3 dB: nothing to keep in float")
        return "\n".join(lines)

    def __repr__(self):
        return f"QuantDebugReport(algo={self.algo!r}, rows={len(self.rows)}, output_snr_db={self.model['snr_db']:.1f})"

    def plot(self, path):
        """Bar chart of accumulated and local SNR per tensor (graph order), saved to ``path`` (png/pdf/svg)."""
        from kslim._plot import new_figure, save_figure

        labels = [r["weight_layer"] or "+".join(r["layers"][:1]) or r["op"] for r in self.rows]
        x = np.arange(len(self.rows))
        cap = lambda v: float(np.clip(v, -10, 80))  # noqa: E731
        fig = new_figure((max(6, 0.45 * len(x)), 4))
        ax = fig.add_subplot(1, 1, 1)
        ax.bar(x - 0.2, [cap(r["snr_db"]) for r in self.rows], 0.4, label="SNR (accumulated)")
        ax.bar(x + 0.2, [cap(r["local_snr_db"]) for r in self.rows], 0.4, label="local SNR (this tensor only)")
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=70, ha="right", fontsize=7)
        ax.set_ylabel("dB")
        ax.set_title(f"Quantization SNR per tensor (algo={self.algo})")
        ax.legend(fontsize=8)
        save_figure(fig, path, dpi=110)
        return path


def quant_debug(model, calibration_data, algo="KL", batches=4, batch_size=32, batch_nums=None, debug_data=None,
                hist_percent=0.9999, bins=2048, weight_quantize_type="channel_wise_abs_max",
                bias_correction=False, skip=None, verbose=False):
    """Quantize ``model`` like :func:`kslim.quant.quant_post_static` and report the error of every tensor.

    Args:
        model, calibration_data, algo, batch_size, batch_nums, hist_percent, bins,
        weight_quantize_type, bias_correction, skip: as for ``quant_post_static``.
        batches: number of ``batch_size`` batches on which the errors are measured.
        debug_data: data for the measurement (default: the calibration data).

    Returns:
        A :class:`QuantDebugReport` (``print(report)`` for the table, ``report.plot(path)``,
        ``report.suggest_skip()``).
    """
    from kslim.lite.inputs import model_inputs
    from kslim.quant.ptq import calibration_batches

    if int(batches) < 1:
        raise KslimValueError(f"batches must be >= 1, got {batches!r}.")
    calibrated, quantized, ranges, calib = _quantize_static(
        model, calibration_data, algo, batch_nums, batch_size, hist_percent, bins, weight_quantize_type,
        "float32", "float32", bias_correction, skip, verbose, fn="quant_debug")
    if debug_data is None:
        data = calib[: int(batches)]
    else:
        data = calibration_batches(debug_data, model_inputs(model, "quant_debug"), batch_size, batches, "debug_data")

    qm = read_flatbuffer(quantized)
    sg = qm.subgraphs[0]
    names = [tensor_name(t) for t in sg.tensors]
    float_names = {tensor_name(t) for t in read_flatbuffer(calibrated).subgraphs[0].tensors}
    code_names = op_names()
    producers = {}
    rows = []
    weighted = {layer.name for layer in model.layers
                if hasattr(layer, "kernel") or hasattr(layer, "depthwise_kernel")}
    dequantized_as = {}  # int8 tensor -> name of the float tensor a DEQUANTIZE makes of it (graph outputs)
    for op in sg.operators:
        if op_code(qm, op) == _DEQUANTIZE and op.inputs[0] >= 0:
            dequantized_as[op.inputs[0]] = names[op.outputs[0]]
    for op in sg.operators:
        out = op.outputs[0]
        t = sg.tensors[out]
        q = t.quantization
        code = op_code(qm, op)
        ref = names[out]
        if code == _QUANTIZE and op.inputs[0] >= 0:  # the graph input's quantization
            ref = names[op.inputs[0]]
        elif ref not in float_names and out in dequantized_as:  # renamed int8 twin of a float output
            ref = dequantized_as[out]
        if t.type != _INT8 or q is None or q.scale is None or len(q.scale) != 1 or ref not in float_names:
            continue
        layers = layers_in_name(model, names[out], names) or layers_in_name(model, ref, names)
        weight_layer = None
        if code in _WEIGHT_OPS:
            w_name = names[op.inputs[1]] if len(op.inputs) > 1 and op.inputs[1] >= 0 else ""
            w_layers = [x for x in layers_in_name(model, w_name, names) + layers if x in weighted]
            weight_layer = w_layers[0] if w_layers else None
        if code == _QUANTIZE and not layers:
            layers = ["input"]
        producers[out] = len(rows)
        scale, zp = float(q.scale[0]), int(q.zeroPoint[0])
        rows.append({
            "index": len(rows), "tensor": names[out], "reference": ref, "layers": layers,
            "weight_layer": weight_layer, "op": code_names.get(code, str(code)), "has_weights": code in _WEIGHT_OPS,
            "scale": scale, "zero_point": zp, "range": ((-128 - zp) * scale, (127 - zp) * scale),
            "calibrated_range": ranges.get(ref),
            "_inputs": [i for i in op.inputs if i >= 0],
            "_acc": np.zeros(4),  # sum f^2, sum (f-q)^2, sum (f-fq)^2, clipped count
            "_n": 0,
        })
    if not rows:
        raise KslimValueError(f"quant_debug: no int8 activation tensor found in the quantized {model.name!r}.")
    wanted_q = {r["tensor"] for r in rows}
    wanted_f = {r["reference"] for r in rows}
    run_f, run_q = TensorRunner(calibrated), TensorRunner(quantized)
    out_name = names[sg.outputs[0]]
    agree = n_class = out_n = 0  # top-1 agreements / samples with class scores, output elements
    out_acc = np.zeros(2)
    for x in data:
        fv = run_f(x, wanted_f | {out_name})
        qv = run_q(x, wanted_q | {out_name})
        for r in rows:
            f, qq = fv.get(r["reference"]), qv.get(r["tensor"])
            if f is None or qq is None or f.shape != qq.shape:
                continue
            lo, hi = r["range"]
            half = r["scale"] / 2
            fq = np.round(np.clip(f, lo, hi) / r["scale"]) * r["scale"]
            r["_acc"] += (np.sum(f.astype(np.float64) ** 2), np.sum((f - qq).astype(np.float64) ** 2),
                          np.sum((f - fq).astype(np.float64) ** 2), np.sum((f < lo - half) | (f > hi + half)))
            r["_n"] += f.size
        f_out, q_out = fv.get(out_name), qv.get(out_name)
        if f_out is not None and q_out is not None:
            out_acc += (np.sum(f_out.astype(np.float64) ** 2), np.sum((f_out - q_out).astype(np.float64) ** 2))
            out_n += f_out.size
            if f_out.ndim == 2 and f_out.shape[-1] > 1:
                agree += int(np.sum(np.argmax(f_out, -1) == np.argmax(q_out, -1)))
                n_class += len(f_out)
    for r in rows:
        s, e, local, clipped = r.pop("_acc")
        n = max(r.pop("_n"), 1)
        r["snr_db"], r["mse"] = _snr(s, e), float(e / n)
        r["local_snr_db"], r["clipped"] = _snr(s, local), float(clipped / n)
    for r in rows:
        ins = [rows[producers[i]]["snr_db"] for i in r.pop("_inputs") if i in producers]
        # inputs not tracked (float graph input): the drop is not measured
        drop = min(ins) - r["snr_db"] if ins else 0.0
        r["snr_drop_db"] = float(max(drop, 0.0)) if np.isfinite(drop) else 0.0
    summary = {"snr_db": _snr(*out_acc), "mse": float(out_acc[1] / max(out_n, 1)),
               "argmax_agreement": float(agree / n_class) if n_class else None}
    return QuantDebugReport(rows, summary, algo, int(sum(batch_len(x) for x in data)))
