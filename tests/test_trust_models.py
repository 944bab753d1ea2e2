"""What a lab can trust: corrupt weights stop a run instead of writing NaN, pickled code is
refused without advice to run it, a slide read by the second backend says so, and a Dask
cluster of processes runs quietly with no dashboard port."""

from __future__ import annotations

import json
import logging
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from tests.test_engine import error_lines, run, tiny_card
from wsi_ai.cli.engine_cmds import embed, score
from wsi_ai.cli.slide_cmds import info
from wsi_ai.errors import ModelError
from wsi_ai.nn.aggregator_card import AggregatorCard
from wsi_ai.nn.backbone import create_architecture
from wsi_ai.nn.cards import load_card
from wsi_ai.nn.predict import TrainedAggregator, predict_bag
from wsi_ai.nn.weights import read_state_dict
from wsi_ai.slide import open_slide
from wsi_ai.store.bags import SlideBag

ADVICE = "the weights are corrupt or the precision overflows; try --precision fp32"
# A copy of the bundled SVS cut inside its macro image: its last IFD is gone, OpenSlide
# rejects the file, tiffslide still reads the pyramid (found by trying lengths).
TRUNCATED_LENGTH = 1_900_000


# --- 1. non-finite model outputs are an error, not a store of NaN -----------------------


def poisoned_weights(card: Path, folder: Path, value: float) -> Path:
    """A safetensors file for ``card`` whose every floating tensor is ``value``."""
    model = create_architecture(load_card(card))
    state = {
        k: (torch.full_like(v, value) if v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
    }
    path = folder / "poisoned.safetensors"
    save_file(state, str(path))
    return path


@pytest.mark.parametrize(
    ("command", "classes", "value"),
    [(embed, False, math.nan), (score, True, math.nan), (embed, False, math.inf)],
    ids=["embed-nan", "score-nan", "embed-inf"],
)
def test_non_finite_outputs_stop_the_slide_and_write_no_store(
    cmu_small: Path, tmp_path: Path, command: object, classes: bool, value: float
) -> None:
    card = tiny_card(tmp_path, classes=classes)
    weights = poisoned_weights(card, tmp_path, value)
    out = tmp_path / "out"
    args = ("--model", card, "--weights", weights, "--precision", "fp32", "--no-tissue")
    code, _, stderr = run(command, cmu_small, *args, "-o", out)
    assert code == 1
    assert error_lines(stderr) == [
        f"error: non-finite outputs from {weights} on {cmu_small}: {ADVICE}"
    ]
    assert not (out / "CMU-1-Small-Region.zarr").exists()
    assert not out.exists() or [p.name for p in out.iterdir()] == []


def tiny_aggregator(tmp_path: Path, nan_weights: bool) -> TrainedAggregator:
    card = AggregatorCard("abmil", in_dim=8, classes=("benign", "tumour"), hyperparameters={})
    model = card.build()
    if nan_weights:
        with torch.no_grad():
            for param in model.parameters():
                param.fill_(math.nan)
    return TrainedAggregator(tmp_path / "run", card, model.eval(), torch.device("cpu"))


@pytest.mark.parametrize(
    ("nan_weights", "nan_features", "cause"),
    [(True, False, "the weights are corrupt"), (False, True, "re-embed the slide")],
    ids=["nan-weights", "nan-features"],
)
def test_predict_refuses_non_finite_logits_or_attention(
    tmp_path: Path, nan_weights: bool, nan_features: bool, cause: str
) -> None:
    run_ = tiny_aggregator(tmp_path, nan_weights)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 8)).astype(np.float16)
    if nan_features:
        emb[2, 3] = np.nan
    coords = np.array([[i * 224, 0, 224, 224] for i in range(6)], dtype=np.int64)
    positions = np.array([[i + 0.5, 0.5] for i in range(6)], dtype=np.float32)
    bag = SlideBag("slide-7", emb, positions, coords)
    with pytest.raises(ModelError) as caught:
        predict_bag(run_, bag)
    message = str(caught.value)
    assert message.startswith(f"non-finite outputs from {tmp_path / 'run' / 'model.safetensors'}")
    assert "on slide-7" in message and cause in message and "\n" not in message


# --- 2. pickled code is refused without advice to unpickle it ----------------------------


class Gadget:
    """A custom class: a weights file pickling one needs code to load."""

    def __init__(self) -> None:
        self.note = "not a tensor"


def _zip_checkpoint(path: Path) -> None:
    torch.save({"weight": torch.zeros(2), "meta": Gadget()}, path)


def _legacy_checkpoint(path: Path) -> None:
    torch.save(
        {"weight": torch.zeros(2), "meta": Gadget()}, path, _use_new_zipfile_serialization=False
    )


def _plain_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"meta": Gadget()}, protocol=4))


def _junk(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 4)  # no pickle, no zip: torch refuses it too


@pytest.mark.parametrize(
    ("write", "says"),
    [
        (_zip_checkpoint, "pickled code or objects (tests.test_trust_models.Gadget)"),
        (_legacy_checkpoint, "pickled code or objects (tests.test_trust_models.Gadget)"),
        (_plain_pickle, "pickled code or objects (tests.test_trust_models.Gadget)"),
        (_junk, "cannot read weights as torch"),
    ],
    ids=["torch-save", "torch-save-legacy", "plain-pickle", "not-a-pickle"],
)
def test_refused_weights_never_advise_unpickling_them(
    tmp_path: Path, write: object, says: str
) -> None:
    path = tmp_path / "checkpoint.pt"
    write(path)  # type: ignore[operator]
    with pytest.raises(ModelError) as caught:
        read_state_dict(path)
    message = str(caught.value)
    assert "weights_only=False" not in message and "set to `False`" not in message
    assert says in message and "\n" not in message and message.startswith(f"{path}: ")
    if "pickled code" in says:
        assert "arbitrary code" in message
        assert "safetensors" in message and "save_file" in message


# --- 3. a slide read by the second backend says which and why -----------------------------


@pytest.fixture
def truncated_svs(cmu_small: Path, tmp_path: Path) -> Path:
    path = tmp_path / "truncated.svs"
    path.write_bytes(cmu_small.read_bytes()[:TRUNCATED_LENGTH])
    return path


def test_a_slide_openslide_refuses_is_read_with_tiffslide_and_warned_once(
    truncated_svs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="wsi_ai"):
        for _ in range(2):  # opened twice (prepare, then run): one warning
            with open_slide(truncated_svs) as slide:
                assert slide.backend == "tiffslide"
                assert slide.fallback_reason == "Unsupported or missing image file"
                assert slide.read_region((0, 0), 0, (64, 64)).shape == (64, 64, 3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{truncated_svs}: read with tiffslide because OpenSlide refused it "
        "(Unsupported or missing image file); the file may be damaged"
    ]


@pytest.mark.parametrize(
    ("name", "backend", "refused"),
    [
        ("CMU-1-Small-Region.svs", "openslide", False),
        ("skin-he-striped.tif", "tiffslide", True),  # a format OpenSlide does not read
    ],
)
def test_slides_read_as_usual_are_not_warned_about(
    name: str, backend: str, refused: bool, caplog: pytest.LogCaptureFixture
) -> None:
    path = Path(__file__).resolve().parents[1] / "wsi_ai" / "data" / name
    with caplog.at_level(logging.WARNING, logger="wsi_ai"), open_slide(path) as slide:
        assert slide.backend == backend
        assert (slide.fallback_reason is not None) is refused
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_info_json_names_the_backend_and_why_the_other_refused(
    truncated_svs: Path, cmu_small: Path
) -> None:
    result = CliRunner().invoke(info, [str(truncated_svs), str(cmu_small), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["backend"], r["fallback_reason"]) for r in rows] == [
        ("tiffslide", "Unsupported or missing image file"),
        ("openslide", None),
    ]


# --- 4. a cluster of processes is quiet and opens no dashboard ----------------------------


def test_a_local_cluster_serves_no_dashboard() -> None:
    pytest.importorskip("distributed")
    from wsi_ai.engine.cluster import dask_client

    with dask_client("processes", None, 2, 0) as client:
        assert client.submit(sum, [1, 2]).result() == 3
        info = client.scheduler_info()
        assert info["services"] == {}  # no HTTP server on the scheduler
        assert [w["services"] for w in info["workers"].values()] == [{}, {}]  # nor the workers
        assert not client.cluster.dashboard_link


@pytest.mark.slow
def test_processes_scheduler_prints_no_dask_chatter(cmu_small: Path, tmp_path: Path) -> None:
    card = tiny_card(tmp_path, classes=False)
    code = "import sys; from wsi_ai.cli import main; sys.argv[0] = 'wsi-ai'; main()"
    args = ["embed", str(cmu_small), "--model", str(card), "--random-init", "--no-tissue"]
    args += ["-o", str(tmp_path / "out"), "--scheduler", "processes:2"]
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "CMU-1-Small-Region.zarr").is_dir()
    noisy = [
        line
        for line in result.stderr.splitlines()
        if "distributed" in line or "INFO" in line or line.startswith("info:") or "8787" in line
    ]
    assert noisy == []
