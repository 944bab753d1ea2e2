"""Model cards and backbones from local weights: every card, its weights, its errors.

Each card's architecture is built with random weights, saved in the card's format (for
Phikon-v2 in Hugging Face's Dinov2 layout, by the inverse of the loader's mapping),
loaded back through the card and must give identical embeddings. The 1.1 B-parameter
giants are checked on the meta device against the shapes their publishers describe.
Heavy tests hold a file lock, so they never run at the same time as each other, even
from parallel pytest processes.
"""

from __future__ import annotations

import gc
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from tests.tiny_model import tiny_card
from wsi_ai.cli.model_cmds import models
from wsi_ai.errors import ModelError
from wsi_ai.nn.backbone import build_backbone, create_architecture, normalisation
from wsi_ai.nn.cards import canonical_hash, find_card, list_cards, load_card
from wsi_ai.nn.weights import compare_state_dict, load_weights

ALL_CARDS = {
    "resnet18",
    "resnet50",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "uni",
    "uni2-h",
    "virchow2",
    "prov-gigapath",
    "h-optimus-0",
    "phikon-v2",
}
SMALL = ["resnet18", "resnet50", "vit_small_patch16_224", "vit_base_patch16_224"]
MEDIUM = ["uni", "phikon-v2", "virchow2", "uni2-h"]  # 0.3-0.7 B parameters

# --- helpers ---------------------------------------------------------------------------


@pytest.fixture
def heavy() -> Iterator[None]:
    """Run one heavy test at a time (across processes), and free its memory afterwards."""
    lock_path = Path(tempfile.gettempdir()) / "wsi-ai-heavy-model-tests.lock"
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            gc.collect()
            fcntl.flock(lock, fcntl.LOCK_UN)


_TIMM_TO_HF_TOP = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_TIMM_TO_HF_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def timm_to_hf_dinov2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of the loader's mapping: write a timm ViT as a transformers Dinov2Model."""
    dim = state["cls_token"].shape[-1]
    out = {"embeddings.mask_token": torch.zeros(1, dim)}
    for key, value in state.items():
        if key in _TIMM_TO_HF_TOP:
            out[_TIMM_TO_HF_TOP[key]] = value.clone()
            continue
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias|gamma)", key)
        assert match is not None, key
        index, module, kind = match.groups()
        prefix = f"encoder.layer.{index}."
        if module == "attn.qkv":
            for name, piece in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                out[f"{prefix}attention.attention.{name}.{kind}"] = piece.clone()
        elif module in ("ls1", "ls2"):
            out[f"{prefix}layer_scale{module[-1]}.lambda1"] = value.clone()
        else:
            out[f"{prefix}{_TIMM_TO_HF_BLOCK[module]}.{kind}"] = value.clone()
    return out


def save_for_card(card_name: str, state: dict[str, torch.Tensor], folder: Path) -> Path:
    """Write a timm state dict in the card's weights format and key layout."""
    card = find_card(card_name)
    if card.key_mapping == "hf_dinov2":
        state = timm_to_hf_dinov2(state)
    if card.weights_format == "safetensors":
        path = folder / f"{card.name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = folder / f"{card.name}.bin"
        torch.save(state, path)
    return path


def sample_images(card_name: str) -> torch.Tensor:
    """A small input: 4x4 patches where the card allows any size, else the card's size."""
    card = find_card(card_name)
    generator = torch.Generator().manual_seed(1)
    if card.kwargs.get("dynamic_img_size"):
        side = 4 * int(card.kwargs.get("patch_size", 14))
        return torch.randn(2, 3, side, side, generator=generator)
    batch = 2 if card_name in SMALL else 1
    return torch.randn(batch, 3, card.input_size, card.input_size, generator=generator)


# --- cards -----------------------------------------------------------------------------


def test_every_card_parses_and_its_kwargs_resolve() -> None:
    import timm

    cards = {card.name: card for card in list_cards()}
    assert set(cards) == ALL_CARDS
    for card in cards.values():
        assert timm.is_model(card.architecture), card.name
        kwargs = card.timm_kwargs()
        assert kwargs["num_classes"] == 0
        for key in card.kwargs_classes:
            assert callable(kwargs[key]), (card.name, key)
        assert card.input_size == 224 and card.mpp == 0.5
        assert re.fullmatch(r"[0-9a-f]{64}", card.card_hash)
        assert card.sha256 is None  # no publisher checksum is known for any public card
        assert card.path is not None and card.path.stem == card.name
    from timm.layers import SwiGLUPacked

    for name in ("uni2-h", "virchow2", "prov-gigapath", "h-optimus-0"):
        kwargs = cards[name].timm_kwargs()
        assert kwargs["mlp_layer"] is SwiGLUPacked and kwargs["act_layer"] is torch.nn.SiLU
    assert cards["h-optimus-0"].mean == (0.707223, 0.578729, 0.703617)
    assert cards["h-optimus-0"].std == (0.211883, 0.230117, 0.177517)
    assert cards["virchow2"].readout == "cls+mean_patch" and cards["virchow2"].embed_dim == 2560
    assert cards["phikon-v2"].key_mapping == "hf_dinov2"


def test_card_hash_ignores_comments_and_layout(tmp_path: Path) -> None:
    original = find_card("uni")
    assert original.path is not None
    text = original.path.read_text()
    reformatted = tmp_path / "uni.toml"
    reformatted.write_text("# another comment\n" + text.replace(" = ", "   =   "))
    assert load_card(reformatted).card_hash == original.card_hash
    changed = tmp_path / "uni-changed.toml"
    changed.write_text(text.replace("mpp = 0.5", "mpp = 0.25"))
    assert load_card(changed).card_hash != original.card_hash
    assert canonical_hash({"b": 1, "a": [1, 2]}) == canonical_hash({"a": [1, 2], "b": 1})


def test_find_card_by_name_path_and_folder(tmp_path: Path, monkeypatch) -> None:
    assert find_card("UNI2-h").name == "uni2-h"
    uni = find_card("uni")
    assert uni.path is not None
    assert find_card(str(uni.path)) == uni
    with pytest.raises(ModelError, match=r"no model card named 'nope'.*known: .*virchow2"):
        find_card("nope")
    card_path = tiny_card(tmp_path)
    monkeypatch.setenv("WSI_AI_MODELS_DIR", str(tmp_path))
    assert [c.name for c in list_cards()] == ["tiny"]
    assert find_card("tiny").path == card_path.resolve()
    monkeypatch.setenv("WSI_AI_MODELS_DIR", str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="WSI_AI_MODELS_DIR"):
        list_cards()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("readout", '"cls"', '"mean"'), "readout must be one of"),
        (("architecture", '"vit_tiny_patch16_224"', '"hf-hub:org/model"'), "would download"),
        (("mean", "mean = [0.5, 0.5, 0.5]", "mean = [0.5, 0.5]"), "mean must be three"),
        (("std", "std = [0.5, 0.5, 0.5]", "std = [0.5, 0.0, 0.5]"), "std must be positive"),
        (("input_size", "input_size = 32", "input_size = -1"), "input_size must be a positive"),
        (("name", 'name = "tiny"', 'nmae = "tiny"'), "unknown field"),
        (("key_mapping", '"timm"', '"keras"'), "key_mapping must be one of"),
    ],
)
def test_invalid_cards_are_model_errors(tmp_path: Path, edit, message: str) -> None:
    path = tiny_card(tmp_path)
    _, old, new = edit
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(ModelError, match=message) as info:
        load_card(path)
    assert path.name in str(info.value) and "\n" not in str(info.value)


def test_card_classes_only_from_timm_or_torch_nn(tmp_path: Path) -> None:
    path = tiny_card(tmp_path)
    path.write_text(path.read_text() + '\n[kwargs_classes]\nact_layer = "os.system"\n')
    with pytest.raises(ModelError, match="not allowed"):
        load_card(path).timm_kwargs()
    path.write_text(path.read_text().replace("os.system", "torch.nn.NoSuchLayer"))
    with pytest.raises(ModelError, match="cannot import"):
        load_card(path).timm_kwargs()
    path.write_text(tiny_card(tmp_path).read_text() + 'sha256 = "00"\n')
    with pytest.raises(ModelError, match=r"sha256 is inside \[kwargs\]"):
        load_card(path)
    path.write_text("not = [valid")
    with pytest.raises(ModelError, match="not valid TOML"):
        load_card(path)


def test_normalisation_tensors() -> None:
    mean, std = normalisation(find_card("h-optimus-0"))
    assert mean.shape == std.shape == (1, 3, 1, 1)
    assert torch.allclose(mean.flatten(), torch.tensor([0.707223, 0.578729, 0.703617]))
    assert torch.allclose(std.flatten(), torch.tensor([0.211883, 0.230117, 0.177517]))


# --- every card: random weights -> card's format -> loaded back ------------------------


def _round_trip(name: str, folder: Path) -> None:
    card = find_card(name)
    backbone = build_backbone(card, random_init=True, seed=0)
    assert backbone.random_init and backbone.provenance()["random_init"] is True
    images = sample_images(name)
    with torch.inference_mode():
        expected = backbone(images)
        if card.readout == "cls+mean_patch":  # Virchow2: class token + mean of patch tokens
            tokens = backbone.model.forward_features(images)
            joined = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=1)
            assert torch.equal(expected, joined)
    assert expected.shape == (images.shape[0], card.embed_dim)
    assert torch.isfinite(expected).all()
    state = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    path = save_for_card(name, state, folder)
    del backbone
    gc.collect()

    loaded = build_backbone(card, path)
    assert loaded.random_init is False
    assert loaded.provenance()["weights"] == str(path)
    assert loaded.report is not None and loaded.report.ok
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    del state
    with torch.inference_mode():
        got = loaded(images)
    assert torch.equal(got, expected)
    del loaded
    gc.collect()


@pytest.mark.parametrize("name", SMALL)
def test_small_cards_round_trip(name: str, tmp_path: Path, heavy: None) -> None:
    _round_trip(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", MEDIUM)
def test_medium_cards_round_trip(name: str, tmp_path: Path, heavy: None) -> None:
    _round_trip(name, tmp_path)


# --- shapes the publishers describe, checked on the meta device ------------------------


def vit_shapes(
    dim: int, depth: int, patch: int, positions: int, hidden: int, *, registers: int, swiglu: bool
) -> dict[str, tuple[int, ...]]:
    """Every tensor of a timm ViT with LayerScale, from its published hyper-parameters."""
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, positions, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    if registers:
        shapes["reg_token"] = (1, registers, dim)
    for i in range(depth):
        b = f"blocks.{i}."
        for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"):
            shapes[b + name] = (dim,)
        shapes[b + "attn.qkv.weight"] = (3 * dim, dim)
        shapes[b + "attn.qkv.bias"] = (3 * dim,)
        shapes[b + "attn.proj.weight"] = (dim, dim)
        shapes[b + "attn.proj.bias"] = (dim,)
        shapes[b + "ls1.gamma"] = (dim,)
        shapes[b + "ls2.gamma"] = (dim,)
        shapes[b + "mlp.fc1.weight"] = (hidden, dim)
        shapes[b + "mlp.fc1.bias"] = (hidden,)
        shapes[b + "mlp.fc2.weight"] = (dim, hidden // 2 if swiglu else hidden)
        shapes[b + "mlp.fc2.bias"] = (dim,)
    return shapes


PUBLISHED = {
    # name: (dim, depth, patch, positions, MLP fc1 width, registers, SwiGLU, params in M)
    "prov-gigapath": (1536, 40, 16, 197, 8192, 0, True, 1135.0),
    "h-optimus-0": (1536, 40, 14, 256, 8192, 4, True, 1134.8),
    "uni": (1024, 24, 16, 197, 4096, 0, False, 303.4),
    "phikon-v2": (1024, 24, 16, 197, 4096, 0, False, 303.4),
    "uni2-h": (1536, 24, 14, 256, 8192, 8, True, 681.4),
    "virchow2": (1280, 32, 14, 261, 6832, 4, True, 631.2),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_architecture_matches_the_published_shapes(name: str) -> None:
    dim, depth, patch, positions, hidden, registers, swiglu, millions = PUBLISHED[name]
    card = find_card(name)
    model = create_architecture(card, device="meta")
    shapes = vit_shapes(dim, depth, patch, positions, hidden, registers=registers, swiglu=swiglu)
    fake = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    report = compare_state_dict(model, fake)
    assert report.ok, report.summary()
    params = sum(p.numel() for p in model.parameters())
    assert params == sum(torch.Size(s).numel() for s in shapes.values())
    assert params / 1e6 == pytest.approx(millions, abs=0.1)
    if name in ("prov-gigapath", "h-optimus-0"):
        assert 1.1e9 < params < 1.2e9


def test_giant_is_loaded_in_place_on_meta_device(tmp_path: Path) -> None:
    """A meta-built network takes the file's tensors without allocating its own."""
    card_path = tiny_card(tmp_path)
    card = load_card(card_path)
    source = create_architecture(card)
    weights = tmp_path / "w.safetensors"
    save_file(dict(source.state_dict()), str(weights))
    model = create_architecture(card, device="meta")
    report = load_weights(model, card, weights)
    assert report.ok and report.format == "safetensors" and report.n_tensors == 34
    assert not any(p.is_meta for p in model.parameters())
    assert torch.equal(model.state_dict()["pos_embed"], source.state_dict()["pos_embed"])


def test_models_list_json() -> None:
    result = CliRunner().invoke(models, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == ALL_CARDS
    assert rows["virchow2"]["embed_dim"] == 2560
    assert rows["phikon-v2"]["key_mapping"] == "hf_dinov2"
    assert rows["h-optimus-0"]["weights_format"] == "safetensors"


def test_models_list_reports_a_broken_card_and_lists_the_rest(tmp_path: Path, monkeypatch) -> None:
    tiny_card(tmp_path)
    (tmp_path / "broken.toml").write_text('name = "broken"\n')
    monkeypatch.setenv("WSI_AI_MODELS_DIR", str(tmp_path))
    result = CliRunner().invoke(models, ["list"])
    assert result.exit_code == 1
    assert "tiny" in result.stdout
    assert "broken.toml: invalid model card: missing field(s)" in result.stderr


def test_models_show() -> None:
    result = CliRunner().invoke(models, ["show", "virchow2"])
    assert result.exit_code == 0, result.output
    assert re.search(r"readout\s+cls\+mean_patch", result.output)
    assert re.search(r"embed_dim\s+2560", result.output)
    assert "timm.layers.SwiGLUPacked" in result.output
    result = CliRunner().invoke(models, ["show", "virchow2", "--json"])
    data = json.loads(result.stdout)
    assert (
        data["kwargs"]["reg_tokens"] == 4 and data["card_hash"] == find_card("virchow2").card_hash
    )
    result = CliRunner().invoke(models, ["show", "nope"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no model card named 'nope'")
    assert result.stderr.count("\n") == 1
