"""Weights that do not match their card: sha256, missing/unexpected/mis-shaped keys,
wrappers, precisions, the HF Dinov2 layout, readouts, random init. Uses a 2-block ViT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.test_model_cards import timm_to_hf_dinov2
from tests.tiny_model import tiny_card
from wsi_ai.errors import ModelError
from wsi_ai.nn.backbone import build_backbone, create_architecture
from wsi_ai.nn.cards import load_card
from wsi_ai.nn.weights import file_sha256


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """A 2-block ViT card, its random weights as safetensors, and those weights."""
    card_path = tiny_card(tmp_path)
    model = create_architecture(load_card(card_path))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    weights = tmp_path / "tiny.safetensors"
    save_file(state, str(weights))
    return card_path, weights, state


# --- weights that do not match ---------------------------------------------------------


def test_sha256_checked(tiny) -> None:
    card_path, weights, _ = tiny
    card = load_card(card_path)
    good = file_sha256(weights)
    backbone = build_backbone(card, weights, sha256=good.upper())
    assert backbone.report is not None and backbone.report.sha256 == good
    assert backbone.provenance()["weights_sha256"] == good
    with pytest.raises(ModelError, match="sha256 mismatch") as info:
        build_backbone(card, weights, sha256="0" * 64)
    assert str(weights) in str(info.value) and good in str(info.value)
    pinned = card_path.with_name("pinned.toml")
    pinned.write_text(f'sha256 = "{"1" * 64}"\n' + card_path.read_text())
    with pytest.raises(ModelError, match="card 'tiny' expects 1111"):
        build_backbone(load_card(pinned), weights)


def _load_state(tmp_path: Path, card_path: Path, state: dict[str, torch.Tensor]) -> ModelError:
    path = tmp_path / "edited.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(ModelError) as info:
        build_backbone(load_card(card_path), path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    return info.value


def test_missing_key_reported(tmp_path: Path, tiny) -> None:
    card_path, _, state = tiny
    del state["blocks.1.attn.qkv.weight"]
    err = _load_state(tmp_path, card_path, state)
    assert "1 missing (blocks.1.attn.qkv.weight)" in str(err)


def test_unexpected_key_reported(tmp_path: Path, tiny) -> None:
    card_path, _, state = tiny
    state["head.weight"] = torch.zeros(10, 192)
    err = _load_state(tmp_path, card_path, state)
    assert "1 unexpected (head.weight)" in str(err)


def test_shape_mismatch_reported(tmp_path: Path, tiny) -> None:
    card_path, _, state = tiny
    state["pos_embed"] = torch.zeros(1, 197, 192)
    err = _load_state(tmp_path, card_path, state)
    assert "1 shape mismatch (pos_embed: file 1x197x192 vs model 1x5x192)" in str(err)


def test_many_missing_keys_are_counted_and_five_shown(tmp_path: Path, tiny) -> None:
    card_path, _, state = tiny
    kept = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
    err = _load_state(tmp_path, card_path, kept)
    assert "14 missing (blocks.1." in str(err) and "... 9 more" in str(err)


def test_wrappers_and_module_prefix_are_unwrapped(tmp_path: Path, tiny) -> None:
    card_path, _, state = tiny
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in state.items()}}, path)
    backbone = build_backbone(load_card(card_path), path)
    assert backbone.report is not None and backbone.report.format == "torch"
    assert torch.equal(backbone.model.state_dict()["cls_token"], state["cls_token"])


def test_half_precision_and_legacy_torch_files(tmp_path: Path, tiny) -> None:
    card_path, _, state = tiny
    card = load_card(card_path)
    half = tmp_path / "half.safetensors"
    save_file({k: v.half() for k, v in state.items()}, str(half))
    model = build_backbone(card, half).model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.state_dict()["cls_token"], state["cls_token"].half().float())
    legacy = tmp_path / "legacy.pt"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    model = build_backbone(card, legacy).model
    assert torch.equal(model.state_dict()["pos_embed"], state["pos_embed"])


def test_unreadable_and_missing_files(tmp_path: Path, tiny) -> None:
    card = load_card(tiny[0])
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(1000))
    with pytest.raises(ModelError, match="cannot read weights"):
        build_backbone(card, junk)
    with pytest.raises(ModelError, match="not found"):
        build_backbone(card, tmp_path / "absent.safetensors")
    with pytest.raises(ModelError, match="--random-init"):
        build_backbone(card)
    with pytest.raises(ModelError, match="not both"):
        build_backbone(card, tiny[1], random_init=True)


def test_hf_dinov2_layout_loads_and_broken_qkv_is_reported(tmp_path: Path, tiny) -> None:
    _, _, state = tiny
    card_path = tiny_card(tmp_path, mapping="hf_dinov2")
    card = load_card(card_path)
    hf = timm_to_hf_dinov2(state)
    path = tmp_path / "hf.safetensors"
    save_file({f"dinov2.{k}": v for k, v in hf.items()}, str(path))  # prefix is stripped
    backbone = build_backbone(card, path)
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    del hf["encoder.layer.0.attention.attention.key.weight"]
    save_file(hf, str(path))
    with pytest.raises(ModelError, match=r"1 missing \(blocks\.0\.attn\.qkv\.weight\)"):
        build_backbone(card, path)


def test_readout_and_embed_dim_are_checked(tmp_path: Path) -> None:
    wrong = load_card(tiny_card(tmp_path, embed_dim=100))
    with pytest.raises(ModelError, match="embed_dim is 100 but readout 'cls'"):
        build_backbone(wrong, random_init=True)
    card = load_card(tiny_card(tmp_path, readout="cls+mean_patch", reg=2, embed_dim=384))
    backbone = build_backbone(card, random_init=True, seed=3)
    assert backbone.num_prefix_tokens == 3
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        out = backbone(images)
        tokens = backbone.model.forward_features(images)
    assert out.shape == (2, 384)
    assert torch.equal(out[:, 192:], tokens[:, 3:].mean(1))


def test_random_init_is_seeded_and_flagged(tmp_path: Path) -> None:
    card = load_card(tiny_card(tmp_path))
    a = build_backbone(card, random_init=True, seed=1).model.state_dict()
    b = build_backbone(card, random_init=True, seed=1).model.state_dict()
    c = build_backbone(card, random_init=True, seed=2).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])
    assert all(torch.isfinite(v).all() for v in a.values())


# --- command line ----------------------------------------------------------------------
