"""Local weights files: checked, read, mapped to timm's layout, compared, loaded.

Nothing here downloads. A file is read with ``safetensors`` or
``torch.load(weights_only=True)`` (so no pickled code runs), checked against a sha256
when one is known, unwrapped from common checkpoint wrappers, renamed from the
publisher's layout to timm's (``key_mapping``), and compared key by key and shape by
shape with the model before anything is copied. Any difference is a
:class:`~wsi_ai.errors.ModelError` with a readable report.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import pickletools
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_ai.errors import ModelError
from wsi_ai.nn.cards import ModelCard

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
_WRAPPERS = ("state_dict", "model")
_SHOWN = 5  # keys listed per kind in an error message


NON_FINITE_ADVICE = "the weights are corrupt or the precision overflows; try --precision fp32"


class NonFiniteOutputError(ModelError):
    """NaN or infinity out of a model: the message names the weights, the input, what to try.

    ``path`` is the input file the error belongs to (the slide), set without prefixing the
    message, so a run's one-line report (:func:`~wsi_ai.errors.failure_message`) prints the
    message as it is rather than naming the slide twice.
    """

    def __init__(
        self,
        weights: object,
        source: object,
        advice: str = NON_FINITE_ADVICE,
        path: str | Path | None = None,
    ) -> None:
        super().__init__(f"non-finite outputs from {weights} on {source}: {advice}")
        self.path = None if path is None else Path(path)


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    """sha256 of a file, read in 16 MiB pieces (weights files are GBs)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sniff_format(path: Path) -> str:
    """``safetensors`` or ``torch``, from the file's first bytes (not its suffix)."""
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # 8-byte header length, then JSON
        return "safetensors"
    return "torch"


def read_state_dict(path: Path) -> tuple[StateDict, str]:
    """Tensors of a weights file and the format they were read as."""
    fmt = sniff_format(path)
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu")), fmt
        with warnings.catch_warnings():  # the refusal below says what a warning would
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        code = _refused_code(path, str(err))
        if code is None:
            raise _unreadable(path, fmt, err) from err
        raise ModelError(_refusal(path, code), path) from None  # torch's advice left out
    except Exception as err:
        raise _unreadable(path, fmt, err) from err
    return unwrap(obj, path), fmt


# torch.load(weights_only=True) refusing a pickle: it names the class or function the file
# needs (GLOBAL module.name), or only the opcode it stopped at.
_REFUSED = re.compile(r"Weights only load failed|WeightsUnpickler error")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_DETAIL = re.compile(r"WeightsUnpickler error: (.*?) ?(?:Check the documentation|$)")
_CODE_OPS = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _refused_code(path: Path, torch_message: str) -> str | None:
    """What a pickle torch refused to load needs: the class or function torch names, else the
    first one the file's pickle refers to ("" when it builds objects without naming one);
    None when torch did not refuse code or the file is no pickle (then it is unreadable)."""
    if not _REFUSED.search(torch_message):
        return None
    found = _GLOBAL.search(torch_message)
    return found.group(1) if found else _pickled_code(path)


def _pickled_code(path: Path) -> str | None:
    """The first class or function a pickle file refers to, "" when it builds objects
    without one, None when it is not one whole pickle or refers to none. Parses only."""
    strings: list[str] = []
    code: str | None = None
    try:
        with path.open("rb") as f:
            for op, arg, _ in pickletools.genops(f):  # ends at STOP, raises on junk
                if isinstance(arg, str):
                    strings = [*strings[-1:], arg]
                if code is None and op.name == "GLOBAL":
                    code = str(arg).replace(" ", ".")
                elif code is None and op.name == "STACK_GLOBAL" and len(strings) == 2:
                    code = ".".join(strings)
                elif code is None and op.name in _CODE_OPS:
                    code = ""
    except Exception:  # not a pickle stream (random bytes, another format)
        return None
    return code


def _refusal(path: Path, code: str) -> str:
    """Why a pickled file is refused and how to convert it, on one line.

    torch's own message advises ``weights_only=False``, which runs whatever code the file
    holds; this one says what the file holds and gives a conversion that allowlists only
    the classes it names (torch's ``safe_globals``), to run once where the file is trusted.
    """
    what = f"pickled code or objects ({code})" if code else "pickled code or objects"
    allow = code or "TheClass"
    return (
        f"refused: the weights file holds {what} that wsi-ai will not unpickle, because "
        "unpickling can run arbitrary code; convert it to safetensors once, on a machine "
        "where you trust the file: 1) `with torch.serialization.safe_globals(["
        f"{allow}]): obj = torch.load('{path.name}')` 2) `sd = obj.state_dict() if "
        "hasattr(obj, 'state_dict') else obj` 3) `safetensors.torch.save_file({k: "
        "v.contiguous() for k, v in sd.items() if torch.is_tensor(v)}, 'weights.safetensors')`; "
        "then pass weights.safetensors"
    )


def _unreadable(path: Path, fmt: str, err: Exception) -> ModelError:
    text = " ".join(str(err).split())
    if _REFUSED.search(text):  # keep torch's finding, not its advice to unpickle anyway
        detail = _DETAIL.search(text)
        text = detail.group(1) if detail and detail.group(1) else "not a torch checkpoint"
    return ModelError(
        f"cannot read weights as {fmt} ({type(err).__name__}: {text}); "
        "expected a safetensors file or a torch state dict saved with torch.save",
        path,
    )


def unwrap(obj: Any, path: Path | None = None) -> StateDict:
    """The tensor dict inside common wrappers (``state_dict``/``model`` keys, ``module.``)."""
    while isinstance(obj, Mapping):
        inner = [k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)]
        if not inner:
            break
        obj = obj[inner[0]]
    if not isinstance(obj, Mapping):
        raise ModelError(f"weights file holds a {type(obj).__name__}, not a state dict", path)
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError("weights file holds no tensors", path)
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_LAYER_PARTS = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_IGNORED = ("embeddings.mask_token",)  # used in pretraining only


def hf_dinov2_to_timm(state: StateDict) -> StateDict:
    """Rename a Hugging Face ``Dinov2Model`` state dict to timm's ``VisionTransformer``.

    Query, key and value projections are concatenated (in that order) into timm's fused
    ``qkv``. Keys that match no rule are kept as they are, so the comparison reports them.
    """
    if all(k.startswith("dinov2.") for k in state):
        state = {k[len("dinov2.") :]: v for k, v in state.items()}
    out: StateDict = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in _HF_IGNORED:
            continue
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        match = _HF_LAYER.match(key)
        if match is None:
            out[key] = value
            continue
        index, rest = int(match.group(1)), match.group(2)
        parts = rest.split(".")
        if rest.startswith("attention.attention.") and len(parts) == 4:
            qkv.setdefault((index, parts[3]), {})[parts[2]] = value
        elif rest in _HF_LAYER_PARTS:
            out[f"blocks.{index}.{_HF_LAYER_PARTS[rest]}"] = value
        else:
            out[key] = value
    for (index, kind), pieces in sorted(qkv.items()):
        if set(pieces) == {"query", "key", "value"}:
            fused = [pieces["query"], pieces["key"], pieces["value"]]
            out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat(fused, dim=0)
        else:  # incomplete: leave the pieces under their own names for the report
            for name, value in pieces.items():
                out[f"encoder.layer.{index}.attention.attention.{name}.{kind}"] = value
    return out


def map_keys(state: StateDict, key_mapping: str) -> StateDict:
    """Apply a card's ``key_mapping`` (``timm``: unchanged, ``hf_dinov2``: renamed)."""
    if key_mapping == "hf_dinov2":
        return hf_dinov2_to_timm(state)
    return state


def _placed(value: torch.Tensor, dtype: torch.dtype, device: torch.device | None) -> torch.Tensor:
    """``value`` on ``device`` (if given), then cast to ``dtype`` if floating point."""
    if device is not None:
        value = value.to(device)
    return value.to(dtype) if value.is_floating_point() else value


@dataclass(frozen=True)
class LoadReport:
    """How a weights file compares with a model: what is missing, extra or misshapen."""

    path: Path | None
    format: str
    n_tensors: int
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    sha256: str | None = None  # the file's sha256 (set by load_weights)
    sha256_checked: bool = False  # whether it was checked against an expected one

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """One line: counts, and up to five keys of each kind."""
        if self.ok:
            return f"{self.n_tensors} tensors, all keys and shapes match"

        def listing(keys: list[str]) -> str:
            more = f", ... {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
            return ", ".join(keys[:_SHOWN]) + more

        def dims(shape: tuple[int, ...]) -> str:
            return "x".join(map(str, shape)) or "scalar"

        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({listing(list(self.missing))})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected ({listing(list(self.unexpected))})")
        if self.mismatched:
            shown = [f"{k}: file {dims(f)} vs model {dims(m)}" for k, f, m in self.mismatched]
            parts.append(f"{len(self.mismatched)} shape mismatch ({listing(shown)})")
        return "; ".join(parts)


def compare_state_dict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: Path | None = None,
    fmt: str = "",
) -> LoadReport:
    """Compare keys and shapes of ``state`` with ``model`` (works on the meta device)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    mismatched = tuple(
        (k, got[k], expected[k]) for k in sorted(set(got) & set(expected)) if got[k] != expected[k]
    )
    return LoadReport(
        path=path,
        format=fmt,
        n_tensors=len(got),
        missing=tuple(sorted(set(expected) - set(got))),
        unexpected=tuple(sorted(set(got) - set(expected))),
        mismatched=mismatched,
    )


def verify_sha256(
    path: Path, expected: str, card: ModelCard | None = None, actual: str | None = None
) -> str:
    """Raise :class:`ModelError` unless the file's sha256 is ``expected``.

    ``card`` names where ``expected`` came from (else "the given sha256"); ``actual`` is
    the file's sha256 when already computed, so a GB file is not read twice.
    """
    actual = file_sha256(path) if actual is None else actual.lower()
    if actual != expected.lower():
        source = f"card {card.name!r}" if card is not None else "the given sha256"
        raise ModelError(
            f"sha256 mismatch: the file has {actual}, {source} expects {expected.lower()}; "
            "the file is damaged or not the expected release: download it again or fix the sha256",
            path,
        )
    return actual


def load_weights(
    model: nn.Module,
    card: ModelCard,
    path: str | Path,
    sha256: str | None = None,
    *,
    digest: str | None = None,
    device: str | torch.device | None = None,
) -> LoadReport:
    """Check, read, map and load a local weights file into ``model`` (strict).

    The file is hashed once: its sha256 is verified against ``sha256`` (else the card's)
    when one is given, and recorded in the report either way (``digest``: the file's
    sha256 already computed, e.g. by an earlier load of the same file, so it is not
    read again). A model on the meta device takes the file's tensors in place (no
    second copy), moved to ``device`` first (default: where the file was read, the CPU),
    so a GPU model never holds CPU tensors; otherwise they are copied in. Tensors are cast
    to the model's dtype (on ``device``, after the move: less to copy). Raises
    :class:`ModelError` naming the file and what differs.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(
            f"weights file for card {card.name!r} not found; download it from the publisher "
            f"({card.source or 'see the card'}) and pass its path",
            path,
        )
    expected_sha = sha256 or card.sha256
    if expected_sha:  # name the card only when the expected sha256 is the card's
        actual = verify_sha256(path, expected_sha, None if sha256 else card, digest)
    else:
        actual = file_sha256(path) if digest is None else digest.lower()
    raw, fmt = read_state_dict(path)
    if fmt != card.weights_format:
        log.info("%s: read as %s (card %s says %s)", path, fmt, card.name, card.weights_format)
    state = map_keys(raw, card.key_mapping)
    report = compare_state_dict(model, state, path, fmt)
    if not report.ok:
        raise ModelError(
            f"weights do not match card {card.name!r} ({card.architecture}, "
            f"key_mapping {card.key_mapping}): {report.summary()}; check that the file is "
            "this card's model and that the card's kwargs are right",
            path,
        )
    targets = model.state_dict()
    on_meta = any(t.is_meta for t in targets.values())
    where = None if device is None else torch.device(device)
    cast = {k: _placed(v, targets[k].dtype, where) for k, v in state.items()}
    model.load_state_dict(cast, strict=True, assign=on_meta)
    return LoadReport(
        path=path,
        format=fmt,
        n_tensors=report.n_tensors,
        sha256=actual,
        sha256_checked=bool(expected_sha),
    )
