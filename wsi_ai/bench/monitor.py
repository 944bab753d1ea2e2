"""Sample the process's memory and the GPU's memory and utilisation while work runs.

:class:`Monitor` is a context manager: a daemon thread samples every ``interval`` seconds
the resident memory of this process (psutil) and, when NVML is available (the
``nvidia-ml-py`` package and an NVIDIA driver), the GPU's utilisation and used memory.
NVML's utilisation is the share of the last sample period in which a kernel ran: its mean
over the run is what "GPU busy" means in the bench table.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import psutil

__all__ = ["Monitor", "Usage", "nvml_handle"]


def nvml_handle(index: int) -> Any | None:
    """An NVML device handle for GPU ``index``, or ``None`` without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # no package, no driver, no such GPU
        return None


@dataclass
class Usage:
    """What the samples showed (``None``: not measured here)."""

    seconds: float = 0.0
    peak_rss_bytes: int = 0
    gpu_busy_percent: float | None = None  # mean NVML utilisation over the samples
    gpu_peak_used_bytes: int | None = None
    samples: int = 0
    _busy: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "peak_rss_bytes": self.peak_rss_bytes,
            "gpu_busy_percent": self.gpu_busy_percent,
            "gpu_peak_used_bytes": self.gpu_peak_used_bytes,
            "samples": self.samples,
        }


class Monitor:
    """Samples memory (and the GPU ``gpu_index`` through NVML) from enter to exit."""

    def __init__(self, gpu_index: int | None = None, interval: float = 0.05) -> None:
        self.interval = interval
        self.usage = Usage()
        self._process = psutil.Process()
        self._gpu = None if gpu_index is None else nvml_handle(gpu_index)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wsi-ai-monitor", daemon=True)
        self._start = 0.0

    def _sample(self) -> None:
        usage = self.usage
        usage.samples += 1
        usage.peak_rss_bytes = max(usage.peak_rss_bytes, self._process.memory_info().rss)
        if self._gpu is not None:
            import pynvml

            try:
                rates = pynvml.nvmlDeviceGetUtilizationRates(self._gpu)
                memory = pynvml.nvmlDeviceGetMemoryInfo(self._gpu)
            except Exception:
                return
            usage._busy.append(float(rates.gpu))
            usage.gpu_peak_used_bytes = max(usage.gpu_peak_used_bytes or 0, int(memory.used))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Monitor:
        self._start = time.perf_counter()
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        usage = self.usage
        usage.seconds = time.perf_counter() - self._start
        if usage._busy:
            usage.gpu_busy_percent = round(sum(usage._busy) / len(usage._busy), 1)
