"""MIL aggregators (ABMIL, ViT) on random tensors: shapes, attention, invariances, masking,
the ViT's class-token read-out against a naive full-attention computation, O(N) memory."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from wsi_ai.nn import GatedABMIL, ViTMIL
from wsi_ai.nn.positions import sincos_2d
from wsi_ai.store.bags import grid_positions

DIM = 16


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread on a busy machine; restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def models() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [
        GatedABMIL(DIM, 3, width=32, attention_dim=16).eval(),
        ViTMIL(DIM, 3, width=32, depth=2, heads=4).eval(),
    ]


def bag(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=gen)
    positions = torch.randint(0, 30, (n, 2), generator=gen).float()
    return x, positions


@pytest.mark.parametrize("model", models(), ids=["abmil", "vit"])
def test_shapes_and_attention_sum_to_one(model: torch.nn.Module) -> None:
    x, pos = bag()
    out = model(x, pos)
    assert out.logits.shape == (3,)
    assert out.patch_logits.shape == (120, 3)
    assert out.attention.shape == (120,)
    assert torch.all(out.attention >= 0)
    assert float(out.attention.detach().sum()) == pytest.approx(1.0, abs=1e-5)
    batched = model(x[None], pos[None])
    assert batched.logits.shape == (1, 3)
    torch.testing.assert_close(batched.logits[0], out.logits)


@pytest.mark.parametrize("model", models(), ids=["abmil", "vit"])
def test_permuting_patches_with_positions_permutes_outputs(model: torch.nn.Module) -> None:
    x, pos = bag()
    perm = torch.randperm(120, generator=torch.Generator().manual_seed(3))
    out, shuffled = model(x, pos), model(x[perm], pos[perm])
    torch.testing.assert_close(shuffled.logits, out.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled.attention, out.attention[perm], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(shuffled.patch_logits, out.patch_logits[perm], atol=1e-5, rtol=1e-5)


def test_vit_uses_positions_and_abmil_ignores_them() -> None:
    abmil, vit = models()
    x, pos = bag()
    moved = pos.flip(0)  # same set of positions, assigned to other patches
    assert not torch.allclose(vit(x, pos).logits, vit(x, moved).logits, atol=1e-4)
    torch.testing.assert_close(abmil(x, pos).logits, abmil(x, moved).logits)
    # a translation of the whole slide changes nothing once positions are made relative
    boxes = np.c_[pos.numpy() * 224, np.full((120, 2), 224)]
    shifted = boxes + np.array([5000, 700, 0, 0])
    np.testing.assert_array_equal(grid_positions(boxes), grid_positions(shifted))


@pytest.mark.parametrize("model", models(), ids=["abmil", "vit"])
def test_masked_patches_change_nothing(model: torch.nn.Module) -> None:
    x, pos = bag(100)
    single = model(x, pos)
    xb = torch.randn(2, 130, DIM) * 10  # padding full of large junk
    pb = torch.randint(0, 30, (2, 130, 2)).float()
    xb[0, :100], pb[0, :100] = x, pos
    mask = torch.zeros(2, 130, dtype=torch.bool)
    mask[0, :100] = True
    mask[1, :] = True
    out = model(xb, pb, mask)
    torch.testing.assert_close(out.logits[0], single.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.attention[0, :100], single.attention, atol=1e-6, rtol=1e-4)
    assert torch.all(out.attention[0, 100:] == 0)
    assert float(out.attention[1].detach().sum()) == pytest.approx(1.0, abs=1e-5)


def test_abmil_slide_logits_are_attention_weighted_patch_logits() -> None:
    abmil, _ = models()
    x, _ = bag()
    out = abmil(x)
    torch.testing.assert_close(out.attention @ out.patch_logits, out.logits, atol=1e-5, rtol=1e-5)


def _naive_block(block: torch.nn.Module, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The block with an explicit T x T attention matrix; returns tokens and that matrix."""
    b, n, w = t.shape
    heads = block.heads
    q, k, v = block.qkv(block.norm1(t)).view(b, n, 3, heads, w // heads).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-1, -2) / (w // heads) ** 0.5, dim=-1)  # [B, H, T, T]
    mixed = (attn @ v).transpose(1, 2).reshape(b, n, w)
    t = t + block.proj(mixed)
    return t + block.mlp(block.norm2(t)), attn


def test_vit_class_token_attention_matches_naive_full_attention() -> None:
    _, vit = models()
    x, pos = bag(60)
    out = vit(x, pos)
    with torch.no_grad():
        code = vit.position_gain * sincos_2d(pos[None], vit.width)
        t = vit.proj(vit.input_norm(x[None])) + code
        t = torch.cat([vit.cls_token, t], dim=1)
        for block in vit.blocks:
            t, attn = _naive_block(block, t)
        logits = vit.head(vit.norm(t)[:, 0])[0]
    row = attn[0, :, 0, 1:].mean(0)  # class-token query, patch keys, mean over heads
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.attention, row / row.sum(), atol=1e-6, rtol=1e-4)


def test_vit_5000_tokens_never_builds_the_n_by_n_matrix() -> None:
    """Forward and backward in training mode; no single op kind allocates as much as half of
    one head's N x N float32 attention matrix (a naive version allocates several)."""
    n = 5000
    torch.manual_seed(0)
    vit = ViTMIL(DIM, 2, width=32, depth=1, heads=2).train()
    x, pos = torch.randn(n, DIM), torch.rand(n, 2) * 70
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = vit(x, pos)
        out.logits.sum().backward()
    biggest = max(e.self_cpu_memory_usage for e in prof.key_averages())
    assert out.attention.shape == (n,)
    assert biggest < n * n * 4 / 2, f"{biggest / 1e6:.0f} MB in one op kind"
    assert vit.proj.weight.grad is not None


def test_positions_are_grid_units_and_resolution_independent() -> None:
    cols, rows = np.meshgrid(np.arange(4), np.arange(3))
    boxes = np.c_[cols.ravel() * 224 + 100, rows.ravel() * 224 + 50, np.full((12, 2), 224)]
    grid = grid_positions(boxes)
    np.testing.assert_allclose(grid, np.c_[cols.ravel(), rows.ravel()])
    np.testing.assert_allclose(grid_positions(boxes * 2), grid)  # same grid at half the MPP
    codes = sincos_2d(torch.from_numpy(grid), 32)
    assert codes.shape == (12, 32)
    assert torch.all(codes.abs() <= 1)
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d(torch.from_numpy(grid), 30)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        grid_positions(boxes[:, :2])


def test_bad_shapes_are_rejected() -> None:
    abmil, vit = models()
    with pytest.raises(ValueError, match="embeddings"):
        abmil(torch.randn(DIM))
    with pytest.raises(ValueError, match="positions"):
        vit(torch.randn(10, DIM), torch.randn(9, 2))
    with pytest.raises(ValueError, match="divisible"):
        ViTMIL(DIM, 2, width=36, heads=8)
