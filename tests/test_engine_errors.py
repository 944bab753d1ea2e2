"""The inference engine's edges: one model per device however it is spelt, the weights
file's sha256 (checked on request, always recorded), first-batch failures that say what to
change, and the summary line naming the weights used."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from tests.test_engine import error_lines, run, tiny_card
from wsi_ai.cli.engine_cmds import embed
from wsi_ai.engine import EngineConfig, run_slides
from wsi_ai.engine import graph as engine_graph
from wsi_ai.engine.runner import InferenceModel, load_model, normalise_device
from wsi_ai.errors import ModelError
from wsi_ai.nn import weights as weights_module
from wsi_ai.nn.backbone import build_backbone, create_architecture
from wsi_ai.nn.cards import load_card
from wsi_ai.nn.weights import file_sha256, load_weights
from wsi_ai.store import read_features

STORE = "CMU-1-Small-Region.zarr"


def fake_cuda(monkeypatch: pytest.MonkeyPatch, count: int = 1, current: int = 0) -> None:
    """Make torch believe ``count`` GPUs are visible and ``current`` is selected."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)


@pytest.fixture
def empty_model_cache() -> Iterator[None]:
    """No model cached by another test going in, no fake one left behind coming out."""
    engine_graph._load_cached.cache_clear()
    yield
    engine_graph._load_cached.cache_clear()


def tiny_weights(tmp_path: Path, seed: int = 0, name: str = "w.safetensors") -> tuple[Path, Path]:
    """The engine's tiny (classless) card and a weights file for it, seeded."""
    card = tiny_card(tmp_path, classes=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_architecture(load_card(card))
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return card, path


# --- 1. one device, one spelling, one model --------------------------------------------


def test_normalise_device_spells_each_device_one_way(monkeypatch: pytest.MonkeyPatch) -> None:
    assert normalise_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert normalise_device("auto") == "cpu"
    fake_cuda(monkeypatch, count=2, current=1)
    assert normalise_device("cuda") == "cuda:1"
    assert normalise_device("auto") == "cuda:1"
    assert normalise_device("cuda:0") == "cuda:0"
    assert normalise_device("cpu") == "cpu"
    with pytest.raises(ModelError, match="only 2 GPU"):
        normalise_device("cuda:2")


def test_equivalent_device_spellings_load_the_model_once(
    monkeypatch: pytest.MonkeyPatch, empty_model_cache: None
) -> None:
    fake_cuda(monkeypatch)
    loads: list[str] = []

    def fake_load(config: EngineConfig, *, device: str) -> object:
        loads.append(device)
        return object()

    monkeypatch.setattr(engine_graph, "load_model", fake_load)
    key = EngineConfig(model="resnet50", random_init=True).model_config
    models = {id(engine_graph.cached_model(key, d)) for d in ("cuda", "auto", "cuda:0")}
    assert loads == ["cuda:0"] and len(models) == 1
    # What the threads scheduler's early build and its run nodes ask for: the same key.
    for device in ("auto", "cuda", "cuda:0"):
        config = EngineConfig(model="resnet50", random_init=True, device=device)
        assert engine_graph.worker_device(config) == "cuda:0"


def test_run_slides_builds_the_model_once(
    cmu_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_model_cache: None
) -> None:
    devices: list[str] = []

    def counting_load(config: EngineConfig, **kwargs: Any) -> InferenceModel:
        devices.append(str(kwargs["device"]))
        return load_model(config, **kwargs)

    monkeypatch.setattr(engine_graph, "load_model", counting_load)
    card = tiny_card(tmp_path, classes=False)
    config = EngineConfig(model=card, random_init=True, device="auto", tissue=False)
    (result,) = run_slides([cmu_small], tmp_path / "out", config)
    assert result.error is None, result.error
    assert devices == [normalise_device("auto")]


# --- 2. --sha256 on the command line ---------------------------------------------------


def test_engine_config_sha256_is_validated_and_lower_cased() -> None:
    digest = "AB" * 32
    assert EngineConfig(model="uni", sha256=digest).sha256 == digest.lower()
    with pytest.raises(ValueError, match="64 hex digits"):
        EngineConfig(model="uni", sha256="abc")
    with pytest.raises(ValueError, match="64 hex digits"):
        EngineConfig(model="uni", sha256="g" * 64)
    with pytest.raises(ValueError, match="random_init"):
        EngineConfig(model="uni", sha256="0" * 64, random_init=True)


def test_sha256_option_refuses_a_mismatching_weights_file(
    cmu_small: Path, tmp_path: Path, empty_model_cache: None
) -> None:
    card, weights = tiny_weights(tmp_path)
    out = tmp_path / "out"
    args = (cmu_small, "--model", card, "--weights", weights, "-o", out)
    code, stdout, stderr = run(embed, *args, "--sha256", "0" * 64)
    assert code == 1
    (line,) = error_lines(stderr)
    assert "sha256 mismatch" in line and "the given sha256" in line and str(weights) in line
    assert file_sha256(weights) in line and "wrote" not in stdout
    assert not out.exists() or list(out.iterdir()) == []

    good = file_sha256(weights)
    code, _, stderr = run(embed, *args, "--sha256", good.upper())
    assert code == 0, stderr
    attrs = read_features(out / STORE).attrs
    assert attrs["parameters"]["sha256"] == good
    assert attrs["backbone"]["weights_sha256"] == good
    assert attrs["backbone"]["weights_sha256_checked"] is True


@pytest.mark.parametrize(
    ("extra", "message"),
    [(("--random-init",), "--random-init"), (("--weights", "w.bin"), "64 hex digits")],
)
def test_sha256_option_usage_errors(
    cmu_small: Path, tmp_path: Path, extra: tuple[str, ...], message: str
) -> None:
    digest = "0" * 64 if extra[0] == "--random-init" else "123"
    args = (cmu_small, "--model", "resnet50", *extra, "--sha256", digest, "-o", tmp_path / "o")
    code, _, stderr = run(embed, *args)
    assert code == 2 and message in stderr
    assert not (tmp_path / "o").exists()


# --- 3. every store names its weights file ---------------------------------------------


def test_stores_record_the_weights_files_sha256(
    cmu_small: Path, tmp_path: Path, empty_model_cache: None
) -> None:
    card, first = tiny_weights(tmp_path, seed=0, name="first.safetensors")
    _, second = tiny_weights(tmp_path, seed=1, name="second.safetensors")
    found = {}
    for weights in (first, second):
        out = tmp_path / weights.stem
        code, _, stderr = run(embed, cmu_small, "--model", card, "--weights", weights, "-o", out)
        assert code == 0, stderr
        backbone = read_features(out / STORE).attrs["backbone"]
        assert backbone["weights_sha256"] == file_sha256(weights)
        assert backbone["weights_sha256_checked"] is False  # recorded, not checked
        found[weights.name] = backbone["weights_sha256"]
    assert found["first.safetensors"] != found["second.safetensors"]
    out = tmp_path / "random"
    code, _, stderr = run(embed, cmu_small, "--model", card, "--random-init", "-o", out)
    assert code == 0, stderr
    backbone = read_features(out / STORE).attrs["backbone"]
    assert backbone["weights_sha256"] is None and backbone["random_init"] is True


def test_the_weights_file_is_hashed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    card_path, weights = tiny_weights(tmp_path)
    card = load_card(card_path)
    digest = file_sha256(weights)
    hashed: list[Path] = []
    original = weights_module.file_sha256

    def counting(path: Path, *args: Any, **kwargs: Any) -> str:
        hashed.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(weights_module, "file_sha256", counting)
    for given in (None, digest):
        hashed.clear()
        backbone = build_backbone(card, weights, sha256=given)
        assert backbone.provenance()["weights_sha256"] == digest and len(hashed) == 1
    hashed.clear()  # a second load of the same file reuses the digest of the first
    report = load_weights(create_architecture(card), card, weights, digest, digest=digest)
    assert report.sha256 == digest and report.sha256_checked and hashed == []
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_weights(create_architecture(card), card, weights, "0" * 64, digest=digest)


# --- 4. first-batch failures -----------------------------------------------------------


def tiny_model(tmp_path: Path, size: int | None = None) -> InferenceModel:
    card = tiny_card(tmp_path, classes=False)
    config = EngineConfig(model=card, random_init=True, batch_size=2, precision="fp32")
    return load_model(config, size=size)


def raising(err: BaseException) -> Any:
    def run_model(pixels: torch.Tensor) -> Any:
        raise err

    return run_model


def pixels(size: int) -> torch.Tensor:
    return torch.zeros((2, size, size, 3), dtype=torch.uint8)


@pytest.mark.parametrize(
    "err",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be reported later"),
    ],
)
def test_out_of_memory_suggests_a_smaller_batch(tmp_path: Path, err: BaseException) -> None:
    model = tiny_model(tmp_path)
    model._run = raising(err)
    with pytest.raises(ModelError) as info:
        model(pixels(model.size))
    message = str(info.value)
    assert "out of memory" in message and "--batch-size" in message and "2 patches" in message
    assert "input size" not in message and "\n" not in message
    model._checked = True  # a later batch: the same advice
    with pytest.raises(ModelError, match="--batch-size"):
        model(pixels(model.size))


def test_input_size_hint_only_when_the_size_differs(tmp_path: Path) -> None:
    err = RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x10 and 96x3)")
    model = tiny_model(tmp_path)  # the card's 160 px
    model._run = raising(err)
    with pytest.raises(ModelError) as info:
        model(pixels(160))
    assert "failed on 160 px patches" in str(info.value)
    assert "input size" not in str(info.value) and "--batch-size" not in str(info.value)
    model = tiny_model(tmp_path, size=64)
    model._run = raising(err)
    with pytest.raises(ModelError, match=r"use the card's input size \(160 px\)"):
        model(pixels(64))
    model._checked = True  # later batches: not an out-of-memory error, so it goes through
    with pytest.raises(RuntimeError, match="mat1") as later:
        model(pixels(64))
    assert not isinstance(later.value, ModelError)


def test_out_of_memory_is_one_line_from_the_cli(
    cmu_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_model_cache: None
) -> None:
    def out_of_memory(self: InferenceModel, pixels: torch.Tensor) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(InferenceModel, "_forward", out_of_memory)
    card = tiny_card(tmp_path, classes=False)
    out = tmp_path / "out"
    code, _, stderr = run(embed, cmu_small, "--model", card, "--random-init", "-o", out)
    assert code == 1
    (line,) = error_lines(stderr)
    assert "out of memory" in line and "--batch-size" in line and "bug" not in line
    assert not out.exists() or list(out.iterdir()) == []


# --- 5. the summary line names the weights ---------------------------------------------


def test_summary_line_names_the_weights_used(
    cmu_small: Path, tmp_path: Path, empty_model_cache: None
) -> None:
    card, weights = tiny_weights(tmp_path)
    code, stdout, stderr = run(
        embed, cmu_small, "--model", card, "--weights", weights, "-o", tmp_path / "a"
    )
    assert code == 0, stderr
    assert f"weights {weights})" in stdout and "from the card" not in stdout
    pinned = tmp_path / "pinned.toml"
    pinned.write_text(f'weights = "{weights}"\n' + card.read_text())
    code, stdout, stderr = run(embed, cmu_small, "--model", pinned, "-o", tmp_path / "b")
    assert code == 0, stderr
    assert f"weights {weights})" in stdout
    code, stdout, stderr = run(embed, cmu_small, "--model", card, "--random-init", "-o", tmp_path)
    assert code == 0, stderr
    assert "RANDOM weights (--random-init)" in stdout and str(weights) not in stdout
