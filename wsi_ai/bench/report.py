"""The bench's figures as rows with their limits, the verdict on what binds, and the table.

Every rate is in patches per second of the slide's patch table. A stage measured inside
the reader (file read, tile decode, patch assembly) adds up its time over the reader's
threads, so its rate is ``patches * threads / summed seconds``: what that stage alone
could deliver with every reader thread on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BINDS_AT", "Row", "SlideBench", "format_table", "rows", "verdict"]

BINDS_AT = 0.8  # end to end at this share of the model alone: the model is what binds


@dataclass
class SlideBench:
    """Everything measured on one slide (seconds unless named otherwise)."""

    slide: str
    patches: int
    reader: str
    model_s: float  # building the model (shared by every slide of the run)
    prepare_s: float  # tissue and grid
    first_batch_s: float  # the reader's first batch on the device
    input_s: float
    parallel: int
    read_stats: dict[str, float]
    model_rate: float
    end_to_end_s: float
    stitch_s: float
    export_s: float
    file_read: dict[str, Any] | None
    decode: dict[str, Any]
    usage: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows"] = [asdict(r) | {"ratio": r.ratio} for r in rows(self)]
        data["startup_s"] = round(self.startup_s, 3)
        data["verdict"] = verdict(self)
        return data

    @property
    def startup_s(self) -> float:
        """Before the first batch reaches the model: model, tissue and grid, first batch."""
        return self.model_s + self.prepare_s + self.first_batch_s


@dataclass
class Row:
    stage: str
    rate: float | None  # patches/s
    seconds: float | None  # per slide
    limit: str | None = None
    limit_rate: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.rate is None or not self.limit_rate:
            return None
        return self.rate / self.limit_rate


def _rate(patches: int, seconds: float | None) -> float | None:
    return None if not seconds or seconds <= 0 else patches / seconds


def rows(b: SlideBench) -> list[Row]:
    """The table's rows, each stage beside the limit it is compared with."""
    n, stats, par = b.patches, b.read_stats, max(1, b.parallel)
    read_s = stats.get("read_s", 0.0) / par if stats.get("bytes_read") else None
    decode_s = stats.get("decode_s", 0.0) / par if stats else None
    assemble_s = stats.get("assemble_s", 0.0) / par if stats else None
    file_limit = None if b.file_read is None else _rate(n, b.file_read["seconds"])
    decode_limit = _rate(n, b.decode["seconds"])
    decode_name = f"raw decode, {b.decode['where']}"
    return [
        Row("file read", _rate(n, read_s), read_s, "file read, all cores", file_limit),
        Row("tile decode", _rate(n, decode_s), decode_s, decode_name, decode_limit),
        Row("patch assembly", _rate(n, assemble_s), assemble_s),
        Row(
            f"input ({b.reader} reader alone)",
            _rate(n, b.input_s),
            b.input_s,
            decode_name,
            decode_limit,
        ),
        Row("model alone", b.model_rate, n / b.model_rate if b.model_rate else None),
        Row("end to end", _rate(n, b.end_to_end_s), b.end_to_end_s, "model alone", b.model_rate),
        Row("stitch", _rate(n, b.stitch_s), b.stitch_s),
        Row("export", _rate(n, b.export_s), b.export_s),
    ]


def verdict(b: SlideBench) -> str:
    """One line: which stage binds the end-to-end rate."""
    table = {r.stage: r for r in rows(b)}
    e2e = table["end to end"].rate or 0.0
    model = b.model_rate
    input_rate = _rate(b.patches, b.input_s) or 0.0
    if model and e2e >= BINDS_AT * model:
        return f"the model binds: end to end runs at {e2e / model:.0%} of the model alone"
    if input_rate < model:
        parts = {
            name: table[name].seconds or 0.0
            for name in ("file read", "tile decode", "patch assembly")
        }
        worst = max(parts, key=lambda k: parts[k])
        limit = table["tile decode"].limit_rate
        share = f", {input_rate / limit:.0%} of the raw decode limit" if limit else ""
        return (
            f"patch input binds: the {b.reader} reader alone gives {input_rate:,.0f} patches/s "
            f"and the model alone {model:,.0f}; most reader time is {worst}{share}"
        )
    return (
        f"the overlap binds: reader alone {input_rate:,.0f} and model alone {model:,.0f} "
        f"patches/s are both faster than end to end ({e2e:,.0f}): they slow each other "
        "(shared cores, copies, the writer)"
    )


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if value < 1000 else f"{value:,.0f}"


def format_table(b: SlideBench) -> str:
    """The slide's figures as a plain-text table, with start-up, memory and the verdict."""
    head = ("stage", "patches/s", "s/slide", "limit", "limit/s", "ratio")
    body = [
        (
            r.stage,
            _fmt(r.rate),
            _fmt(r.seconds, 2),
            r.limit or "",
            _fmt(r.limit_rate),
            "-" if r.ratio is None else f"{r.ratio:.0%}",
        )
        for r in rows(b)
    ]
    widths = [max(len(str(line[i])) for line in [head, *body]) for i in range(len(head))]
    lines = [f"{b.slide}: {b.patches:,} patches, {b.reader} reader"]
    for line in [head, *body]:
        cells = [
            str(c).ljust(w) if i in (0, 3) else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    u = b.usage
    memory = f"peak host memory {u['peak_rss_bytes'] / 2**30:.2f} GiB"
    if u.get("gpu_peak_used_bytes"):
        memory += f", GPU memory {u['gpu_peak_used_bytes'] / 2**30:.2f} GiB"
    if u.get("gpu_busy_percent") is not None:
        memory += f", GPU busy {u['gpu_busy_percent']:.0f}% during end to end"
    lines.append(memory)
    lines.append(
        f"start-up {b.startup_s:.2f} s before the first batch reaches the model: model "
        f"{b.model_s:.2f} s, tissue and grid {b.prepare_s:.2f} s, "
        f"first batch {b.first_batch_s:.2f} s"
    )
    lines.append(f"bottleneck: {verdict(b)}")
    return "\n".join(lines)
