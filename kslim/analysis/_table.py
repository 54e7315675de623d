"""Plain-text tables for reports (``str(report)``), in the style of ``paddle.flops``."""


def human(n, unit=""):
    """``1234567`` -> ``'1.23 M'``: a short reading of a big count (K, M, G, T)."""
    if n is None:
        return "?"
    n = float(n)
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".rstrip()


def fmt_int(n):
    return "?" if n is None else f"{int(n):,}"


def fmt_shape(shape):
    if shape is None:
        return "-"
    if isinstance(shape, list):
        return ", ".join(fmt_shape(s) for s in shape)
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def format_table(headers, rows, align=None):
    """Render ``rows`` (lists of str) under ``headers`` as a boxed text table.

    ``align`` is a string of ``l``/``r`` per column (default: first column left, the others right).
    """
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(r):
        parts = [(c.ljust(w) if a == "l" else c.rjust(w)) for c, w, a in zip(r, widths, align)]
        return "| " + " | ".join(parts) + " |"

    out = [rule, line(cells[0]), rule.replace("-", "=")]
    out += [line(r) for r in cells[1:]]
    out.append(rule)
    return "\n".join(out)
