"""Building blocks of wsi-ai's HTML reports: escaping, numbers, inline images, the page frame.

Every report is one self-contained file: images are ``data:`` URIs, styles are inline, and
the page's Content-Security-Policy forbids every fetch (``default-src 'none'``) and every
script but the one inline script a page declares by its hash, so an accidental external
reference is refused by the browser (and reported on its console) instead of loaded.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import re
from collections.abc import Iterable
from html import escape
from typing import Any

import numpy as np
from PIL import Image

MAX_IMAGE = 1024  # px, the longer side of an inlined overview image
JPEG_QUALITY = 85

CSS = """
:root { color-scheme: light; --line: #d0d4da; --muted: #5b6470; --bad: #b00020; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  margin: 0 auto; padding: 16px 24px 48px; max-width: 1280px; color: #1d232b; }
h1 { font-size: 22px; margin: 4px 0; } h2 { font-size: 17px; margin: 28px 0 8px;
  border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.sub { color: var(--muted); margin: 0 0 12px; }
.banner { border-radius: 6px; padding: 10px 14px; margin: 10px 0; font-weight: 600; }
.banner.danger { background: #fde7ea; border: 2px solid var(--bad); color: #7a0016; }
.banner.warn { background: #fff5d6; border: 1px solid #d9a400; color: #5c4500; }
.banner strong { letter-spacing: .04em; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left;
  vertical-align: middle; }
th { background: #f1f3f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.facts th { width: 14em; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; word-break: break-all; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; max-width: 100%; }
figure img { display: block; max-width: 100%; max-height: 640px; width: auto; height: auto;
  border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; }
img.crop { display: block; max-width: 256px; max-height: 256px; width: auto; height: auto; }
.flag { color: var(--bad); font-weight: 600; }
.tag { display: inline-block; border-radius: 3px; padding: 0 5px; font-size: 12px;
  font-weight: 600; background: #fde7ea; color: #7a0016; margin: 1px 2px 1px 0; }
.swatch { display: inline-block; width: 10px; height: 10px; border: 1px solid #0004;
  margin-right: 5px; vertical-align: baseline; }
.muted { color: var(--muted); }
ul.warnings { margin: 4px 0; padding-left: 20px; }
table.sortable th { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; font-size: 10px; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; font-size: 10px; }
@media print { .banner { break-inside: avoid; } tr { break-inside: avoid; } }
"""


def esc(value: object) -> str:
    """Text and attribute values, HTML-escaped (quotes too)."""
    return escape(str(value), quote=True)


def number(value: Any) -> float | None:
    """A finite number from a record or CSV cell (``""``, ``None``, NaN and text are ``None``)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        out = float(value)
    else:
        try:
            out = float(str(value).strip())
        except ValueError:
            return None
    return out if math.isfinite(out) else None


def truthy(value: Any) -> bool:
    """``True``, ``"True"``, ``"true"``, ``"1"``, ``"yes"`` (a record's or a CSV's flag)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def fmt(value: Any, decimals: int = 3) -> str:
    """A cell's text: floats to ``decimals`` places (large ones grouped), blanks as a dash."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    n = number(value)
    if n is None:
        return str(value)
    if abs(n) >= 1000:
        return f"{n:,.0f}"
    text = f"{n:.{decimals}f}"
    if n != 0 and float(text) == 0:  # tiny but not zero: keep 3 significant digits
        return f"{n:.3g}"
    return text


def as_list(value: Any) -> list[str]:
    """A list of names from a record (list) or a CSV cell (``"a; b"``)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in re.split(r"[;,]", value) if part.strip()]
    if isinstance(value, Iterable):
        return [str(v) for v in value if str(v)]
    return [str(value)]


_PART = r"[^\s\\/:;,()'\"<>\[\]]+"
_ABSOLUTE_PATH = re.compile(rf"(?<![\w.~])(?:[A-Za-z]:)?[\\/](?:{_PART}[\\/])+({_PART})")


def redact_paths(text: str) -> str:
    """``text`` with every absolute path cut down to its file name (reports show no paths)."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1), text)


def image_uri(
    image: np.ndarray | Image.Image, max_side: int = MAX_IMAGE, photo: bool = True
) -> tuple[str, int, int]:
    """``(data URI, width, height)`` of ``image`` shrunk to ``max_side``: JPEG for photos
    (alpha composited on white), PNG otherwise."""
    img = Image.fromarray(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    if img.mode in ("RGBA", "LA", "P"):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    elif img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    scale = min(1.0, max_side / max(img.size))
    if scale < 1.0:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if photo:
        img.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        mime = "image/jpeg"
    else:
        img.save(buffer, format="PNG", optimize=True)
        mime = "image/png"
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:{mime};base64,{data}", img.width, img.height


def img_tag(uri: str, width: int, height: int, alt: str, css: str = "") -> str:
    cls = f' class="{esc(css)}"' if css else ""
    return f'<img src="{uri}" width="{width}" height="{height}" alt="{esc(alt)}"{cls}>'


def table(
    headers: Iterable[str],
    rows: Iterable[Iterable[str]],
    css: str = "",
    numeric: Iterable[int] = (),
    row_id: str = "",
) -> str:
    """A table of already-escaped cells; the ``numeric`` column indexes align right."""
    right = set(numeric)
    head = "".join(
        f'<th class="num" scope="col">{h}</th>' if i in right else f'<th scope="col">{h}</th>'
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{c}</td>' if i in right else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    attrs = (f' class="{esc(css)}"' if css else "") + (f' id="{esc(row_id)}"' if row_id else "")
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def facts(pairs: Iterable[tuple[str, str]]) -> str:
    """A two-column table of (escaped label, escaped value) pairs."""
    rows = "".join(f'<tr><th scope="row">{k}</th><td>{v}</td></tr>' for k, v in pairs)
    return f'<table class="facts"><tbody>{rows}</tbody></table>'


def banner(kind: str, html: str) -> str:
    return f'<div class="banner {esc(kind)}" role="alert">{html}</div>'


def _sha256_source(text: str) -> str:
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return f"'sha256-{digest}'"


def page(title: str, body: str, script: str | None = None) -> str:
    """One whole HTML document. ``script`` (inline, allowed by its hash) runs after the body;
    without it the page may run no script at all."""
    scripts = _sha256_source(script) if script else "'none'"
    csp = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src {scripts}; base-uri 'none'; form-action 'none'"
    )
    tail = f"<script>{script}</script>" if script else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
        f"<body>\n{body}\n{tail}</body></html>\n"
    )
