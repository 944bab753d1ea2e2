"""What an inference run is asked to do (:class:`EngineConfig`) and what it did per slide."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wsi_ai.errors import ParameterError

__all__ = [
    "DECODES",
    "DEVICES",
    "OUTPUTS",
    "PRECISIONS",
    "EngineConfig",
    "ModelConfig",
    "SlideResult",
]

OUTPUTS = ("embeddings", "scores")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
DECODES = ("auto", "cpu", "gpu")  # where JPEG tiles are decoded (engine/batching.py)
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def normalise_sha256(value: str) -> str:
    """A sha256 as 64 lower-case hex digits; ``ValueError`` for anything else."""
    if not _SHA256.fullmatch(value):
        raise ValueError(f"sha256 must be 64 hex digits, got {value!r}")
    return value.lower()


@dataclass(frozen=True)
class ModelConfig:
    """What builds one :class:`~wsi_ai.engine.runner.InferenceModel`: the card, its weights,
    the patch side it sees, the device and how it runs. Every slide of a run shares it, so it
    is what a worker's model cache is keyed on.
    """

    model: str | Path  # card name or path
    weights: Path | None = None
    random_init: bool = False
    sha256: str | None = None  # of the weights file, checked when given
    device: str = "auto"  # auto|cpu|cuda|cuda:N
    batch_size: int | None = None  # None = automatic
    size: int | None = None  # None = the card's input size
    outputs: tuple[str, ...] = ("embeddings",)  # and/or "scores"
    precision: str = "auto"  # auto|fp32|bf16|fp16
    compile: bool = False

    def __post_init__(self) -> None:
        if not self.outputs or any(o not in OUTPUTS for o in self.outputs):
            raise ParameterError(
                f"outputs must be some of {', '.join(OUTPUTS)}, got {self.outputs}"
            )
        if self.precision not in PRECISIONS:
            raise ParameterError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.device.split(":")[0] not in DEVICES:
            raise ParameterError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ParameterError(f"batch size must be at least 1, got {self.batch_size}")
        if self.sha256 is not None:
            if self.random_init:
                raise ParameterError("sha256 checks a weights file; random_init uses none")
            try:
                # frozen: set once here
                object.__setattr__(self, "sha256", normalise_sha256(self.sha256))
            except ValueError as err:
                raise ParameterError(str(err)) from err


@dataclass(frozen=True)
class EngineConfig:
    """One inference run: which model (:attr:`model_config`) and which patches of each slide.

    ``mpp`` (µm/px) and ``size`` (px) are the patches' resolution and side; ``None`` takes
    the card's. ``min_tissue`` is the fraction of a patch that must be tissue (with
    ``tissue``); ``slide_mpp`` is the slide's own level-0 µm/px for files that lack it;
    ``read_threads`` decode patches ahead of the model. ``batch_size=None`` picks one: the
    largest power of two that fits half the free GPU memory (at most 512), or 32 on a CPU.
    ``precision="auto"`` is bf16 on a GPU that has it (else fp16) and, on a CPU, bf16 only
    where it measures faster than fp32 (:mod:`wsi_ai.engine.precision`), under autocast.
    ``sha256`` (64 hex digits, kept lower-case) is checked against the weights file, which
    is refused on a mismatch; it wins over the card's. ``decode``
    says where tiles are decoded: ``gpu`` (nvJPEG, JPEG-tiled levels, CUDA models), ``cpu``,
    or ``auto`` (the GPU where it applies); see :mod:`wsi_ai.engine.batching`.
    """

    model: str | Path  # card name or path
    weights: Path | None = None
    random_init: bool = False
    sha256: str | None = None  # of the weights file, checked when given
    device: str = "auto"  # auto|cpu|cuda|cuda:N
    batch_size: int | None = None  # None = automatic
    mpp: float | None = None  # None = the card's MPP
    size: int | None = None  # None = the card's input size
    min_tissue: float = 0.5
    tissue: bool = True
    outputs: tuple[str, ...] = ("embeddings",)  # and/or "scores"
    precision: str = "auto"  # auto|fp32|bf16|fp16
    compile: bool = False
    read_threads: int = 2
    slide_mpp: float | None = None
    decode: str = "auto"

    def __post_init__(self) -> None:
        # frozen: the sha256 normalised by the model config is set once here
        object.__setattr__(self, "sha256", self.model_config.sha256)
        if not 0 <= self.min_tissue <= 1:
            raise ParameterError(f"min_tissue must be in [0, 1], got {self.min_tissue}")
        if self.read_threads < 1:
            raise ParameterError("read_threads must be at least 1")
        if self.decode not in DECODES:
            raise ParameterError(f"decode must be one of {', '.join(DECODES)}, got {self.decode!r}")

    @property
    def model_config(self) -> ModelConfig:
        """The model part alone: what the slides of this run share."""
        return ModelConfig(
            model=self.model,
            weights=self.weights,
            random_init=self.random_init,
            sha256=self.sha256,
            device=self.device,
            batch_size=self.batch_size,
            size=self.size,
            outputs=self.outputs,
            precision=self.precision,
            compile=self.compile,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready parameters (paths as strings, outputs as a list)."""
        data = asdict(self)
        data["model"] = str(self.model)
        data["weights"] = None if self.weights is None else str(self.weights)
        data["outputs"] = list(self.outputs)
        return data


@dataclass(frozen=True)
class SlideResult:
    """One slide's outcome: the store written (``out``) or the one-line ``error``."""

    slide: Path
    out: Path | None
    patches: int
    seconds: float
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "slide": str(self.slide),
            "out": None if self.out is None else str(self.out),
            "patches": self.patches,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }
