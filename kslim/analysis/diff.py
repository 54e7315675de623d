"""Compare two versions of a model (before / after pruning) layer by layer."""

from dataclasses import dataclass, field

from kslim.analysis._table import fmt_int, format_table, human


@dataclass
class LayerDiff:
    """One layer of a :class:`SummaryDiff`; ``None`` on the side where the layer does not exist."""

    name: str
    type: str
    channels_before: object
    channels_after: object
    macs_before: object
    macs_after: object

    @property
    def macs_delta(self):
        return (self.macs_after or 0) - (self.macs_before or 0)


@dataclass
class SummaryDiff:
    """What :func:`summary_diff` returns; ``str()`` is the comparison table."""

    before_name: str
    after_name: str
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    rows: list = field(default_factory=list)

    @staticmethod
    def _reduction(a, b):
        return 0.0 if not a else 1.0 - b / a

    @property
    def params_reduction(self):
        """Fraction of parameters removed (0.3 = 30 % fewer)."""
        return self._reduction(self.params_before, self.params_after)

    @property
    def macs_reduction(self):
        """Fraction of MACs removed."""
        return self._reduction(self.macs_before, self.macs_after)

    def table(self, changed_only=False):
        def ch(v):
            return "-" if v is None else str(v)

        def mac(v):
            return "-" if v is None else fmt_int(v)

        rows = []
        for r in self.rows:
            if changed_only and r.channels_before == r.channels_after and r.macs_before == r.macs_after:
                continue
            if r.macs_before and r.macs_after is not None:
                delta = f"{r.macs_delta:+,} ({r.macs_delta / r.macs_before:+.1%})"
            else:
                delta = f"{r.macs_delta:+,}" if r.macs_delta else ""
            rows.append([r.name, r.type, f"{ch(r.channels_before)} -> {ch(r.channels_after)}",
                         mac(r.macs_before), mac(r.macs_after), delta])
        out = [format_table(["Layer", "Type", "Channels", "MACs before", "MACs after", "Delta"], rows,
                            align="llrrrr")]
        totals = [
            ["Params", fmt_int(self.params_before), fmt_int(self.params_after), f"{self.params_reduction:.1%}"],
            ["MACs", fmt_int(self.macs_before), fmt_int(self.macs_after), f"{self.macs_reduction:.1%}"],
        ]
        out.append(f"{self.before_name!r} -> {self.after_name!r} "
                   f"({human(self.macs_before)} -> {human(self.macs_after)} MACs):")
        out.append(format_table(["Total", "Before", "After", "Reduction"], totals, align="lrrr"))
        return "\n".join(out)

    def __str__(self):
        return self.table()


def _channels(row):
    shape = row.output_shape
    if isinstance(shape, list):  # several outputs: show the first
        shape = shape[0]
    if not shape or len(shape) < 2:
        return None
    return shape[-1]


def summary_diff(before, after, input_shape=None):
    """Per-layer output channels and MACs of ``before`` vs ``after``, matched by layer name.

    Layers present in only one model are shown with ``-`` on the other side. Totals give params,
    MACs and the reduction in %. Shapes and MACs follow :func:`kslim.analysis.flops`
    (``input_shape`` is passed to it for models without a defined input shape); channels are the
    last axis of each layer's output (channels_last).

    Example:
        >>> import keras
        >>> def net(c):
        ...     return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(c, 3, name="conv")])
        >>> d = summary_diff(net(8), net(4))
        >>> d.rows[0].channels_before, d.rows[0].channels_after, f"{d.macs_reduction:.0%}"
        (8, 4, '50%')
    """
    from kslim.analysis.flops import flops

    rb, ra = flops(before, input_shape), flops(after, input_shape)
    after_rows = {r.name: r for r in ra.rows}
    before_names = {r.name for r in rb.rows}
    rows = []
    for r in rb.rows:
        a = after_rows.get(r.name)
        rows.append(LayerDiff(r.name, r.type, _channels(r), _channels(a) if a else None, r.macs,
                              a.macs if a else None))
    for a in ra.rows:  # layers only in ``after``, in their order
        if a.name not in before_names:
            rows.append(LayerDiff(a.name, a.type, None, _channels(a), None, a.macs))
    rows = [r for r in rows if r.type != "InputLayer"]
    return SummaryDiff(before.name, after.name, rb.params, ra.params, rb.macs, ra.macs, rows)
