"""What ``--precision auto`` runs: a rule on a GPU, a measurement on a CPU.

An explicit precision (``fp32``, ``bf16``, ``fp16``) is used as it is. ``auto`` is:

* on a GPU: bf16 where the GPU supports it, else fp16 (a rule; nothing is measured);
* on a CPU without oneDNN's bf16 kernels (AVX512-BF16, AMX): fp32, nothing measured;
* on a CPU with them: whichever of fp32 and bf16 autocast (both channels-last, as the
  run has them) is faster on this CPU for this backbone, measured once per process by a
  small probe (:func:`measure_cpu`): bf16 only when it takes at most ``BF16_MARGIN``
  (90 %) of fp32's time per patch, i.e. is at least 10 % faster, else fp32. CPUs that
  have the kernels do not all run them faster (emulated AVX512-BF16 on some parts, small
  models whose casts cost more than they save), so the kernels alone do not decide.

The probe runs the actual backbone on ``PROBE_BATCH`` patches of the run's size: one
untimed warm-up pass per precision (oneDNN builds its kernels then), then timed passes
alternating fp32 and bf16, the fastest of each kept, until the answer is clear
(``CLEAR`` away from the margin), ``PROBE_ROUNDS`` rounds are done or the timed passes
took ``PROBE_BUDGET_S``. That is about 0.3 s for resnet50 and 0.7 s for ViT-B/16 at
224 px on 2 cores. A probe that fails (a patch size the model cannot run, say) picks fp32
and is not kept; the run then reports the model's own error.

Times mean nothing on a CPU other processes are using: torch's threads wait for each
other and either precision can come out ahead. So the probe also measures the CPU time
its threads got (process CPU time over wall time times torch's threads, ``share``; 1 on
an idle CPU), first for 50 ms of a small matrix product (:func:`cpu_share`), then over
its passes. Below ``BUSY_SHARE`` the CPU is busy: the probe does not run, or stops after
the fp32 warm-up, and ``auto`` is fp32, said as such (an explicit ``--precision`` then
gives a known choice). The busy verdict is kept like a measurement.
Threads of this process itself (slide reading) count as the probe's, so they are not
seen as contention; on a CPU node they use few of its cores.

The measurement is kept for the process, keyed by :func:`probe_key`: the architecture
and its timm kwargs (what the compute is, not which weights or card name), the patch
side, the memory format and torch's CPU thread count (which changes the ratio most). It
is not keyed by the run's batch size: the probe always runs the same small batch, and
the ratio of the two precisions is a property of the kernels far more than of the batch.
Every model of the process with the same key (every slide of a run, a second card of the
same architecture) reuses it, so the probe runs once and all of them agree.

``WSI_AI_PRECISION_PROBE=0`` skips the probe: ``auto`` is then fp32 on every CPU (the
exact choice, and nothing measured; ask for ``--precision bf16`` to have bf16 unmeasured).

What was chosen is logged once at INFO, with the measured times, e.g. ``precision auto on
cpu for resnet50 at 224 px: bf16 (18.5 ms/patch) vs fp32 (38.1 ms/patch)``, and is on
:attr:`~wsi_ai.engine.runner.InferenceModel.precision_choice`.
:meth:`PrecisionChoice.record` (what a store records, beside the resolved ``precision``)
is the requested precision and the reason, not the timings: they differ from run to run,
and a store's bytes must not. To rerun comparably, pass the recorded precision explicitly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from wsi_ai.nn.cards import ModelCard

__all__ = [
    "BF16_MARGIN",
    "PROBE_BATCH",
    "PROBE_ENV",
    "PrecisionChoice",
    "Timing",
    "choose_precision",
    "clear_probe_cache",
    "cpu_share",
    "cpu_supports_bf16",
    "measure_cpu",
    "probe_key",
]

log = logging.getLogger(__name__)

PROBE_ENV = "WSI_AI_PRECISION_PROBE"
PROBE_BATCH = 2  # patches per probe pass
PROBE_ROUNDS = 3  # timed passes per precision, at most
BF16_MARGIN = 0.9  # bf16 is chosen when it takes at most this fraction of fp32's time
CLEAR = 0.15  # a ratio this far from the margin needs no further round
PROBE_BUDGET_S = 1.0  # no further round once the timed passes took this long (seconds)
BUSY_SHARE = 0.75  # of the CPU time torch's threads could have had: below it, busy

Clock = Callable[[], float]
ProbeKey = tuple[str, str, int, bool, int]


class Timing(NamedTuple):
    """A probe's result: ms per patch in each precision, and the share of the CPU its
    threads got (1: an idle CPU)."""

    fp32_ms: float
    bf16_ms: float
    share: float = 1.0


_measured: dict[ProbeKey, Timing] = {}
_lock = threading.Lock()  # one probe at a time: two at once would time each other


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a model runs at, what was asked for, and why.

    ``fp32_ms`` and ``bf16_ms`` are the probe's times per patch (``None`` when nothing
    was measured).
    """

    precision: str  # fp32 | bf16 | fp16
    requested: str  # auto | fp32 | bf16 | fp16
    reason: str
    fp32_ms: float | None = None
    bf16_ms: float | None = None
    note: str = ""  # said with the choice, not recorded (how busy the CPU was)

    @property
    def measured(self) -> bool:
        return self.fp32_ms is not None and self.bf16_ms is not None

    def record(self) -> dict[str, Any]:
        """What outputs record (no timings: the same run must write the same bytes)."""
        return {"requested": self.requested, "reason": self.reason}

    def as_dict(self) -> dict[str, Any]:
        """Everything, the measured times (ms per patch) included."""
        return {
            "precision": self.precision,
            "requested": self.requested,
            "reason": self.reason,
            "fp32_ms_per_patch": None if self.fp32_ms is None else round(self.fp32_ms, 2),
            "bf16_ms_per_patch": None if self.bf16_ms is None else round(self.bf16_ms, 2),
        }

    def describe(self, where: str) -> str:
        """One line: ``precision auto on cpu for ...: bf16 (x ms/patch) vs fp32 (y ms/patch)``."""
        head = f"precision {self.requested} on {where}: {self.precision}"
        if self.fp32_ms is None or self.bf16_ms is None:
            return (
                f"{head} ({self.reason}: {self.note})" if self.note else f"{head} ({self.reason})"
            )
        times = {"fp32": self.fp32_ms, "bf16": self.bf16_ms}
        other = "fp32" if self.precision == "bf16" else "bf16"
        line = f"{head} ({times[self.precision]:.1f} ms/patch) vs {other} "
        line += f"({times[other]:.1f} ms/patch)"
        return line if self.precision == "bf16" else f"{line}: {self.reason}"


def cpu_supports_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX512-BF16, AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def probe_enabled() -> bool:
    """False when ``WSI_AI_PRECISION_PROBE`` is ``0`` (or ``false``, ``no``, ``off``)."""
    value = os.environ.get(PROBE_ENV, "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def probe_key(card: ModelCard, size: int, channels_last: bool) -> ProbeKey:
    """What a CPU measurement is kept under (see the module docstring)."""
    kwargs = json.dumps([card.kwargs, card.kwargs_classes], sort_keys=True, default=str)
    return (card.architecture, kwargs, size, channels_last, torch.get_num_threads())


def clear_probe_cache() -> None:
    """Forget every measurement of this process (for tests)."""
    with _lock:
        _measured.clear()


def measure_cpu(
    model: nn.Module,
    size: int,
    *,
    channels_last: bool = True,
    batch: int = PROBE_BATCH,
    rounds: int = PROBE_ROUNDS,
    budget_s: float = PROBE_BUDGET_S,
    clock: Clock = time.perf_counter,
    cpu_clock: Clock = time.process_time,
) -> Timing:
    """fp32 and bf16-autocast ms per patch of ``model`` on normalised ``[batch, 3, size,
    size]`` CPU images, and the CPU share its threads got (see the module docstring):
    one warm-up pass each, then the fastest of up to ``rounds`` alternating timed passes
    (fewer once the ratio is clear or the timed passes took ``budget_s``). When the fp32
    warm-up finds the CPU busy, nothing more runs: its time is returned, bf16's is NaN."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=generator) * 4 - 2
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    threads = max(1, torch.get_num_threads())
    used = [0.0, 0.0]  # wall, CPU seconds of the passes so far

    def once(dtype: torch.dtype | None) -> float:
        start, cpu = clock(), cpu_clock()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            model(images)
        wall = clock() - start
        used[0] += wall
        used[1] += cpu_clock() - cpu
        return wall * 1000.0 / batch

    def share() -> float:
        return min(1.0, used[1] / max(used[0] * threads, 1e-9))

    with torch.inference_mode():
        fp32 = once(None)  # warm-up: oneDNN builds its kernels
        if share() < BUSY_SHARE:
            return Timing(fp32, math.nan, share())
        once(torch.bfloat16)
        used[:] = [0.0, 0.0]
        fp32 = bf16 = float("inf")
        for _ in range(max(1, rounds)):
            fp32, bf16 = min(fp32, once(None)), min(bf16, once(torch.bfloat16))
            clear = abs(bf16 / max(fp32, 1e-9) - BF16_MARGIN) > CLEAR
            if clear or used[0] >= budget_s:
                break
    return Timing(fp32, bf16, share())


def cpu_share(window_s: float = 0.05) -> float:
    """The share of the CPU time torch's threads get now (1: an idle CPU), from a small
    multi-threaded matrix product repeated for ``window_s`` seconds before the probe."""
    threads = max(1, torch.get_num_threads())
    block = torch.rand(256, 256, generator=torch.Generator().manual_seed(0))
    start, cpu = time.perf_counter(), time.process_time()
    while (wall := time.perf_counter() - start) < window_s:
        block @ block
    return min(1.0, (time.process_time() - cpu) / max(wall * threads, 1e-9))


def _cpu_choice(
    requested: str,
    model: nn.Module | None,
    card: ModelCard | None,
    size: int | None,
    *,
    channels_last: bool,
) -> tuple[PrecisionChoice, bool]:
    """The CPU's ``auto`` choice and whether it was just measured (else ruled or reused)."""
    if not cpu_supports_bf16():
        return PrecisionChoice("fp32", requested, "cpu lacks bf16 kernels"), False
    if not probe_enabled():
        return PrecisionChoice("fp32", requested, f"probe off ({PROBE_ENV}=0)"), False
    if model is None or card is None or size is None:
        return PrecisionChoice("fp32", requested, "no model to measure"), False
    key = probe_key(card, size, channels_last)
    with _lock:
        fresh = key not in _measured
        if fresh:
            try:
                share = cpu_share()  # a busy CPU: 50 ms to see it, not a whole probe
                _measured[key] = (
                    Timing(math.nan, math.nan, share)
                    if share < BUSY_SHARE
                    else measure_cpu(model, size, channels_last=channels_last)
                )
            except Exception as err:  # the run reports the model's own error
                log.debug("precision probe failed: %s", err)
                reason = f"probe failed ({type(err).__name__})"
                return PrecisionChoice("fp32", requested, reason), True
        timing = _measured[key]
    if timing.share < BUSY_SHARE:
        threads = torch.get_num_threads()
        note = f"torch's {threads} threads got {timing.share:.0%} of their CPU time"
        return PrecisionChoice("fp32", requested, "the CPU was busy", note=note), fresh
    fp32, bf16 = timing.fp32_ms, timing.bf16_ms
    if bf16 <= BF16_MARGIN * fp32:
        reason = f"bf16 measured at least {1 - BF16_MARGIN:.0%} faster"
        return PrecisionChoice("bf16", requested, reason, fp32, bf16), fresh
    reason = f"bf16 not measured {1 - BF16_MARGIN:.0%} faster"
    return PrecisionChoice("fp32", requested, reason, fp32, bf16), fresh


def choose_precision(
    requested: str,
    device: torch.device,
    model: nn.Module | None = None,
    card: ModelCard | None = None,
    size: int | None = None,
    *,
    channels_last: bool = True,
) -> PrecisionChoice:
    """The precision ``model`` (on ``device``, at ``size`` px, of ``card``) runs at.

    ``requested`` other than ``auto`` is used as it is. ``auto`` follows the module
    docstring; on a CPU with bf16 kernels it needs ``model``, ``card`` and ``size`` to
    measure (without them it is fp32). An ``auto`` choice is logged at INFO the first
    time it is made for its key, at DEBUG when reused.
    """
    if requested != "auto":
        return PrecisionChoice(requested, requested, "asked for")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            choice = PrecisionChoice("bf16", requested, "the GPU supports bf16")
        else:
            choice = PrecisionChoice("fp16", requested, "the GPU lacks bf16")
        fresh = True
    else:
        choice, fresh = _cpu_choice(requested, model, card, size, channels_last=channels_last)
    where = str(device) if card is None else f"{device} for {card.name} at {size} px"
    log.log(logging.INFO if fresh or not choice.measured else logging.DEBUG, choice.describe(where))
    return choice
