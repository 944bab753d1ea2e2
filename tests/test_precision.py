"""``--precision auto``: measured once per process on a CPU with bf16 kernels, fp32 where
bf16 is not faster or not there, a rule on a GPU, explicit precisions untouched; and models
that materialise on their device with the same seeded weights as before on a CPU."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.tiny_model import tiny_card
from wsi_ai.engine import precision, runner
from wsi_ai.engine.config import ModelConfig
from wsi_ai.engine.precision import PROBE_ENV, Timing, choose_precision, measure_cpu
from wsi_ai.engine.runner import load_model, resolve_precision
from wsi_ai.nn.backbone import build_backbone, create_architecture
from wsi_ai.nn.cards import load_card

CPU = torch.device("cpu")
REAL_CPU_SHARE = precision.cpu_share  # the fixture below stands in for it


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(PROBE_ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_share", lambda: 1.0)  # an idle CPU
    precision.clear_probe_cache()
    yield
    precision.clear_probe_cache()


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """A CPU with bf16 kernels whose probe says bf16 takes half fp32's time; the probes
    run are listed as (size, channels_last)."""
    calls: list[tuple[int, bool]] = []

    def fake(model: nn.Module, size: int, *, channels_last: bool = True) -> Timing:
        calls.append((size, channels_last))
        return Timing(10.0, 5.0)

    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(precision, "measure_cpu", fake)
    return calls


def no_probe(*args: object, **kwargs: object) -> Timing:
    raise AssertionError("the probe ran")


def tiny_config(folder: Path, **kwargs: object) -> ModelConfig:
    return ModelConfig(model=tiny_card(folder), random_init=True, device="cpu", **kwargs)  # type: ignore[arg-type]


def test_auto_is_measured_once_per_process_and_recorded(
    tmp_path: Path, probes: list[tuple[int, bool]], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="wsi_ai.engine.precision"):
        first = load_model(tiny_config(tmp_path))
        second = load_model(tiny_config(tmp_path))  # another model, same architecture
    assert probes == [(32, True)]  # measured once, at the model's size, channels-last
    assert first.precision == second.precision == "bf16"
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert lines == [
        "precision auto on cpu for tiny at 32 px: bf16 (5.0 ms/patch) vs fp32 (10.0 ms/patch)"
    ]
    choice = second.precision_choice
    assert (choice.fp32_ms, choice.bf16_ms) == (10.0, 5.0)
    settings = second.settings()
    assert settings["precision"] == "bf16"
    assert settings["precision_choice"] == {
        "requested": "auto",
        "reason": "bf16 measured at least 10% faster",
    }  # no timings: a store's bytes must not depend on them
    json.dumps(settings)
    load_model(tiny_config(tmp_path, size=48))  # another size: measured again
    assert probes == [(32, True), (48, True)]


@pytest.mark.parametrize("where", ["before", "during"])
def test_a_busy_cpu_is_fp32_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """Busy before the probe (it does not run) or during it (it stops): fp32, said so."""
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    if where == "before":
        monkeypatch.setattr(precision, "cpu_share", lambda: 0.4)
        monkeypatch.setattr(precision, "measure_cpu", no_probe)
    else:
        monkeypatch.setattr(precision, "measure_cpu", lambda *a, **k: Timing(10.0, math.nan, 0.4))
    with caplog.at_level(logging.INFO, logger="wsi_ai.engine.precision"):
        model = load_model(tiny_config(tmp_path))
        again = load_model(tiny_config(tmp_path))  # the verdict is kept: nothing runs again
    assert model.precision == again.precision == "fp32" and not model.precision_choice.measured
    threads = torch.get_num_threads()
    assert [r.getMessage() for r in caplog.records if r.name == precision.__name__] == [
        f"precision auto on cpu for tiny at 32 px: fp32 (the CPU was busy: torch's {threads} "
        "threads got 40% of their CPU time)"
    ] * 2
    assert model.settings()["precision_choice"]["reason"] == "the CPU was busy"


def test_cpu_share_is_a_fraction() -> None:
    assert 0 < REAL_CPU_SHARE(0.01) <= 1


@pytest.mark.parametrize(("bf16_ms", "expected"), [(9.5, "fp32"), (11.0, "fp32"), (9.0, "bf16")])
def test_bf16_must_be_ten_percent_faster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bf16_ms: float, expected: str
) -> None:
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(precision, "measure_cpu", lambda *a, **k: Timing(10.0, bf16_ms))
    model = load_model(tiny_config(tmp_path))
    assert model.precision == expected
    if expected == "fp32":
        assert model.precision_choice.reason == "bf16 not measured 10% faster"
        assert "fp32 (10.0 ms/patch) vs bf16" in model.precision_choice.describe("cpu")


def test_no_bf16_kernels_or_probe_off_is_fp32_unmeasured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "measure_cpu", no_probe)
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    model = load_model(tiny_config(tmp_path))
    assert model.precision == "fp32"
    assert model.precision_choice.reason == "cpu lacks bf16 kernels"
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setenv(PROBE_ENV, "0")
    model = load_model(tiny_config(tmp_path))
    assert model.precision == "fp32"
    assert model.settings()["precision_choice"]["reason"] == f"probe off ({PROBE_ENV}=0)"
    assert resolve_precision("auto", CPU) == "fp32"  # nothing to measure: fp32


@pytest.mark.parametrize("asked", ["fp32", "bf16", "fp16"])
def test_explicit_precisions_are_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asked: str
) -> None:
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(precision, "measure_cpu", no_probe)
    model = load_model(tiny_config(tmp_path, precision=asked))
    assert model.precision == asked
    assert model.settings()["precision_choice"] == {"requested": asked, "reason": "asked for"}
    assert resolve_precision(asked, torch.device("cuda")) == asked


@pytest.mark.parametrize(("supported", "expected"), [(True, "bf16"), (False, "fp16")])
def test_gpus_keep_their_rule_unmeasured(
    monkeypatch: pytest.MonkeyPatch, supported: bool, expected: str
) -> None:
    monkeypatch.setattr(precision, "measure_cpu", no_probe)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    choice = choose_precision("auto", torch.device("cuda:0"), nn.Identity())
    assert choice.precision == expected and not choice.measured


def test_a_failed_probe_is_fp32_and_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def broken(*args: object, **kwargs: object) -> Timing:
        calls.append(1)
        raise RuntimeError("no kernel")

    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(precision, "measure_cpu", broken)
    for _ in range(2):
        model = load_model(tiny_config(tmp_path))
        assert model.precision == "fp32"
        assert model.precision_choice.reason == "probe failed (RuntimeError)"
    assert len(calls) == 2


class FakeClocks:
    """Wall and CPU clocks for the probe: each pass (two readings of each) lasts the next of
    ``durations`` seconds, with ``share`` of torch's threads' CPU time."""

    def __init__(self, durations: list[float], share: float = 1.0) -> None:
        self.durations, self.share = iter(durations), share
        self.now = self.cpu = 0.0
        self.readings = 0

    def wall(self) -> float:
        self.readings += 1
        if self.readings % 2 == 0:  # the pass's end
            step = next(self.durations)
            self.now += step
            self.cpu += step * self.share * torch.get_num_threads()
        return self.now

    def process(self) -> float:
        return self.cpu


def test_the_probe_times_warm_passes_and_stops_when_clear() -> None:
    model = nn.Conv2d(3, 4, 3)
    clocks = FakeClocks([5.0, 5.0, 0.010, 0.020, 0.012, 0.009])
    timing = measure_cpu(model, 16, batch=2, clock=clocks.wall, cpu_clock=clocks.process)
    # the warm-ups (5 s) are left out; bf16 twice as slow is clear after one round
    assert timing == pytest.approx((5.0, 10.0, 1.0))
    assert clocks.readings == 8
    clocks = FakeClocks([5.0, 5.0, 0.010, 0.0095, 0.012, 0.009, 0.011, 0.0091])
    timing = measure_cpu(model, 16, batch=2, clock=clocks.wall, cpu_clock=clocks.process)
    assert timing == pytest.approx((5.0, 4.5, 1.0))  # unclear: three rounds, fastest kept
    assert clocks.readings == 16
    clocks = FakeClocks([0.6, 0.6, 0.6, 0.57])
    timing = measure_cpu(model, 16, batch=2, clock=clocks.wall, cpu_clock=clocks.process)
    assert timing == pytest.approx((300.0, 285.0, 1.0))  # unclear, but the budget (1 s) is spent
    assert clocks.readings == 8
    clocks = FakeClocks([0.5], share=0.5)
    timing = measure_cpu(model, 16, batch=2, clock=clocks.wall, cpu_clock=clocks.process)
    assert timing[0] == 250.0 and math.isnan(timing[1]) and timing[2] == 0.5
    assert clocks.readings == 2  # busy: the fp32 warm-up only


def test_the_real_probe_runs_a_backbone(tmp_path: Path) -> None:
    backbone = build_backbone(load_card(tiny_card(tmp_path)), random_init=True)
    backbone.to(memory_format=torch.channels_last)
    fp32, bf16, share = measure_cpu(backbone, 32, rounds=1)
    assert 0 < fp32 < 1e4 and 0 < share <= 1
    assert 0 < bf16 < 1e4 or (math.isnan(bf16) and share < precision.BUSY_SHARE)  # busy CPU


# --- models materialise on their device -------------------------------------------------


def test_random_weights_on_the_cpu_are_what_they_were(tmp_path: Path) -> None:
    """Seeded random init on the meta device then the CPU: the values of
    ``torch.manual_seed(seed)`` + each layer's reset, and the caller's RNG untouched."""
    card = load_card(tiny_card(tmp_path))
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    state = build_backbone(card, random_init=True, seed=7, device="cpu").model.state_dict()
    assert torch.equal(torch.rand(3), before)  # the global generator is restored
    assert all(t.device.type == "cpu" and not t.is_meta for t in state.values())
    expected = create_architecture(card, device="meta")
    expected.to_empty(device="cpu")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(7)
        for module in expected.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
        covered = {
            id(p)
            for m in expected.modules()
            if callable(getattr(m, "reset_parameters", None))
            for p in m.parameters(recurse=False)
        }
        for param in expected.parameters():
            if id(param) not in covered:
                param.normal_(0.0, 0.02)
    reference = expected.state_dict()
    assert all(torch.equal(state[k], reference[k]) for k in reference)


def test_weights_load_onto_the_asked_device(tmp_path: Path) -> None:
    card = load_card(tiny_card(tmp_path))
    source = build_backbone(card, random_init=True, seed=1).model.state_dict()
    path = tmp_path / "w.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in source.items()}, str(path))
    model = build_backbone(card, path, device=CPU).model
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float32 and value.device == CPU
        assert torch.equal(value, source[key].to(torch.bfloat16).float())


def test_load_model_builds_on_the_target_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices = []

    def spy(*args: object, device: object, **kwargs: object) -> object:
        devices.append(device)
        return build_backbone(*args, device=device, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "build_backbone", spy)
    load_model(tiny_config(tmp_path, precision="fp32"), device="cpu")
    assert devices == [CPU]  # the target, not a CPU build moved afterwards


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_model_is_never_built_on_the_cpu(tmp_path: Path) -> None:
    card = load_card(tiny_card(tmp_path))
    torch.cuda.manual_seed(5)
    before = torch.rand(3, device="cuda")
    torch.cuda.manual_seed(5)
    a = build_backbone(card, random_init=True, seed=3, device="cuda").model.state_dict()
    assert torch.equal(torch.rand(3, device="cuda"), before)  # the GPU's generator restored
    b = build_backbone(card, random_init=True, seed=3, device="cuda").model.state_dict()
    assert all(v.device.type == "cuda" for v in a.values())
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded on the GPU too
    path = tmp_path / "w.safetensors"
    save_file({k: v.cpu().contiguous() for k, v in a.items()}, str(path))
    loaded = build_backbone(card, path, device="cuda").model.state_dict()
    assert all(v.device.type == "cuda" and torch.equal(v, a[k]) for k, v in loaded.items())
    model = load_model(ModelConfig(model=tiny_card(tmp_path), random_init=True, device="cuda"))
    assert model.device.type == "cuda" and model.precision in ("bf16", "fp16")
