"""The model side of inference: device, precision, batch size, and the batch loop.

:class:`InferenceModel` wraps a :class:`~wsi_ai.nn.backbone.Backbone` for one device:
uint8 RGB patches ``[B, H, W, 3]`` go in, are normalised on the device with the card's
mean/std (``(x / 255 - mean) / std``), and run channels-last under autocast (bf16, or
fp16 on GPUs without bf16; on a CPU bf16 only where a probe measures it faster, else
fp32: :mod:`~wsi_ai.engine.precision`), optionally through ``torch.compile``. Out come
float16 embeddings ``[B, embed_dim]`` and, for cards with ``classes``, float32 scores
``[B, C]``: the softmax of the card's classifier head applied to the embedding.

:func:`run_batches` is the loop: while the model works on batch *i*, the read threads
fill the next batches (:func:`~wsi_ai.engine.batching.open_batches`), the copy of batch
*i + 1* to the GPU is non-blocking from pinned memory, and the results of batch *i - 1*
are copied back and written while batch *i* computes. Every batch's outputs are checked
for NaN and infinity on the device (one flag per batch, read with the results, so the check
adds no synchronisation): corrupt weights or an overflowing precision stop the slide with a
:class:`~wsi_ai.nn.weights.NonFiniteOutputError` instead of writing a store of NaN.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsi_ai.engine.config import EngineConfig, ModelConfig
from wsi_ai.engine.precision import PrecisionChoice, choose_precision, cpu_supports_bf16
from wsi_ai.errors import ModelError
from wsi_ai.nn.backbone import Backbone, build_backbone
from wsi_ai.nn.cards import ModelCard, find_card
from wsi_ai.nn.weights import NonFiniteOutputError

__all__ = [
    "InferenceModel",
    "auto_batch_size",
    "cpu_supports_bf16",
    "load_model",
    "normalise_device",
    "resolve_device",
    "resolve_precision",
    "run_batches",
]

log = logging.getLogger(__name__)

CPU_BATCH = 32
MAX_GPU_BATCH = 512
GPU_MEMORY_FRACTION = 0.5  # of the free memory, for the activations of one batch
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
Writer = Callable[..., None]  # write(start, *, embeddings=..., scores=...)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {name!r} asked for, but torch sees no CUDA GPU")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ModelError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def normalise_device(name: str = "auto") -> str:
    """One spelling per device: ``cpu`` or ``cuda:N``, for keys that must match.

    ``auto`` and ``cuda`` become ``cuda:N`` with *N* the current CUDA device (``auto`` is
    ``cpu`` without a GPU), so equivalent spellings name the same cached model.
    """
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a device (or allocator) out-of-memory error."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def resolve_precision(
    precision: str,
    device: torch.device,
    backbone: Backbone | None = None,
    size: int | None = None,
    *,
    channels_last: bool = True,
) -> str:
    """``auto``: on a GPU bf16 where supported, else fp16; on a CPU bf16 where it measures
    faster for ``backbone`` at ``size`` px, else fp32 (fp32 without a backbone to measure).
    See :func:`~wsi_ai.engine.precision.choose_precision`."""
    card = None if backbone is None else backbone.card
    choice = choose_precision(precision, device, backbone, card, size, channels_last=channels_last)
    return choice.precision


class InferenceModel:
    """A backbone prepared for inference on one device (see the module docstring).

    ``size`` is the patch side in px the model will see; ``scores`` asks for class
    scores (the card needs ``classes``); ``embeddings=False`` leaves them out.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        size: int,
        device: torch.device | str = "cpu",
        precision: str = "auto",
        compile: bool = False,
        batch_size: int | None = None,
        embeddings: bool = True,
        scores: bool = False,
        channels_last: bool = True,
    ) -> None:
        card = backbone.card
        if scores and not card.classes:
            raise ModelError(
                f"card {card.name!r} has no classes, so it gives no scores; use `wsi-ai embed` "
                "for embeddings, or a card with a classifier head and classes",
                card.path,
            )
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels
        self.size = size
        self.embeddings, self.scores = embeddings, scores
        self.channels_last = channels_last
        self.backbone = backbone.to(self.device).eval()
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        # after the move: a CPU's ``auto`` is measured on the backbone as it will run
        self.precision_choice: PrecisionChoice = choose_precision(
            precision, self.device, self.backbone, card, size, channels_last=channels_last
        )
        self.precision = self.precision_choice.precision
        self.classifier = backbone.model.get_classifier() if scores else None  # type: ignore[operator]
        mean = torch.tensor(card.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(card.std, device=self.device).view(1, 3, 1, 1)
        self._scale, self._shift = 1.0 / (255.0 * std), mean / std
        self.compiled = compile
        self._run: Callable[[torch.Tensor], tuple[torch.Tensor | None, torch.Tensor | None]]
        self._run = torch.compile(self._forward, dynamic=False) if compile else self._forward
        self._checked = False
        self.batch_size = batch_size if batch_size is not None else auto_batch_size(self)

    @property
    def card(self) -> ModelCard:
        return self.backbone.card

    def settings(self) -> dict[str, Any]:
        """The resolved run parameters, for the output's attributes."""
        return {
            "device": str(self.device),
            "precision": self.precision,
            "precision_choice": self.precision_choice.record(),
            "batch_size": self.batch_size,
            "channels_last": self.channels_last,
            "compile": self.compiled,
            "size": self.size,
        }

    def _forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x = pixels.permute(0, 3, 1, 2).float()  # NHWC memory: already channels-last
        if not self.channels_last:
            x = x.contiguous()
        x = x * self._scale - self._shift
        dtype = AUTOCAST.get(self.precision)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            emb = self.backbone(x)
            logits = None if self.classifier is None else self.classifier(emb)
        scores = None if logits is None else torch.softmax(logits.float(), dim=1)
        return (emb.to(torch.float16) if self.embeddings else None), scores

    def _out_of_memory(self, pixels: torch.Tensor, err: BaseException) -> ModelError:
        card = self.card
        return ModelError(
            f"card {card.name!r}: out of memory on {self.device} running batches of "
            f"{len(pixels)} patches of {self.size} px ({' '.join(str(err).split())[:160]}); "
            "use a smaller --batch-size",
            card.path,
        )

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """uint8 ``[B, H, W, 3]`` on ``device`` -> (float16 embeddings, float32 scores)."""
        if self._checked:
            try:
                return self._run(pixels)
            except RuntimeError as err:  # torch.cuda.OutOfMemoryError is one
                if is_out_of_memory(err):
                    raise self._out_of_memory(pixels, err) from err
                raise
        card = self.card
        try:
            emb, scores = self._run(pixels)
        except (RuntimeError, AssertionError, ValueError) as err:
            if is_out_of_memory(err):
                raise self._out_of_memory(pixels, err) from err
            hint = (
                f"; use the card's input size ({card.input_size} px)"
                if self.size != card.input_size
                else ""
            )
            raise ModelError(
                f"card {card.name!r}: {card.architecture} failed on {self.size} px patches "
                f"({type(err).__name__}: {' '.join(str(err).split())[:200]}){hint}",
                card.path,
            ) from err
        if scores is not None and scores.shape[1] != len(card.classes):
            raise ModelError(
                f"card {card.name!r} lists {len(card.classes)} classes but its head gives "
                f"{scores.shape[1]} values; set kwargs.num_classes = {len(card.classes)}",
                card.path,
            )
        self._checked = True
        return emb, scores


def auto_batch_size(model: InferenceModel) -> int:
    """``CPU_BATCH`` on a CPU; on a GPU the largest power of two whose activations fit.

    Measures the peak memory of an eager forward pass of a few patches and scales it to
    ``GPU_MEMORY_FRACTION`` of the free memory, capped at ``MAX_GPU_BATCH``.
    """
    if model.device.type != "cuda":
        return CPU_BATCH
    device, probe = model.device, 8
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    pixels = torch.full((probe, model.size, model.size, 3), 128, dtype=torch.uint8, device=device)
    with torch.no_grad():
        model._forward(pixels)
    torch.cuda.synchronize(device)
    per_patch = max(1.0, (torch.cuda.max_memory_allocated(device) - base) / probe)
    fit = max(1.0, GPU_MEMORY_FRACTION * free / per_patch)
    batch = min(MAX_GPU_BATCH, 1 << int(math.log2(fit)))
    log.info(
        "batch size %d (%.1f MiB per patch, %.1f GiB free)", batch, per_patch / 2**20, free / 2**30
    )
    return batch


def load_model(
    config: EngineConfig | ModelConfig,
    backbone: Backbone | None = None,
    *,
    device: torch.device | str | None = None,
    size: int | None = None,
) -> InferenceModel:
    """Find the config's card, build its backbone (unless given) and prepare it.

    The backbone is built on the meta device and its weights (or seeded random ones)
    materialise straight on the target device: a GPU run never builds the model on the CPU.
    """
    if isinstance(config, EngineConfig):
        config = config.model_config
    if backbone is None:
        card = find_card(config.model)
        target = resolve_device(config.device) if device is None else torch.device(device)
        backbone = build_backbone(
            card,
            config.weights,
            random_init=config.random_init,
            device=target,
            sha256=config.sha256,
        )
    else:
        card = backbone.card
        target = resolve_device(config.device) if device is None else torch.device(device)
    return InferenceModel(
        backbone,
        size=size or config.size or card.input_size,
        device=target,
        precision=config.precision,
        compile=config.compile,
        batch_size=config.batch_size,
        embeddings="embeddings" in config.outputs,
        scores="scores" in config.outputs,
    )


def _to_numpy(values: torch.Tensor | None) -> np.ndarray | None:
    return None if values is None else values.numpy()


def _pinned_copy(values: torch.Tensor | None) -> torch.Tensor | None:
    """A non-blocking copy of a device tensor into pinned host memory."""
    if values is None:
        return None
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    return host.copy_(values, non_blocking=True)


def _all_finite(outputs: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """One 0-d bool tensor on the outputs' device: no NaN or infinity in any of them.

    Computed on the device and not read here, so a GPU is not synchronised for it.
    """
    flag: torch.Tensor | None = None
    for values in outputs:
        if values is not None:
            finite = torch.isfinite(values).all()
            flag = finite if flag is None else flag & finite
    return flag


def _non_finite(model: InferenceModel, slide: Path | None) -> NonFiniteOutputError:
    weights = model.backbone.weights
    label = f"the random weights of card {model.card.name!r}" if weights is None else weights
    return NonFiniteOutputError(label, slide or "this slide", path=slide)


def run_batches(
    model: InferenceModel,
    batches: Iterable[Any],
    write: Writer,
    progress: Callable[[int, int], None] | None = None,
    total: int | None = None,
    *,
    slide: Path | None = None,
) -> int:
    """Run every batch through ``model`` and hand the results to ``write`` in order.

    ``batches`` yield :class:`~wsi_ai.engine.loader.Batch`-like objects (``start``,
    ``pixels``, ``padded``, ``release``) in host memory or already on the model's device.
    ``write(start, embeddings=..., scores=...)`` gets numpy arrays (float16, float32 or
    None). Returns the number of patches done. On a GPU, results are copied back into
    pinned memory without blocking and written one batch later, while the next computes.
    A batch with NaN or infinite outputs raises :class:`NonFiniteOutputError` naming the
    weights and ``slide`` (the file ``batches`` reads) before it is written.
    """
    if model.device.type == "cuda":
        with torch.cuda.device(model.device):  # events and streams on the model's GPU
            return _loop(model, batches, write, progress, total, slide)
    return _loop(model, batches, write, progress, total, slide)


# (start, host outputs [embeddings, scores], copy-done event, all-finite flag)
_Item = tuple[int, list[torch.Tensor | None], Any, torch.Tensor | None]


def _loop(
    model: InferenceModel,
    batches: Iterable[Any],
    write: Writer,
    progress: Callable[[int, int], None] | None,
    total: int | None,
    slide: Path | None,
) -> int:
    cuda = model.device.type == "cuda"
    # Host-to-device copies run on their own stream, so they overlap the previous batch.
    copy_stream = torch.cuda.Stream(model.device) if cuda else None
    pending: _Item | None = None
    done = 0

    def finish(item: _Item) -> int:
        start, host, event, finite = item
        if event is not None:
            event.synchronize()
        if finite is not None and not bool(finite):
            raise _non_finite(model, slide)
        emb, scores = (_to_numpy(t) for t in host)
        write(start, embeddings=emb, scores=scores)
        return len(next(t for t in host if t is not None))

    for batch in batches:
        count = len(batch)
        pixels = batch.padded if model.compiled else batch.pixels  # one shape when compiled
        if copy_stream is not None and pixels.device.type == "cpu":
            with torch.cuda.stream(copy_stream):
                pixels = pixels.to(model.device, non_blocking=True)
                copied = torch.cuda.Event()
                copied.record(copy_stream)
            torch.cuda.current_stream(model.device).wait_event(copied)
            pixels.record_stream(torch.cuda.current_stream(model.device))
            batch.release(copied)  # the read threads wait for the copy before refilling
        outputs = [None if t is None else t[:count] for t in model(pixels)]
        finite = _all_finite(outputs)
        if cuda:
            host = [_pinned_copy(t) for t in outputs]
            flag = _pinned_copy(finite)  # read after the event, with the outputs
            ready = torch.cuda.Event()
            ready.record()
            item: _Item = (batch.start, host, ready, flag)
        else:
            batch.release()
            item = (batch.start, outputs, None, finite)
        if pending is not None:
            done += finish(pending)
            if progress is not None:
                progress(done, total or done)
        pending = item
    if pending is not None:
        done += finish(pending)
        if progress is not None:
            progress(done, total or done)
    return done
