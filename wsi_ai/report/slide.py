"""``report.html``: one slide's results on one self-contained page for the reviewing pathologist.

:func:`write_slide_report` reads what a pipeline run left in ``OUT/slides/<name>/`` (the
``slide.json`` record, ``prediction.json``, ``thumbnail.png``, ``overlay.png``,
``regions.geojson``) and the slide itself (for a crop of each top region) and writes
``report.html``: the prediction and its calibrated confidence, a RANDOM-INIT banner when the
model was never trained, the QC measures and flags, the top regions with their crops, the
warnings and the provenance (pipeline and model hashes).

The page identifies the slide by its file NAME only: no path, no vendor, no scanner
property (the record's ``slide.path`` and the slide's ``properties`` are never read here),
and it runs no script. Images are inlined as ``data:`` URIs, shrunk to at most 1024 px.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from wsi_ai.outputs import atomic_output
from wsi_ai.report.html import (
    MAX_IMAGE,
    as_list,
    banner,
    esc,
    facts,
    fmt,
    image_uri,
    img_tag,
    number,
    page,
    redact_paths,
    table,
    truthy,
)
from wsi_ai.slide import Slide
from wsi_ai.slide.slide import BAND_PIXELS, resize

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
MAX_REGIONS = 20
CROP_SIZE = 256  # px, the longer side of a region's crop
CROP_MARGIN = 0.15  # of the region's longer side, around its bounding box
MIN_MARGIN = 32  # level-0 px
QC_MEASURES = (
    ("tissue_area_mm2", "Tissue area (mm²)"),
    ("blur_fraction", "Blurred fraction"),
    ("pen_fraction", "Pen-mark fraction"),
    ("bubble_fraction", "Bubble fraction"),
    ("patches_sampled", "Patches sampled"),
)
RANDOM_INIT_TEXT = (
    "<strong>RANDOM-INIT</strong> — this run used a model with randomly initialised, "
    "untrained weights. The prediction, scores and regions below are meaningless: "
    "for testing the pipeline only, never for diagnosis."
)


def write_slide_report(folder: Path, record: dict[str, Any], slide: Slide) -> Path:
    """Write ``folder/report.html`` for the slide ``record`` describes; return its path.

    ``slide`` is the same slide, open (region crops are read from it); a slide whose size
    differs from the record's is refused, so crops never come from another slide."""
    folder = Path(folder)
    recorded = (record.get("slide") or {}).get("dimensions")
    if recorded is not None and tuple(recorded) != tuple(slide.dimensions):
        raise ValueError(
            f"{slide.path.name} is {slide.dimensions[0]}x{slide.dimensions[1]} px but the "
            f"record describes a {recorded[0]}x{recorded[1]} px slide; open the slide the "
            "record was made from"
        )
    document = render_slide_report(folder, record, slide)
    path = folder / REPORT_NAME
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(document, encoding="utf-8")
    return path


def render_slide_report(folder: Path, record: dict[str, Any], slide: Slide) -> str:
    """The text of ``report.html`` (see :func:`write_slide_report`)."""
    info = record.get("slide") or {}
    name = str(info.get("name") or slide.path.name)
    prediction = _prediction(folder, record)
    parts = [
        f"<h1>Slide report: {esc(name)}</h1>",
        f'<p class="sub">{_subtitle(record, folder)}</p>',
        *_banners(record, prediction),
        _overview(record, name),
        _prediction_section(prediction),
        _images(folder),
        _qc_section(record),
        _regions_section(folder, slide),
        _warnings_section(record, prediction),
        _provenance(record, prediction),
    ]
    return page(f"wsi-ai report: {name}", "\n".join(p for p in parts if p))


# -- reading the slide folder ----------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                return json.load(handle)
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("%s: not readable (%s); left out of the report", path.name, err)
        return None


def _prediction(folder: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    """``prediction.json`` (the full record) or else the record's short ``prediction``."""
    full = (
        _read_json(folder / "prediction.json") if (folder / "prediction.json").is_file() else None
    )
    short = record.get("prediction")
    if isinstance(full, dict):
        return full
    return short if isinstance(short, dict) else None


def _random_init(record: dict[str, Any], prediction: dict[str, Any] | None) -> bool:
    models = (record.get("identity") or {}).get("models") or {}
    return (
        truthy(record.get("random_init"))
        or truthy(models.get("random_init"))
        or (prediction is not None and truthy(prediction.get("random_init")))
    )


def _regions(folder: Path) -> list[dict[str, Any]] | None:
    for file in ("regions.geojson", "regions.geojson.gz"):
        if (folder / file).is_file():
            doc = _read_json(folder / file)
            features = doc.get("features") if isinstance(doc, dict) else None
            return [f for f in features or [] if isinstance(f, dict) and f.get("geometry")]
    return None


def _measure(feature: dict[str, Any], key: str) -> float | None:
    return number(((feature.get("properties") or {}).get("measurements") or {}).get(key))


def top_regions(features: list[dict[str, Any]], limit: int = MAX_REGIONS) -> list[dict[str, Any]]:
    """The ``limit`` regions with the highest max score (then mean score, then area)."""

    def key(f: dict[str, Any]) -> tuple[float, ...]:
        values = (_measure(f, k) for k in ("Max score", "Mean score", "Area µm^2"))
        return tuple(-v if v is not None else math.inf for v in values)

    return sorted(features, key=key)[:limit]


# -- region crops ----------------------------------------------------------------------------


def _rings(geometry: dict[str, Any]) -> Iterator[np.ndarray]:
    """Every ring of a (Multi)Polygon / GeometryCollection, as (n, 2) level-0 px arrays."""
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        polygons = [coords]
    elif kind == "MultiPolygon":
        polygons = coords or []
    elif kind == "GeometryCollection":
        for part in geometry.get("geometries") or []:
            yield from _rings(part)
        return
    else:
        return
    for polygon in polygons:
        for ring in polygon or []:
            points = np.asarray(ring, dtype=np.float64)
            if points.ndim == 2 and points.shape[0] >= 2 and points.shape[1] >= 2:
                yield points[:, :2]


def _read_scaled(
    slide: Slide, origin: tuple[int, int], size: tuple[int, int], out: tuple[int, int]
) -> np.ndarray:
    """Level-0 box ``origin`` + ``size`` shrunk to ``out`` px, read from the coarsest level
    fine enough and in bands (bounded memory, even from a slide without a pyramid)."""
    downsample = max(size[0] / out[0], size[1] / out[1], 1.0)
    level = slide.best_level_for_downsample(downsample)
    lds = slide.levels[level].downsample
    read_w, read_h = max(1, math.ceil(size[0] / lds)), max(1, math.ceil(size[1] / lds))
    if read_w * read_h <= BAND_PIXELS:
        return resize(slide.read_region(origin, level, (read_w, read_h)), out)
    k = max(1, math.floor(min(read_w / out[0], read_h / out[1])))
    band = max(BAND_PIXELS // (read_w * k), 1) * k
    inter_w = max(1, round(read_w / k))
    bands = []
    for top in range(0, read_h, band):
        rows = min(band, read_h - top)
        pixels = slide.read_region((origin[0], round(origin[1] + top * lds)), level, (read_w, rows))
        bands.append(resize(pixels, (inter_w, max(1, round(rows / k)))))
    return resize(np.concatenate(bands, axis=0), out)


def region_crop(
    slide: Slide, geometry: dict[str, Any], color: tuple[int, int, int] = (0, 160, 0)
) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """The region's bounding box plus a margin, at most :data:`CROP_SIZE` px, its outline
    drawn; and the box ``(x, y, width, height)`` in level-0 px. ``None`` without geometry."""
    rings = list(_rings(geometry))
    if not rings:
        return None
    points = np.concatenate(rings)
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    margin = max(CROP_MARGIN * max(x1 - x0, y1 - y0), MIN_MARGIN)
    width, height = slide.dimensions
    left, top = max(0, math.floor(x0 - margin)), max(0, math.floor(y0 - margin))
    right, bottom = min(width, math.ceil(x1 + margin)), min(height, math.ceil(y1 + margin))
    if right <= left or bottom <= top:
        return None
    box_w, box_h = right - left, bottom - top
    scale = min(1.0, CROP_SIZE / max(box_w, box_h))  # output px per level-0 px
    out = (max(1, round(box_w * scale)), max(1, round(box_h * scale)))
    pixels = np.ascontiguousarray(_read_scaled(slide, (left, top), (box_w, box_h), out))
    outlines = [
        np.round((ring - (left, top)) * (out[0] / box_w, out[1] / box_h)).astype(np.int32)
        for ring in rings
    ]
    cv2.polylines(pixels, outlines, isClosed=True, color=color, thickness=2, lineType=cv2.LINE_AA)
    return pixels, (left, top, box_w, box_h)


def _color(feature: dict[str, Any]) -> tuple[int, int, int]:
    raw = ((feature.get("properties") or {}).get("classification") or {}).get("color")
    if isinstance(raw, list | tuple) and len(raw) >= 3:
        values = [number(v) for v in raw[:3]]
        if all(v is not None for v in values):
            r, g, b = (int(min(255, max(0, v or 0))) for v in values)
            return r, g, b
    return 0, 160, 0


# -- sections --------------------------------------------------------------------------------


def _subtitle(record: dict[str, Any], folder: Path) -> str:
    bits = []
    if record.get("pipeline"):
        bits.append(f"pipeline <b>{esc(record['pipeline'])}</b>")
    if record.get("finished"):
        bits.append(f"finished {esc(record['finished'])}")
    if folder.parent.name == "slides":  # inside a run's OUT: the cohort summary is two up
        bits.append('<a href="../../summary.html">cohort summary</a>')
    return " · ".join(bits)


def _banners(record: dict[str, Any], prediction: dict[str, Any] | None) -> list[str]:
    out = []
    if _random_init(record, prediction):
        out.append(banner("danger", RANDOM_INIT_TEXT))
    flags = as_list(record.get("qc_flags"))
    if flags:
        names = ", ".join(esc(f) for f in flags)
        out.append(
            banner(
                "warn",
                f"<strong>QC flags</strong>: {names} — outside the cohort's usual range; check "
                "the slide's quality before relying on the results.",
            )
        )
    if record.get("warnings"):
        out.append(banner("warn", f"{len(record['warnings'])} warning(s): see Warnings below."))
    return out


def _overview(record: dict[str, Any], name: str) -> str:
    info = record.get("slide") or {}
    dims = info.get("dimensions") or []
    size = f"{fmt(int(dims[0]))} × {fmt(int(dims[1]))} px" if len(dims) == 2 else "–"
    mpp = number(info.get("mpp"))
    stages = record.get("stages") or {}
    seconds = sum(v for v in (number(s) for s in stages.values()) if v is not None)
    pairs = [
        ("Slide file", f"<b>{esc(name)}</b>"),
        ("Size (level 0)", esc(size)),
        ("Resolution", esc(f"{mpp:.4g} µm/px") if mpp is not None else "–"),
        ("Tissue area", esc(f"{fmt(record.get('tissue_area_mm2'))} mm²")),
        ("Tissue fraction", esc(fmt(record.get("tissue_fraction")))),
        ("Patches", esc(fmt(record.get("patches")))),
        ("Regions", esc(fmt(record.get("regions")))),
        ("Processing time", esc(f"{seconds:.1f} s") if stages else "–"),
    ]
    return "<h2>Overview</h2>" + facts(pairs)


def _prediction_section(prediction: dict[str, Any] | None) -> str:
    if not prediction:
        return ""
    label = prediction.get("class", "–")
    pairs = [
        ("Predicted class", f"<b>{esc(label)}</b>"),
        ("Probability", esc(fmt(prediction.get("probability")))),
        ("Calibrated confidence", f"<b>{esc(fmt(prediction.get('confidence')))}</b>"),
    ]
    if number(prediction.get("temperature")) is not None:
        pairs.append(("Calibration temperature", esc(fmt(prediction.get("temperature")))))
    html = "<h2>Prediction</h2>" + facts(pairs)
    probs = prediction.get("probabilities")
    calibrated = prediction.get("calibrated_probabilities") or {}
    if isinstance(probs, dict) and probs:
        rows = [
            [esc(c), esc(fmt(p)), esc(fmt(calibrated.get(c)))]
            for c, p in sorted(probs.items(), key=lambda kv: -(number(kv[1]) or 0.0))
        ]
        html += table(["Class", "Probability", "Calibrated"], rows, numeric=(1, 2))
    return html


def _images(folder: Path) -> str:
    figures = []
    for file, caption in (
        ("thumbnail.png", "Slide thumbnail"),
        ("overlay.png", "Score heatmap over the slide"),
    ):
        path = folder / file
        if not path.is_file():
            continue
        try:
            with Image.open(path) as img:
                img.load()
                uri, w, h = image_uri(img, MAX_IMAGE)
        except OSError as err:
            log.warning("%s: not readable (%s); left out of the report", file, err)
            continue
        figures.append(
            f"<figure>{img_tag(uri, w, h, caption)}<figcaption>{esc(caption)}</figcaption></figure>"
        )
    if not figures:
        return ""
    return '<h2>Slide</h2><div class="figures">' + "".join(figures) + "</div>"


def _qc_section(record: dict[str, Any]) -> str:
    qc = record.get("qc")
    flags = set(as_list(record.get("qc_flags")))
    if not isinstance(qc, dict) and not flags:
        return ""
    qc = qc if isinstance(qc, dict) else {}
    rows = []
    shown = set()
    for key, label in QC_MEASURES:
        if key in qc:
            shown.add(key)
            flag = '<span class="flag">FLAG</span>' if key in flags else ""
            rows.append([esc(label), esc(fmt(qc[key])), flag])
    stains = qc.get("stain_vectors")
    if isinstance(stains, dict):
        shown.add("stain_vectors")
        for stain, vector in stains.items():
            values = ", ".join(fmt(v) for v in vector) if isinstance(vector, list) else fmt(vector)
            flag = '<span class="flag">FLAG</span>' if "stain_vectors" in flags else ""
            rows.append([esc(f"Stain vector: {stain}"), esc(f"[{values}]"), flag])
    elif "stain_vectors" in qc:
        shown.add("stain_vectors")
        rows.append([esc("Stain vectors"), esc("not estimated"), ""])
    for key, value in qc.items():  # measures this version does not know yet
        if key not in shown and not isinstance(value, dict | list):
            flag = '<span class="flag">FLAG</span>' if key in flags else ""
            rows.append([esc(key), esc(fmt(value)), flag])
    for key in sorted(flags - set(qc)):
        rows.append([esc(key), "–", '<span class="flag">FLAG</span>'])
    return "<h2>Quality control</h2>" + table(["Measure", "Value", "Flag"], rows, numeric=(1,))


def _regions_section(folder: Path, slide: Slide) -> str:
    features = _regions(folder)
    if features is None:
        return '<h2>Top regions</h2><p class="muted">This pipeline writes no region map.</p>'
    if not features:
        return '<h2>Top regions</h2><p class="muted">No region above the threshold.</p>'
    chosen = top_regions(features)
    rows = []
    for rank, feature in enumerate(chosen, start=1):
        props = feature.get("properties") or {}
        classification = props.get("classification") or {}
        color = _color(feature)
        try:
            crop = region_crop(slide, feature["geometry"], color)
        except Exception as err:  # a crop that cannot be read must not cost the whole report
            log.warning("%s: region %d not readable (%s)", slide.path.name, rank, err)
            crop = None
        if crop is None:
            picture, where = '<span class="muted">no crop</span>', "–"
        else:
            uri, w, h = image_uri(crop[0], max_side=max(crop[0].shape[:2]))
            picture = img_tag(uri, w, h, f"region {rank}", css="crop")
            x, y, bw, bh = crop[1]
            where = esc(f"x {x}, y {y}, {bw} × {bh}")
        swatch = '<span class="swatch" style="background: rgb({}, {}, {})"></span>'.format(*color)
        rows.append(
            [
                str(rank),
                picture,
                swatch + esc(classification.get("name") or "–"),
                esc(fmt(_measure(feature, "Area µm^2"))),
                esc(fmt(_measure(feature, "Mean score"))),
                esc(fmt(_measure(feature, "Max score"))),
                where,
            ]
        )
    note = (
        f'<p class="sub">The {len(chosen)} region(s) with the highest max score, of '
        f"{len(features)}; crops show the bounding box plus a margin, outlined in the class "
        "colour; boxes are in level-0 pixels (as in QuPath).</p>"
    )
    headers = ["#", "Crop", "Class", "Area (µm²)", "Mean score", "Max score", "Box (level-0 px)"]
    return (
        "<h2>Top regions</h2>" + note + table(headers, rows, numeric=(0, 3, 4, 5), row_id="regions")
    )


def _warnings_section(record: dict[str, Any], prediction: dict[str, Any] | None) -> str:
    warnings = [str(w) for w in record.get("warnings") or []]
    if prediction and prediction.get("warning"):
        warnings.append(str(prediction["warning"]))
    if not warnings:
        return '<h2>Warnings</h2><p class="muted">None.</p>'
    items = "".join(f"<li>{esc(redact_paths(w))}</li>" for w in dict.fromkeys(warnings))
    return f'<h2>Warnings</h2><ul class="warnings">{items}</ul>'


def _code(value: Any) -> str:
    return f"<code>{esc(value)}</code>" if value not in (None, "") else "–"


def _provenance(record: dict[str, Any], prediction: dict[str, Any] | None) -> str:
    identity = record.get("identity") or {}
    models = identity.get("models") or {}
    weights = models.get("weights_sha256")
    pairs = [
        ("Pipeline", esc(record.get("pipeline") or "–")),
        ("Pipeline config hash", _code(identity.get("pipeline"))),
    ]
    if models:
        pairs += [
            ("Model card", esc(models.get("card") or "–")),
            ("Model card hash", _code(models.get("card_hash"))),
            (
                "Weights sha256",
                _code(weights)
                if weights
                else ("none (random init)" if truthy(models.get("random_init")) else "–"),
            ),
        ]
        if "aggregator_sha256" in models:
            pairs.append(("Aggregator sha256", _code(models.get("aggregator_sha256"))))
    if prediction and isinstance(prediction.get("model"), dict):
        pairs.append(("Aggregator", esc(prediction["model"].get("aggregator") or "–")))
    pairs += [
        ("Input fingerprint (size:sha256)", _code(identity.get("input"))),
        ("wsi-ai version", esc(record.get("wsi_ai_version") or "–")),
        ("Finished", esc(record.get("finished") or "–")),
    ]
    return "<h2>Provenance</h2>" + facts(pairs)
