"""Benchmark the ViT aggregator's forward pass on one large slide (the issue's target: 100,000
patch tokens of 1,024 dimensions, a 4-layer, 512-wide encoder with 8 heads).

Measures, for one slide in eval mode without gradient (what ``wsi-ai predict`` runs):

- time per forward (median of ``--repeats`` after one warm-up pass);
- peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (inputs, weights and activations);
  on CPU the growth of the process's resident-set high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs`` where Linux allows it, else ``ru_maxrss``).

Reference measured in the same run: the gated-attention ABMIL baseline on the same tokens,
reported as a time ratio. ``--naive`` also runs the ViT with PyTorch's math attention backend
(which materialises the N x N matrix) on ``--naive-tokens`` tokens, next to the fused kernels
on the same tokens, to show what SDPA saves.

On CUDA the pass runs under bfloat16 autocast, as prediction does (``--fp32`` to disable).
The CPU default is 10,000 tokens: attention is quadratic, so 100,000 tokens cost about 100x
that on CPU (run it with ``--tokens 100000`` if you have the time).

Run: ``.venv/bin/python benchmarks/bench_aggregator.py [--device cuda] [--tokens 100000]``
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from wsi_ai.nn import GatedABMIL, ViTMIL

GIB = 1024**3
HWM = Path("/proc/self/status")


def _rss_peak_bytes() -> int:
    try:
        for line in HWM.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_rss_peak() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def measure(run: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float]:
    """(median seconds, peak bytes) of ``run`` after a warm-up call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    run()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_rss_peak()
    before = 0 if device.type == "cuda" else _rss_peak_bytes()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = float(torch.cuda.max_memory_allocated(device))
    else:
        peak = float(_rss_peak_bytes() - before)
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=None, help="default: 100000 CUDA, 10000 CPU")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fp32", action="store_true", help="no bfloat16 autocast on CUDA")
    parser.add_argument("--naive", action="store_true", help="also time the math backend")
    parser.add_argument("--naive-tokens", type=int, default=4000)
    args = parser.parse_args()

    device = torch.device(args.device)
    n = args.tokens or (100_000 if device.type == "cuda" else 10_000)
    torch.manual_seed(0)
    vit = ViTMIL(args.dim, 2, width=args.width, depth=args.depth, heads=args.heads)
    abmil = GatedABMIL(args.dim, 2)
    vit.to(device).eval()
    abmil.to(device).eval()
    x = torch.randn(n, args.dim, device=device)
    pos = torch.randint(0, 400, (n, 2), device=device).float()
    amp = device.type == "cuda" and not args.fp32
    dtype = "bf16 autocast" if amp else "fp32"

    def forward(model: torch.nn.Module, tokens: int = n) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
                return model(x[:tokens], pos[:tokens])

        return run

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    threads = torch.get_num_threads()
    print(f"device {device} ({name}), threads {threads}, torch {torch.__version__}, {dtype}")
    t_vit, m_vit = measure(forward(vit), device, args.repeats)
    t_ab, m_ab = measure(forward(abmil), device, args.repeats)
    what = "peak GPU allocated" if device.type == "cuda" else "peak RSS growth"
    print(
        f"ViT {args.depth}x{args.width} ({args.heads} heads), {n:,} tokens x {args.dim}: "
        f"{t_vit:.3f} s, {what} {m_vit / GIB:.2f} GiB"
    )
    print(
        f"ABMIL reference, same tokens: {t_ab:.3f} s, {what} {m_ab / GIB:.2f} GiB; "
        f"ViT / ABMIL time ratio {t_vit / t_ab:.1f}x"
    )
    if args.naive:
        k = min(args.naive_tokens, n)
        t_fused, m_fused = measure(forward(vit, k), device, args.repeats)
        with sdpa_kernel(SDPBackend.MATH):
            t_math, m_math = measure(forward(vit, k), device, args.repeats)
        print(
            f"{k:,} tokens: fused SDPA {t_fused:.3f} s, {m_fused / GIB:.2f} GiB; math backend "
            f"(N x N) {t_math:.3f} s, {m_math / GIB:.2f} GiB; memory ratio "
            f"{m_math / max(m_fused, 1):.1f}x"
        )


if __name__ == "__main__":
    main()
