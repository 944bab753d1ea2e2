"""``summary.html``: a batch's slides ranked for review, each linked to its ``report.html``.

:func:`triage_order` is the ranking (``summary.csv`` can use it too):

1. failed slides first: they were never analysed, and at the bottom of a long list a
   failure would read as "least suspicious";
2. then slides with a prediction, most suspicious first: the suspicion of a row is the
   probability of its predicted class when that class is not one of ``negative_classes``
   (``normal``, ``benign``, ``negative`` by default, compared case-insensitively), else
   ``1 - probability`` (how likely the slide is not negative after all); equal suspicions go
   least confident (lower calibrated confidence) first;
3. then slides without a prediction (heatmap pipelines): more regions first, then more
   tissue area;
4. ties by slide name, so the order is deterministic.

:func:`write_cohort_report` writes ``OUT/summary.html``: the failed slides with their
one-line reasons (paths cut down to file names), then the ranked table with the QC flags of
each slide; a click on a column header sorts the table (one small inline script, allowed by
its hash in the page's Content-Security-Policy; no other script, no fetch, no server).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from wsi_ai.outputs import atomic_output
from wsi_ai.report.html import as_list, banner, esc, fmt, number, page, redact_paths, truthy
from wsi_ai.report.slide import RANDOM_INIT_TEXT, REPORT_NAME

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.html"
NEGATIVE_CLASSES: tuple[str, ...] = ("normal", "benign", "negative")

SORT_SCRIPT = """(function () {
  "use strict";
  function key(cell, numeric) {
    var v = cell.getAttribute("data-v");
    if (v === null) { v = cell.textContent.trim(); }
    if (v === "") { return null; }
    return numeric ? parseFloat(v) : v.toLowerCase();
  }
  document.querySelectorAll("table.sortable").forEach(function (tbl) {
    var heads = tbl.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      function sort() {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        var numeric = th.classList.contains("num");
        var body = tbl.tBodies[0];
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var rows = Array.prototype.map.call(body.rows, function (r, i) {
          return { row: r, k: key(r.cells[col], numeric), i: i };
        });
        rows.sort(function (a, b) {
          if (a.k === null || b.k === null) {
            return a.k === b.k ? a.i - b.i : (a.k === null ? 1 : -1);
          }
          var d = numeric ? a.k - b.k : a.k.localeCompare(b.k);
          return d === 0 ? a.i - b.i : (asc ? d : -d);
        });
        rows.forEach(function (r) { body.appendChild(r.row); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); }
      });
    });
  });
})();"""


def _name(row: dict[str, Any]) -> str:
    return str(row.get("slide") or "")


def _failed(row: dict[str, Any]) -> bool:
    return str(row.get("status") or "").strip().lower() == "failed"


def suspicion(
    row: dict[str, Any], negative_classes: Sequence[str] = NEGATIVE_CLASSES
) -> float | None:
    """How suspicious a row's prediction is (0..1), or ``None`` without a prediction."""
    label = str(row.get("class") or "").strip()
    probability = number(row.get("probability"))
    if not label or probability is None:
        return None
    negative = {c.strip().casefold() for c in negative_classes}
    return 1.0 - probability if label.casefold() in negative else probability


def _missing_last(value: float | None) -> tuple[int, float]:
    """Sort key part: larger values first, a missing value after every present one."""
    return (1, 0.0) if value is None else (0, -value)


def triage_order(
    rows: Iterable[dict[str, Any]], negative_classes: Sequence[str] = NEGATIVE_CLASSES
) -> list[dict[str, Any]]:
    """``rows`` (``summary.csv`` rows) in review order; see the module docs for the rule."""

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        name = _name(row)
        if _failed(row):
            return (0, name)
        s = suspicion(row, negative_classes)
        if s is not None:
            confidence = number(row.get("confidence"))
            # rounded so that suspicions equal as shown are ordered by confidence
            return (
                1,
                -round(s, 6),
                _missing_last(None if confidence is None else -confidence),
                name,
            )
        regions, area = number(row.get("regions")), number(row.get("tissue_area_mm2"))
        return (2, _missing_last(regions), _missing_last(area), name)

    return sorted(rows, key=key)


# -- the page ------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _qc_flags(out: Path, row: dict[str, Any]) -> list[str]:
    """The row's ``qc_flags`` column, or else its slide record's ``qc_flags``."""
    if "qc_flags" in row:
        return as_list(row["qc_flags"])
    if _failed(row) or not _name(row):
        return []
    record = _read_json(out / "slides" / _name(row) / "slide.json")
    return as_list(record.get("qc_flags")) if isinstance(record, dict) else []


def _reason(row: dict[str, Any]) -> str:
    """The one-line failure reason with the slide's path, and any other path, cut to names."""
    text = str(row.get("error") or "failed (no reason recorded)")
    path = str(row.get("path") or "")
    if path:
        text = text.replace(path, Path(path).name or path)
    return redact_paths(text.splitlines()[0] if text.strip() else text)


def _cell(html: str, value: Any = None, numeric: bool = False) -> str:
    """A table cell; ``value`` is its sort key (blank sorts last either way)."""
    attrs = ' class="num"' if numeric else ""
    if value is not None:
        attrs += f' data-v="{esc(value)}"'
    return f"<td{attrs}>{html}</td>"


NUM = ' class="num"'


def _num_cell(value: Any, decimals: int = 3) -> str:
    n = number(value)
    return _cell(
        esc(fmt(n, decimals)) if n is not None else "–", "" if n is None else repr(n), True
    )


def _slide_cell(out: Path, name: str) -> str:
    if (out / "slides" / name / REPORT_NAME).is_file():
        href = f"slides/{quote(name, safe='')}/{REPORT_NAME}"
        return _cell(f'<a href="{esc(href)}">{esc(name)}</a>', name)
    return _cell(f'{esc(name)} <span class="muted">(no report)</span>', name)


def _tags(names: Iterable[str]) -> str:
    return "".join(f'<span class="tag">{esc(n)}</span>' for n in names)


def _ranked_table(
    out: Path,
    rows: list[dict[str, Any]],
    negative_classes: Sequence[str],
    extra_columns: Sequence[str],
) -> str:
    predictions = any(suspicion(r, negative_classes) is not None for r in rows)
    labels = any(str(r.get("label") or "") for r in rows)
    heads: list[tuple[str, bool]] = [("#", True), ("Slide", False), ("Status", False)]
    if labels:
        heads.append(("Label", False))
    if predictions:
        heads += [
            ("Class", False),
            ("Probability", True),
            ("Confidence", True),
            ("Suspicion", True),
        ]
    heads += [("Regions", True), ("Tissue (mm²)", True), ("Patches", True), ("QC flags", False)]
    heads += [("Warnings", False), *((c, False) for c in extra_columns)]
    head = "".join(
        f'<th scope="col" tabindex="0"{NUM if numeric else ""}>{esc(h)}</th>'
        for h, numeric in heads
    )
    body = []
    for rank, row in enumerate(rows, start=1):
        name = _name(row)
        cells = [
            _cell(str(rank), rank, True),
            _slide_cell(out, name),
            _cell(esc(row.get("status"))),
        ]
        if labels:
            cells.append(_cell(esc(row.get("label") or "")))
        if predictions:
            tag = _tags(["RANDOM-INIT"]) if truthy(row.get("random_init")) else ""
            cells += [
                _cell(esc(row.get("class") or "") + (" " + tag if tag else ""), row.get("class")),
                _num_cell(row.get("probability")),
                _num_cell(row.get("confidence")),
                _num_cell(suspicion(row, negative_classes)),
            ]
        flags = _qc_flags(out, row)
        warnings = [w for w in str(row.get("warnings") or "").split("; ") if w]
        cells += [
            _num_cell(row.get("regions"), 0),
            _num_cell(row.get("tissue_area_mm2")),
            _num_cell(row.get("patches"), 0),
            _cell(_tags(flags), " ".join(flags)),
            _cell("<br>".join(esc(redact_paths(w)) for w in warnings), "; ".join(warnings)),
            *(_cell(esc(row.get(c, ""))) for c in extra_columns),
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table class="sortable" id="slides"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _failed_table(rows: list[dict[str, Any]]) -> str:
    body = "".join(f"<tr><td>{esc(_name(r))}</td><td>{esc(_reason(r))}</td></tr>" for r in rows)
    return (
        '<table id="failed"><thead><tr><th scope="col">Slide</th><th scope="col">Reason</th>'
        f"</tr></thead><tbody>{body}</tbody></table>"
    )


def render_cohort_report(
    out: Path,
    rows: Sequence[dict[str, Any]],
    *,
    negative_classes: Sequence[str] = NEGATIVE_CLASSES,
    extra_columns: Sequence[str] = (),
) -> str:
    """The text of ``summary.html`` (see :func:`write_cohort_report`)."""
    ordered = triage_order(rows, negative_classes)
    failed = [r for r in ordered if _failed(r)]
    ranked = [r for r in ordered if not _failed(r)]
    run = _read_json(out / "run.json")
    run = run if isinstance(run, dict) else {}
    pipeline: dict[str, Any] = _dict(run.get("pipeline"))
    models: dict[str, Any] = _dict(run.get("models"))
    counts = {s: sum(str(r.get("status")) == s for r in rows) for s in ("done", "skipped")}
    sub = [
        f"{len(rows)} slide(s): {counts['done']} done, {counts['skipped']} already complete, "
        f"{len(failed)} failed"
    ]
    if pipeline.get("name"):
        sub.insert(0, f"pipeline <b>{esc(pipeline['name'])}</b>")
    if pipeline.get("config_hash"):
        sub.append(f"config <code>{esc(str(pipeline['config_hash'])[:12])}</code>")
    parts = ["<h1>Batch summary</h1>", f'<p class="sub">{" · ".join(sub)}</p>']
    if truthy(models.get("random_init")) or any(truthy(r.get("random_init")) for r in rows):
        parts.append(banner("danger", RANDOM_INIT_TEXT))
    if failed:
        parts.append(
            banner("warn", f"{len(failed)} slide(s) failed and were NOT analysed; see below.")
        )
        parts += ["<h2>Failed slides</h2>", _failed_table(failed)]
    negatives = ", ".join(esc(c) for c in negative_classes)
    parts += [
        "<h2>Slides, most suspicious first</h2>",
        '<p class="sub">Ranked for review: with a prediction, by the probability of a '
        f"class other than {negatives} (1 − the probability when the predicted class is one "
        "of those), then lower confidence first; without a prediction, by the number of "
        "regions, then the tissue area. Click a column header to sort; # restores this "
        "order.</p>",
        _ranked_table(out, ranked, negative_classes, extra_columns)
        if ranked
        else '<p class="muted">No slide was analysed.</p>',
    ]
    return page("wsi-ai batch summary", "\n".join(parts), script=SORT_SCRIPT if ranked else None)


def write_cohort_report(
    out: Path,
    rows: list[dict[str, Any]],
    *,
    negative_classes: Sequence[str] = NEGATIVE_CLASSES,
    extra_columns: Sequence[str] = (),
) -> Path:
    """Write ``out/summary.html`` for the ``summary.csv`` rows ``rows``; return its path.

    Write the slides' ``report.html`` first: a row links to its report when the file exists.
    ``extra_columns`` adds manifest columns (none by default: they may identify patients)."""
    out = Path(out)
    document = render_cohort_report(
        out, rows, negative_classes=negative_classes, extra_columns=extra_columns
    )
    path = out / SUMMARY_NAME
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(document, encoding="utf-8")
    return path
