"""Model cards: what a backbone is, read from a small TOML file in ``models/``.

A card names a timm architecture and the exact keyword arguments that rebuild the
publisher's network (layer classes given by import path, e.g. ``timm.layers.SwiGLUPacked``),
the input the network expects (size in px, resolution in µm/px, mean/std), how an
embedding is read out of it, and the format and layout of its weights file. Cards carry
no weights: labs download the public encoders themselves, and nothing is ever fetched.

Example card (``models/uni.toml``)::

    name = "uni"
    architecture = "vit_large_patch16_224"
    input_size = 224          # px, square
    mpp = 0.5                 # µm/px of the input patches
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]
    readout = "cls"
    embed_dim = 1024
    weights_format = "torch"
    key_mapping = "timm"

    [kwargs]
    init_values = 1e-5
    num_classes = 0

    [kwargs_classes]          # kwargs whose value is a class, by import path
    # mlp_layer = "timm.layers.SwiGLUPacked"
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from wsi_ai.errors import ModelError

READOUTS = ("pooled", "cls", "cls+mean_patch")
WEIGHTS_FORMATS = ("safetensors", "torch")
KEY_MAPPINGS = ("timm", "hf_dinov2")
# Classes named in a card are imported only from these packages.
CLASS_ROOTS = ("timm.", "torch.nn.")
MODELS_DIR_ENV = "WSI_AI_MODELS_DIR"

_REQUIRED = (
    "name",
    "architecture",
    "input_size",
    "mpp",
    "mean",
    "std",
    "readout",
    "embed_dim",
    "weights_format",
    "key_mapping",
)
_OPTIONAL = (
    "description",
    "source",
    "licence",
    "weights",
    "sha256",
    "classes",
    "num_prefix_tokens",
    "kwargs",
    "kwargs_classes",
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelCard:
    """One backbone, as a frozen record parsed from a TOML card.

    ``input_size`` is the square patch side in px, ``mpp`` the resolution of those
    patches in µm/px, ``mean``/``std`` the per-channel normalisation of RGB values
    scaled to [0, 1]. ``embed_dim`` is the length of the vector ``readout`` gives.
    """

    name: str
    architecture: str
    input_size: int
    mpp: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    readout: str
    embed_dim: int
    weights_format: str
    key_mapping: str
    card_hash: str
    path: Path | None = None
    description: str = ""
    source: str = ""
    licence: str = ""
    weights: Path | None = None
    sha256: str | None = None
    classes: tuple[str, ...] = ()
    num_prefix_tokens: int | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    kwargs_classes: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)

    def timm_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``timm.create_model``, layer classes imported."""
        out = dict(self.kwargs)
        for key, dotted in self.kwargs_classes.items():
            out[key] = resolve_class(dotted, self)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (paths as strings, mappings as dicts)."""
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "licence": self.licence,
            "architecture": self.architecture,
            "kwargs": dict(self.kwargs),
            "kwargs_classes": dict(self.kwargs_classes),
            "input_size": self.input_size,
            "mpp": self.mpp,
            "mean": list(self.mean),
            "std": list(self.std),
            "readout": self.readout,
            "num_prefix_tokens": self.num_prefix_tokens,
            "embed_dim": self.embed_dim,
            "weights_format": self.weights_format,
            "key_mapping": self.key_mapping,
            "weights": None if self.weights is None else str(self.weights),
            "sha256": self.sha256,
            "classes": list(self.classes),
            "card_hash": self.card_hash,
            "path": None if self.path is None else str(self.path),
        }


def resolve_class(dotted: str, card: ModelCard | None = None) -> Any:
    """Import ``package.module.Name`` (only under timm or torch.nn) and return it."""
    where = f"card {card.name!r}: " if card is not None else ""
    path = card.path if card is not None else None
    if not dotted.startswith(CLASS_ROOTS) or "." not in dotted:
        raise ModelError(
            f"{where}class {dotted!r} is not allowed; cards may name classes under "
            f"{' or '.join(r.rstrip('.') for r in CLASS_ROOTS)} only",
            path,
        )
    module_name, _, attr = dotted.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ModelError(
            f"{where}cannot import {dotted!r} ({err}); check the name against the installed timm",
            path,
        ) from err
    if not callable(obj):
        raise ModelError(f"{where}{dotted!r} is not a class or function", path)
    return obj


def canonical_hash(data: Mapping[str, Any]) -> str:
    """sha256 of the card's content as sorted, compact JSON (comments and layout ignored)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fail(path: Path | None, message: str) -> ModelError:
    return ModelError(f"invalid model card: {message}", path)


def _number(data: Mapping[str, Any], key: str, path: Path | None, kind: type) -> Any:
    value = data[key]
    ok = isinstance(value, int | float) if kind is float else isinstance(value, int)
    if isinstance(value, bool) or not ok or value <= 0:
        raise _fail(path, f"{key} must be a positive {kind.__name__}, got {value!r}")
    return kind(value)


def _triple(data: Mapping[str, Any], key: str, path: Path | None) -> tuple[float, float, float]:
    value = data[key]
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise _fail(path, f"{key} must be three numbers (R, G, B), got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _choice(data: Mapping[str, Any], key: str, allowed: tuple[str, ...], path: Path | None) -> str:
    value = data[key]
    if value not in allowed:
        raise _fail(path, f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    return str(value)


def card_from_dict(data: Mapping[str, Any], path: Path | None = None) -> ModelCard:
    """Validate a parsed card; relative ``weights`` paths are taken from the card's folder."""
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise _fail(path, f"unknown field(s) {', '.join(unknown)}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise _fail(path, f"missing field(s) {', '.join(missing)}")
    for key in ("name", "architecture", "description", "source", "licence"):
        if key in data and not isinstance(data[key], str):
            raise _fail(path, f"{key} must be a string")
    architecture = data["architecture"]
    if not architecture or ":" in architecture:
        raise _fail(
            path,
            f"architecture {architecture!r} must be a plain timm model name "
            "(hub names such as 'hf-hub:...' would download)",
        )
    std = _triple(data, "std", path)
    if min(std) <= 0:
        raise _fail(path, f"std must be positive, got {list(std)}")
    kwargs = data.get("kwargs", {})
    classes_map = data.get("kwargs_classes", {})
    if not isinstance(kwargs, dict) or not isinstance(classes_map, dict):
        raise _fail(path, "kwargs and kwargs_classes must be tables")
    if any(not isinstance(v, str) for v in classes_map.values()):
        raise _fail(path, "kwargs_classes values must be import paths (strings)")
    # card fields that are no timm kwarg (embed_dim is both) found inside a table
    misplaced = sorted(
        (set(kwargs) | set(classes_map)) & (set(_REQUIRED + _OPTIONAL) - {"embed_dim"})
    )
    if misplaced:
        raise _fail(
            path,
            f"{', '.join(misplaced)} is inside [kwargs] or [kwargs_classes]; top-level "
            "fields must come before the first [table]",
        )
    clash = sorted(set(kwargs) & set(classes_map))
    if clash:
        raise _fail(path, f"{', '.join(clash)} given in both kwargs and kwargs_classes")
    if "pretrained" in kwargs:
        raise _fail(path, "kwargs may not set 'pretrained' (weights are always local files)")
    sha256 = data.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.match(sha256.lower())):
        raise _fail(path, f"sha256 must be 64 hex digits, got {sha256!r}")
    classes = data.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise _fail(path, "classes must be a list of strings")
    prefix = data.get("num_prefix_tokens")
    if prefix is not None and (isinstance(prefix, bool) or not isinstance(prefix, int)):
        raise _fail(path, "num_prefix_tokens must be an integer")
    weights = data.get("weights")
    weights_path = None
    if weights is not None:
        if not isinstance(weights, str) or not weights:
            raise _fail(path, "weights must be a path (string)")
        weights_path = Path(weights).expanduser()
        if not weights_path.is_absolute() and path is not None:
            weights_path = path.parent / weights_path
    return ModelCard(
        name=data["name"],
        architecture=architecture,
        input_size=_number(data, "input_size", path, int),
        mpp=_number(data, "mpp", path, float),
        mean=_triple(data, "mean", path),
        std=std,
        readout=_choice(data, "readout", READOUTS, path),
        embed_dim=_number(data, "embed_dim", path, int),
        weights_format=_choice(data, "weights_format", WEIGHTS_FORMATS, path),
        key_mapping=_choice(data, "key_mapping", KEY_MAPPINGS, path),
        card_hash=canonical_hash(data),
        path=path,
        description=data.get("description", ""),
        source=data.get("source", ""),
        licence=data.get("licence", ""),
        weights=weights_path,
        sha256=None if sha256 is None else sha256.lower(),
        classes=tuple(classes),
        num_prefix_tokens=prefix,
        kwargs=MappingProxyType(dict(kwargs)),
        kwargs_classes=MappingProxyType(dict(classes_map)),
    )


def load_card(path: str | Path) -> ModelCard:
    """Parse and validate one card file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ModelError("model card not found", path) from err
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"cannot read model card ({err})", path) from err
    except tomllib.TOMLDecodeError as err:
        raise ModelError(f"model card is not valid TOML ({err})", path) from err
    return card_from_dict(data, path.resolve())


def models_dir() -> Path:
    """The folder of cards, first of: ``$WSI_AI_MODELS_DIR``; ``wsi_ai/models/`` inside an
    installed wheel (where pyproject.toml ships the repository's ``models/``); ``models/``
    beside the package, as in a source checkout or an editable install.
    """
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    package = Path(__file__).resolve().parents[1]
    shipped = package / "models"
    if shipped.is_dir():
        return shipped
    return package.parent / "models"


def card_files(folder: Path | None = None) -> list[Path]:
    """Every ``*.toml`` in the cards folder, sorted by name."""
    folder = models_dir() if folder is None else folder
    if not folder.is_dir():
        raise ModelError(
            f"model card folder not found; set {MODELS_DIR_ENV} to the folder holding the "
            "*.toml cards",
            folder,
        )
    return sorted(folder.glob("*.toml"))


def list_cards(folder: Path | None = None) -> list[ModelCard]:
    """All cards in the folder (a broken card raises :class:`ModelError` naming it)."""
    return [load_card(p) for p in card_files(folder)]


def find_card(name_or_path: str | Path, folder: Path | None = None) -> ModelCard:
    """A card by name (``uni``, ``UNI2-h``: file stem or ``name`` field) or by .toml path."""
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if text.endswith(".toml") or candidate.is_file():
        return load_card(candidate)
    folder = models_dir() if folder is None else folder
    wanted = text.strip().lower()
    direct = folder / f"{wanted}.toml"
    if direct.is_file():
        return load_card(direct)
    files = card_files(folder)
    for path in files:
        card = load_card(path)
        if card.name.lower() == wanted:
            return card
    known = ", ".join(p.stem for p in files) or "none"
    raise ModelError(
        f"no model card named {text!r} in {folder} (known: {known}); "
        "give a card name or a path to a .toml card"
    )
