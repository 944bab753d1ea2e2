"""Pipeline files: one TOML file says what ``wsi-ai run`` does to every slide of a batch.

A pipeline file has a ``name`` and one table per stage, each parsed into a small frozen
dataclass (:class:`TissueStage`, :class:`GridStage`, :class:`ScoreStage`, :class:`ModelStage`,
:class:`AggregatorStage`, :class:`StitchStage`, :class:`ExportStage`) composed into a
:class:`Pipeline`. Every key is checked: an unknown table or key, a value of the wrong type or
outside its allowed values is one :class:`~wsi_ai.errors.InvalidInputError` naming the file,
the key and what is allowed. Paths in the file are relative to the file's folder.

Command-line overrides are ``section.key=value`` strings (``--set grid.mpp=1``), with values in
TOML syntax (a bare word is taken as a string); they are applied before the checks.

:meth:`Pipeline.config_hash` is the hash a resumed run compares: the resolved settings, not
the file's bytes, so a comment edit does not recompute a cohort, and an override does; speed
knobs (:data:`SPEED_ONLY`: workers, device, batch size, read threads) do not count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from wsi_ai.errors import InvalidInputError, ParameterError, WsiAiError

ScoreKind = Literal["none", "he", "embed", "classify", "mil"]
MODEL_KINDS = ("embed", "classify", "mil")


def _check_ranges(stage: Any, **limits: tuple[float | None, float | None]) -> None:
    """Raise :class:`ParameterError` when a field is outside its ``(low, high)`` (inclusive)."""
    for name, (low, high) in limits.items():
        value = getattr(stage, name)
        if value is None:
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"between {low} and {high}"
            raise ParameterError(f"{name} must be {span}, got {value!r}")


@dataclass(frozen=True)
class TissueStage:
    """``[tissue]``: find tissue at ``target_mpp`` µm/px; ``enabled=false`` keeps every patch."""

    enabled: bool = True
    target_mpp: float = 8.0

    def __post_init__(self) -> None:
        _check_ranges(self, target_mpp=(1e-3, None))


@dataclass(frozen=True)
class GridStage:
    """``[grid]``: the patch grid. ``mpp``/``size`` left out take the model card's (or 0.5/224)."""

    mpp: float | None = None
    size: int | None = None
    overlap: int = 0
    min_tissue: float = 0.5
    edge: Literal["inside", "pad"] = "inside"

    def __post_init__(self) -> None:
        _check_ranges(self, mpp=(1e-3, None), size=(8, 16384), overlap=(0, None))
        _check_ranges(self, min_tissue=(0, 1))
        if self.size is not None and self.overlap >= self.size:
            raise ParameterError(f"overlap must be smaller than size ({self.size})")


@dataclass(frozen=True)
class ScoreStage:
    """``[score]``: ``kind`` is none (QC only), he (hematoxylin density, no weights), embed
    (features store only), classify (a card with classes) or mil (embed, then a trained
    aggregator). ``read_mpp``, ``tissue_only`` and ``workers`` apply to ``he``."""

    kind: ScoreKind = "none"
    read_mpp: float | None = None
    tissue_only: bool = False
    workers: int = 4

    def __post_init__(self) -> None:
        _check_ranges(self, read_mpp=(1e-3, None), workers=(1, 64))


@dataclass(frozen=True)
class ModelStage:
    """``[model]``: the backbone for embed, classify and mil (a card name or a .toml path)."""

    card: str = ""
    weights: str | None = None
    sha256: str | None = None
    random_init: bool = False
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    batch_size: int | None = None
    read_threads: int = 2
    decode: Literal["auto", "cpu", "gpu"] = "auto"

    def __post_init__(self) -> None:
        _check_ranges(self, batch_size=(1, None), read_threads=(1, 64))


@dataclass(frozen=True)
class AggregatorStage:
    """``[aggregator]``: a run folder written by ``wsi-ai train`` (aggregator.toml + weights)."""

    run: str | None = None
    device: str = "auto"


@dataclass(frozen=True)
class StitchStage:
    """``[stitch]``: how patch scores become a heatmap and regions (``wsi-ai stitch``'s flags)."""

    enabled: bool = True
    columns: tuple[str, ...] = ()
    downsample: float | None = None
    blend: Literal["mean", "max", "gaussian"] = "mean"
    threshold: str | float = "otsu"
    min_score: float | None = None
    ignore_classes: tuple[str, ...] = ()
    min_area: float = 0.0
    merge: bool = False
    tiles: bool = False
    gzip: bool = False
    ngff: Literal["0.4", "0.5"] = "0.4"
    thumbnail_size: int = 1024
    alpha: float = 0.5
    cmap: Literal["viridis", "magma"] = "viridis"

    def map_options(self) -> Any:
        """The stitcher's :class:`~wsi_ai.export.maps.MapOptions` for these settings."""
        from wsi_ai.export.maps import MapOptions

        options = dataclasses.asdict(self)
        for key in ("enabled", "columns", "threshold", "min_area"):
            options.pop(key)
        threshold = None if self.threshold == "otsu" else float(self.threshold)
        return MapOptions(threshold=threshold, min_area_um2=self.min_area, **options)

    def __post_init__(self) -> None:
        _check_ranges(self, downsample=(1e-3, None), min_area=(0, None), alpha=(0, 1))
        _check_ranges(self, thumbnail_size=(64, 8192))


@dataclass(frozen=True)
class ExportStage:
    """``[export]``: which of the per-slide QC files to write besides the stage outputs."""

    tissue_geojson: bool = True
    tissue_mask: bool = True
    thumbnail: bool = True
    grid_preview: bool = True
    patch_table: bool = True
    qc: bool = True  # blur, pen, bubbles and stain vectors on the tissue (needs [tissue])
    qc_geojson: bool = True
    report: bool = True  # report.html per slide, summary.html for the batch
    thumbnail_size: int = 1024

    def __post_init__(self) -> None:
        _check_ranges(self, thumbnail_size=(64, 8192))


SECTIONS: dict[str, type] = {
    "tissue": TissueStage,
    "grid": GridStage,
    "score": ScoreStage,
    "model": ModelStage,
    "aggregator": AggregatorStage,
    "stitch": StitchStage,
    "export": ExportStage,
}
TOP_LEVEL = ("name", "description")
# Settings that change how fast a slide runs, not what it gives: a resumed run ignores them.
SPEED_ONLY = (
    ("score", "workers"),
    ("model", "device"),
    ("model", "batch_size"),
    ("model", "read_threads"),
    ("model", "decode"),
    ("aggregator", "device"),
)


@dataclass(frozen=True)
class Pipeline:
    """A whole pipeline file, resolved (paths absolute, overrides applied)."""

    name: str
    description: str = ""
    path: Path | None = None
    tissue: TissueStage = field(default_factory=TissueStage)
    grid: GridStage = field(default_factory=GridStage)
    score: ScoreStage = field(default_factory=ScoreStage)
    model: ModelStage = field(default_factory=ModelStage)
    aggregator: AggregatorStage = field(default_factory=AggregatorStage)
    stitch: StitchStage = field(default_factory=StitchStage)
    export: ExportStage = field(default_factory=ExportStage)

    @property
    def uses_model(self) -> bool:
        return self.score.kind in MODEL_KINDS

    def engine_config(self, slide_mpp: float | None = None) -> Any:
        """The engine's :class:`~wsi_ai.engine.config.EngineConfig` for a model pipeline."""
        from wsi_ai.engine.config import EngineConfig

        m, g = self.model, self.grid
        outputs = ("embeddings", "scores") if self.score.kind == "classify" else ("embeddings",)
        return EngineConfig(
            model=m.card,
            weights=None if m.weights is None else Path(m.weights),
            random_init=m.random_init,
            sha256=m.sha256,
            device=m.device,
            batch_size=m.batch_size,
            mpp=g.mpp,
            size=g.size,
            min_tissue=g.min_tissue,
            tissue=self.tissue.enabled,
            outputs=outputs,
            precision=m.precision,
            read_threads=m.read_threads,
            slide_mpp=slide_mpp,
            decode=m.decode,
        )

    def settings(self) -> dict[str, Any]:
        """The resolved settings, JSON-ready (what :meth:`config_hash` hashes)."""
        data: dict[str, Any] = {"name": self.name}
        for section in SECTIONS:
            data[section] = dataclasses.asdict(getattr(self, section))
        return json.loads(json.dumps(data, default=list))

    def config_hash(self) -> str:
        """Hash of the settings that change results (not of speed knobs such as workers)."""
        data = self.settings()
        for section, key in SPEED_ONLY:
            data[section].pop(key, None)
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return "a list of strings"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def _convert(value: Any, tp: Any) -> Any:
    """``value`` as ``tp``, or raise ``TypeError`` (no coercion between unrelated types)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is type(typing.get_args(tp)[0]):
            return value
        raise TypeError
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(tp):
            if option is type(None):
                continue
            try:
                return _convert(value, option)
            except TypeError:
                continue
        raise TypeError
    if origin is tuple:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise TypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)  # an integer beyond a float's range overflows
            except OverflowError:
                raise TypeError from None
            if not math.isfinite(number):
                raise TypeError
            return number
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    raise TypeError


def _section(cls: type, data: Any, name: str, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise InvalidInputError(f"[{name}] must be a table of settings", where)
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in allowed:
            raise InvalidInputError(
                f"unknown key [{name}] {key!r}; allowed: {', '.join(allowed)}", where
            )
        try:
            values[key] = _convert(value, hints[key])
        except TypeError:
            raise InvalidInputError(
                f"[{name}] {key} must be {_type_name(hints[key])}, got {value!r}", where
            ) from None
    try:
        return cls(**values)
    except WsiAiError as err:
        raise InvalidInputError(f"[{name}] {err.reason}", where) from err


def _parse_override(text: str) -> tuple[str, str, Any]:
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise InvalidInputError(f"override {text!r}: write it as section.key=value (grid.mpp=1)")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word: a string
    return section, name.strip(), value


def _resolve(value: str | None, base: Path, key: str, where: str) -> str | None:
    """A path from the file, made absolute against ``base``; a card name stays a name."""
    if value is None or value == "":
        return value
    if "\x00" in value:
        raise InvalidInputError(f"{key} {value!r}: a path cannot contain a NUL character", where)
    try:
        path = Path(value).expanduser()
        if path.is_absolute() or not ("/" in value or value.endswith(".toml") or path.suffix):
            return str(path) if path.is_absolute() else value
        return str((base / path).resolve())
    except (RuntimeError, OSError) as err:  # ~user unknown here, a symlink loop
        raise InvalidInputError(f"{key} {value!r}: not a usable path ({err})", where) from err


def _checked(pipeline: Pipeline, where: str) -> Pipeline:
    score, model = pipeline.score, pipeline.model
    if score.kind in MODEL_KINDS and not model.card:
        raise InvalidInputError(
            f"[score] kind = {score.kind!r} needs a model: set [model] card (or pass --model)",
            where,
        )
    if score.kind == "mil" and not pipeline.aggregator.run:
        raise InvalidInputError(
            "[score] kind = 'mil' needs a trained aggregator: set [aggregator] run to a "
            "`wsi-ai train` output folder (or pass --aggregator)",
            where,
        )
    if model.sha256 is not None and model.random_init:
        raise InvalidInputError(
            "[model] sha256 checks a weights file; random_init uses none", where
        )
    threshold = pipeline.stitch.threshold
    if isinstance(threshold, str) and threshold != "otsu":
        raise InvalidInputError(
            f"[stitch] threshold must be a number or 'otsu', got {threshold!r}", where
        )
    return pipeline


def parse_pipeline(
    data: Mapping[str, Any],
    where: str = "<pipeline>",
    base: Path | None = None,
    overrides: Sequence[str] = (),
) -> Pipeline:
    """A :class:`Pipeline` from parsed TOML ``data`` (``where`` names it in errors)."""
    tables: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for text in overrides:
        section, name, value = _parse_override(text)
        if section not in SECTIONS:
            raise InvalidInputError(
                f"override {text!r}: unknown section {section!r}; allowed: {', '.join(SECTIONS)}"
            )
        tables.setdefault(section, {})
        if isinstance(tables[section], dict):
            tables[section][name] = value
    for key in tables:
        if key not in SECTIONS and key not in TOP_LEVEL:
            allowed = ", ".join([*TOP_LEVEL, *(f"[{s}]" for s in SECTIONS)])
            raise InvalidInputError(f"unknown key {key!r}; allowed: {allowed}", where)
    name = tables.get("name", "")
    if not isinstance(name, str) or not name:
        raise InvalidInputError('the pipeline needs a name = "..." at the top', where)
    description = tables.get("description", "")
    if not isinstance(description, str):
        raise InvalidInputError("description must be a string", where)
    stages = {s: _section(cls, tables.get(s, {}), s, where) for s, cls in SECTIONS.items()}
    root = base or Path.cwd()
    model = stages["model"]
    stages["model"] = dataclasses.replace(
        model,
        card=_resolve(model.card, root, "[model] card", where) or "",
        weights=_resolve(model.weights, root, "[model] weights", where),
    )
    agg = stages["aggregator"]
    stages["aggregator"] = dataclasses.replace(
        agg, run=_resolve(agg.run, root, "[aggregator] run", where)
    )
    pipeline = Pipeline(name=name, description=description, **stages)
    return _checked(pipeline, where)


def load_pipeline(path: str | Path, overrides: Sequence[str] = ()) -> Pipeline:
    """Read and check a pipeline file; ``overrides`` are ``section.key=value`` strings."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"cannot read the pipeline file ({err})", file) from err
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InvalidInputError(f"not valid TOML: {err}", file) from err
    except RecursionError as err:  # tomllib recurses once per nested array or table
        raise InvalidInputError(
            "not a pipeline file: arrays or tables nested too deep", file
        ) from err
    parsed = parse_pipeline(data, str(file), file.resolve().parent, overrides)
    return dataclasses.replace(parsed, path=file.resolve())


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
