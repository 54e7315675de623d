#!/usr/bin/env python3
"""Sparse vs dense TFLite latency: do LiteRT/XNNPACK's sparse kernels make unstructured pruning faster here?

For each net and each sparsity (default 50/80/90 %), every kernel is magnitude-pruned
(``kslim.prune.unstructured.LevelPruner``), then converted twice: dense (``kslim.lite.convert``) and with
the converter's ``EXPERIMENTAL_SPARSITY`` (``kslim.prune.unstructured.convert_sparse``: zeros stored as
sparse tensors, DENSIFY ops). Batch-1 median latency through ai-edge-litert with XNNPACK
(``scripts/_benchlib.latency_ms``, rounds interleaved), on 1 thread and on all cores, next to the file size.

Nets: the reference MobileNetV1 and ResNet of ``kslim.models`` (28x28x1 inputs), and
``mobilenet_v1_sparse_ok``: a MobileNetV1 laid out as XNNPACK's sparse inference requires (its README:
the subgraph starts with a 3x3 stride-2 CONV_2D over 3 input channels with padding 1 on each side,
holds 1x1 convs (>= 2/3 zeros) and 3x3 depthwise convs with padding 1, and ends with a spatial MEAN):
129x129x3 inputs, so every stride-2 layer sees an odd size and SAME padding is 1 on each side. The
reference nets do not qualify (1-channel, stride-1 stem; ResNet has 3x3 convs), so on them the sparse
file can only be densified at load time. Weights are the seeded initial ones: latency does not depend
on their values, only on where the zeros are.

    python scripts/bench_sparsity.py --quick        # 1 sparsity, fewer runs (~1 min)
    nice -n 10 python scripts/bench_sparsity.py     # 50/80/90 %, prints the table (and --json PATH)
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

NETS = ("mobilenet_v1", "resnet", "mobilenet_v1_sparse_ok")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=NETS)
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.8, 0.9])
    p.add_argument("--runs", type=int, default=40, help="invokes per round (5 rounds, interleaved)")
    p.add_argument("--quick", action="store_true", help="one sparsity (0.9), 10 runs per round")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.sparsity, args.runs = [0.9], 10
    return args


def sparse_ok_mobilenet(seed=0):
    """MobileNetV1 (width 1) on 129x129x3 meeting XNNPACK's sparse-inference layout (see the module doc)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((129, 129, 3), name="input")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inp)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0)(x)
    for i, (filters, stride) in enumerate(((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)), 1):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"block{i}_dw")(x)
        x = layers.BatchNormalization(name=f"block{i}_dw_bn")(x)
        x = layers.ReLU(6.0)(x)
        x = layers.Conv2D(filters, 1, use_bias=False, name=f"block{i}_pw")(x)
        x = layers.BatchNormalization(name=f"block{i}_pw_bn")(x)
        x = layers.ReLU(6.0)(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inp, layers.Dense(10, name="logits")(x), name="mobilenet_v1_sparse_ok")


def build(net):
    import keras

    import kslim

    if net == "mobilenet_v1_sparse_ok":
        return sparse_ok_mobilenet()
    keras.utils.set_random_seed(0)
    return kslim.models.build(net)


def main(argv=None):
    args = parse_args(argv)
    from _benchlib import cpu_name, latency_ms

    from kslim.lite import convert
    from kslim.prune.unstructured import LevelPruner, convert_sparse, sparse_tensors, weight_sparsity

    print(f"host: {cpu_name()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; ai-edge-litert + XNNPACK, "
          f"batch 1, median of 5 interleaved rounds x {args.runs} invokes")
    rows = []
    for net in args.nets:
        base = build(net)
        lites = {"dense 0%": convert(base)}
        info = {}
        for s in args.sparsity:
            pruned = LevelPruner(base, s).prune()
            dense = convert(pruned)
            sparse = convert_sparse(pruned)
            lites[f"dense {s:.0%}"], lites[f"sparse {s:.0%}"] = dense, sparse
            info[s] = (weight_sparsity(pruned).sparsity, len(sparse_tensors(sparse)), _count_ops(sparse, "DENSIFY"))
        lat = latency_ms(lites, threads=(1, None), runs=args.runs)
        ref = lat["dense 0%"]
        for key, lite in lites.items():
            kind, pct = key.split()
            s = float(pct.rstrip("%")) / 100
            row = {"net": net, "sparsity": s, "format": kind, "bytes": lite.size,
                   "ms_1": lat[key]["1"], "ms_all": lat[key]["all"],
                   "vs_dense_1": ref["1"] / lat[key]["1"], "vs_dense_all": ref["all"] / lat[key]["all"]}
            if s in info:
                row["weight_sparsity"] = info[s][0]
                row["sparse_tensors"], row["densify_ops"] = info[s][1:] if kind == "sparse" else (0, 0)
            rows.append(row)
    print()
    print("| net | sparsity | format | bytes | ms (1 thread) | ms (all cores) | speed-up vs dense 0 % (1 / all) |"
          " sparse tensors / DENSIFY ops |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['net']} | {r['sparsity']:.0%} | {r['format']} | {r['bytes']:,} | {r['ms_1']:.3f} | "
              f"{r['ms_all']:.3f} | {r['vs_dense_1']:.2f}x / {r['vs_dense_all']:.2f}x | "
              f"{r.get('sparse_tensors', 0)} / {r.get('densify_ops', 0)} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


def _count_ops(lite, name):
    from kslim.lite.runner import describe_ops

    return sum(1 for sg in describe_ops(lite.content, subgraph="all") for op in sg if op["op"] == name)


if __name__ == "__main__":
    main()
