"""WSInfer 0.6.1 against ``wsi-ai embed``, side by side on the CPU, on one generated slide.

Both tools run a randomly initialised timm ``resnet50`` on 224 px patches at 0.5 µm/px of
the same slide (``benchmarks/make_slide.py`` at 0.25 µm/px, 40x: both read 448 px of level
0 and resize), each in its own process, with the same batch size:

- **WSInfer** (``wsinfer run`` with a TorchScript ``--model-path`` and a spec-1.0
  ``--config``: its tissue detection, DataLoader workers, fp32, CSV and GeoJSON outputs);
- **wsi-ai** (``wsi-ai -v embed --model resnet50 --random-init --device cpu``: its tissue
  detection, read threads, precision and channels-last, a Zarr store);
- **model only**: here, random uint8 patches through wsi-ai's own model call (``load_model``:
  the same batch size, precision, memory format), before and after the wsi-ai run.

Printed: patches, whole-process wall time, start-up (process start to the first batch:
WSInfer's progress bar appears, wsi-ai logs "N patches of"), patches/s over the whole
process and after start-up, wsi-ai / WSInfer (target at least 3x) and wsi-ai end to end
(the seconds ``wsi-ai embed`` reports: slide file to store) / model only (target at least
0.9). Patch counts differ a little: each tool finds tissue its own way. Nothing asserts a
time; the 1-minute load average is printed, as other processes may share the cores.

WSInfer is never a dependency of wsi-ai. The first run makes ``bench-out/peers/venv`` and
pip-installs ``wsinfer==0.6.1 'tiffslide<3' 'zarr<3'`` from PyPI into it (seconds) without
a second torch: a ``.pth`` file *appends* this venv's site-packages to the peer venv's
path, so pip finds torch, torchvision and the other heavy packages satisfied while the peer
venv's own tiffslide 2 and zarr 2 come first. WSInfer reads with OpenSlide (``--backend``;
its default where openslide-python imports). Offline it needs an empty model registry: HOME
is ``bench-out/peers/home`` with ``.wsinfer-zoo/wsinfer-zoo-registry.json`` =
``{"models": {}}``, and ``HF_HUB_OFFLINE=1``. Its model is a TorchScript trace of
``timm.create_model("resnet50", num_classes=2)``, with the card's mean/std in the config.

    .venv/bin/python benchmarks/bench_peers.py                 # 20000x15000: a few minutes
    .venv/bin/python benchmarks/bench_peers.py --size 60000x45000 --json bench-out/peers.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import sysconfig
import threading
import time
import venv
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from benchmarks.bench_engine import model_only_rate  # noqa: E402
from wsi_ai.engine import EngineConfig  # noqa: E402
from wsi_ai.engine.runner import load_model  # noqa: E402

PEER_REQUIREMENTS = ["wsinfer==0.6.1", "tiffslide<3", "zarr<3"]
WSI_AI = Path(sys.executable).with_name("wsi-ai")
WSINFER_LOOP = re.compile(r"^\s*0%\|")  # tqdm's first line: the inference loop starts
WSI_AI_GRID = re.compile(r"\d+ patches of \d+ px at")  # model loaded, grid made


@dataclass
class Run:
    """One child process: wall seconds and every output line with its time since start."""

    rc: int
    wall: float
    lines: list[tuple[float, str, str]] = field(default_factory=list)  # (s, stream, text)

    def first(self, pattern: re.Pattern[str]) -> float | None:
        return next((t for t, _, text in self.lines if pattern.search(text)), None)

    def text(self, stream: str) -> str:
        return "\n".join(text for _, s, text in self.lines if s == stream)

    def tail(self, n: int = 25) -> str:
        return "\n".join(text for _, _, text in self.lines[-n:])


def timed(command: list[str], env: dict[str, str] | None = None) -> Run:
    """Run ``command``; stamp each stdout/stderr line (``\\r`` ends one too: tqdm)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    run = Run(0, 0.0)

    def pump(pipe: IO[bytes], name: str) -> None:
        rest = b""
        while chunk := os.read(pipe.fileno(), 65536):
            now = time.perf_counter() - start
            *done, rest = re.split(rb"[\r\n]", rest + chunk)
            run.lines.extend((now, name, b.decode(errors="replace")) for b in done if b.strip())
        if rest.strip():
            run.lines.append((time.perf_counter() - start, name, rest.decode(errors="replace")))

    pumps = [threading.Thread(target=pump, args=(proc.stdout, "out"))]
    pumps.append(threading.Thread(target=pump, args=(proc.stderr, "err")))
    for t in pumps:
        t.start()
    run.rc = proc.wait()
    run.wall = time.perf_counter() - start
    for t in pumps:
        t.join()
    run.lines.sort(key=lambda row: row[0])
    return run


def ensure_slide(root: Path, size: str) -> Path:
    """The generated 40x slide, alone in its folder (WSInfer reads every file of a folder)."""
    path = root / f"slides-{size}" / "slide.svs"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(REPO / "benchmarks" / "make_slide.py"), str(path)]
        command += ["--size", size, "--mpp", "0.25", "--workers", str(os.cpu_count() or 2)]
        subprocess.run(command, check=True)
    return path


def ensure_peer_venv(root: Path) -> Path:
    """A venv with WSInfer that borrows this venv's torch through an appended ``.pth``."""
    env_dir = root / "venv"
    python = env_dir / "bin" / "python"
    marker = env_dir / "installed.txt"
    if marker.exists() and marker.read_text() == " ".join(PEER_REQUIREMENTS):
        return python
    print(f"making {env_dir} and installing {' '.join(PEER_REQUIREMENTS)} ...", flush=True)
    venv.EnvBuilder(clear=True, with_pip=True).create(env_dir)
    site = env_dir / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    (site / "zz-wsi-ai-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run(pip + PEER_REQUIREMENTS, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"pip install failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    marker.write_text(" ".join(PEER_REQUIREMENTS))
    return python


def wsinfer_model(root: Path, card: Any) -> tuple[Path, Path]:
    """A TorchScript resnet50 (random weights, 2 classes) and its spec-1.0 WSInfer config."""
    import timm

    model_path, config_path = root / "resnet50-random.pt", root / "resnet50-random.json"
    if not model_path.exists():
        torch.manual_seed(0)
        model = timm.create_model("resnet50", pretrained=False, num_classes=2).eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace: WSInfer needs it
            traced = torch.jit.trace(model, torch.rand(1, 3, card.input_size, card.input_size))
        traced.save(str(model_path))
    config = {
        "spec_version": "1.0",
        "architecture": "resnet50",
        "num_classes": 2,
        "class_names": ["a", "b"],
        "patch_size_pixels": card.input_size,
        "spacing_um_px": card.mpp,
        "transform": [
            {"name": "Resize", "arguments": {"size": card.input_size}},
            {"name": "ToTensor"},
            {"name": "Normalize", "arguments": {"mean": list(card.mean), "std": list(card.std)}},
        ],
    }
    config_path.write_text(json.dumps(config, indent=2))
    return model_path, config_path


def figures(patches: int, wall: float, startup: float | None) -> dict[str, float | None]:
    after = None if startup is None else wall - startup
    return {
        "patches": patches,
        "wall_s": round(wall, 2),
        "startup_s": None if startup is None else round(startup, 2),
        "patches_per_s": round(patches / wall, 2),
        "after_startup_patches_per_s": None if not after else round(patches / after, 2),
    }


def run_wsinfer(args: argparse.Namespace, root: Path, slide: Path, card: Any) -> dict[str, Any]:
    python = ensure_peer_venv(root)
    model_path, config_path = wsinfer_model(root, card)
    home = root / "home"
    (home / ".wsinfer-zoo").mkdir(parents=True, exist_ok=True)
    (home / ".wsinfer-zoo" / "wsinfer-zoo-registry.json").write_text('{"models": {}}')
    results = root / "wsinfer-results"
    subprocess.run(["rm", "-rf", str(results)], check=True)  # it skips slides already done
    env = os.environ | {"HOME": str(home), "HF_HUB_OFFLINE": "1", "WSINFER_FORCE_CPU": "1"}
    command = [str(python.with_name("wsinfer")), "--backend", args.wsinfer_backend, "run"]
    command += ["-i", str(slide.parent), "-o", str(results), "-p", str(model_path)]
    command += ["-c", str(config_path), "-b", str(args.batch_size)]
    command += ["-n", str(args.wsinfer_workers)]
    run = timed(command, env)
    csv = results / "model-outputs-csv" / f"{slide.stem}.csv"
    if run.rc or not csv.exists():
        sys.exit(f"wsinfer failed (exit {run.rc}):\n{run.tail()}")
    patches = len(csv.read_text().splitlines()) - 1
    out = figures(patches, run.wall, run.first(WSINFER_LOOP))
    return out | {"backend": args.wsinfer_backend, "workers": args.wsinfer_workers}


def run_wsi_ai(args: argparse.Namespace, root: Path, slide: Path, precision: str) -> dict[str, Any]:
    command = [str(WSI_AI), "-v", "embed", str(slide), "-o", str(root / "wsi-ai-out")]
    command += ["--model", "resnet50", "--random-init", "--device", "cpu", "--overwrite"]
    command += ["--batch-size", str(args.batch_size), "--precision", precision]
    command += ["--read-threads", str(args.read_threads), "--json"]
    run = timed(command)
    if run.rc:
        sys.exit(f"wsi-ai embed failed (exit {run.rc}):\n{run.tail()}")
    (row,) = json.loads(run.text("out"))
    out = figures(row["patches"], run.wall, run.first(WSI_AI_GRID))
    rate = row["patches"] / row["seconds"]
    return out | {"embed_s": row["seconds"], "embed_patches_per_s": round(rate, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="20000x15000", help="slide WIDTHxHEIGHT (level-0 px)")
    parser.add_argument("--batch-size", type=int, default=32, help="both tools")
    parser.add_argument("--precision", default="auto", help="wsi-ai's (WSInfer: fp32)")
    parser.add_argument("--read-threads", type=int, default=2, help="wsi-ai's")
    workers = min(os.cpu_count() or 1, 8)
    parser.add_argument("--wsinfer-workers", type=int, default=workers, help="its default")
    parser.add_argument("--wsinfer-backend", default="openslide", help="openslide|tiffslide")
    parser.add_argument("--model-batches", type=int, default=8, help="model-only batches")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "peers", help="scratch")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    if not re.fullmatch(r"\d+x\d+", args.size):
        parser.error("--size: WIDTHxHEIGHT, e.g. 20000x15000")
    root = args.out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    slide = ensure_slide(root, args.size)
    config = EngineConfig(
        model="resnet50",
        random_init=True,
        device="cpu",
        batch_size=args.batch_size,
        precision=args.precision,
        read_threads=args.read_threads,
    )
    load_before = os.getloadavg()[0]
    model = load_model(config)  # "auto" resolves here; the embed run gets the same precision
    settings, card = model.settings(), model.card
    print(
        f"{slide} ({args.size}, 0.25 µm/px); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; wsi-ai model {settings}",
        flush=True,
    )
    model_only_rate(model, 2)  # warm-up (oneDNN picks its kernels on the first batches)
    alone = [model_only_rate(model, args.model_batches)]
    wsi_ai = run_wsi_ai(args, root, slide, settings["precision"])
    print(f"model only: {alone[0]:.1f} patches/s; wsi-ai: {wsi_ai}", flush=True)
    alone.append(model_only_rate(model, args.model_batches))  # again: shared cores drift
    del model
    wsinfer = run_wsinfer(args, root, slide, card)
    print(f"wsinfer: {wsinfer}", flush=True)
    model_only = max(alone)
    report = {
        "slide": str(slide),
        "size": args.size,
        "batch_size": args.batch_size,
        "wsi_ai_settings": settings,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "wsinfer": wsinfer,
        "wsi_ai": wsi_ai,
        "model_only_patches_per_s": [round(r, 2) for r in alone],
        "wsi_ai_over_wsinfer": round(wsi_ai["patches_per_s"] / wsinfer["patches_per_s"], 2),
        "wsi_ai_over_wsinfer_after_startup": round(
            wsi_ai["after_startup_patches_per_s"] / wsinfer["after_startup_patches_per_s"], 2
        ),
        "end_to_end_over_model_only": round(wsi_ai["embed_patches_per_s"] / model_only, 2),
    }
    w, a = wsinfer, wsi_ai
    print(
        f"\nWSInfer 0.6.1 ({w['backend']}, {w['workers']} workers, fp32): {w['patches']} patches"
        f" in {w['wall_s']:.1f} s = {w['patches_per_s']:.1f} patches/s (start-up "
        f"{w['startup_s']} s; after it {w['after_startup_patches_per_s']} patches/s)\n"
        f"wsi-ai embed ({settings['precision']}, {args.read_threads} read threads): "
        f"{a['patches']} patches in {a['wall_s']:.1f} s = {a['patches_per_s']:.1f} patches/s "
        f"(start-up {a['startup_s']} s; after it {a['after_startup_patches_per_s']} patches/s;"
        f" its own time {a['embed_s']:.1f} s = {a['embed_patches_per_s']:.1f} patches/s)\n"
        f"model only: {model_only:.1f} patches/s (best of {len(alone)})\n"
        f"wsi-ai / WSInfer: {report['wsi_ai_over_wsinfer']:.2f}x whole process, "
        f"{report['wsi_ai_over_wsinfer_after_startup']:.2f}x after start-up (target >= 3)\n"
        f"wsi-ai end to end / model only: {report['end_to_end_over_model_only']:.2f} "
        f"(target >= 0.9)\nload average (1 min) {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores",
        flush=True,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
