"""A 2-block ViT model card, for fast card and weight-loading tests."""

from __future__ import annotations

from pathlib import Path

TINY_CARD = """
name = "tiny"
architecture = "vit_tiny_patch16_224"
input_size = 32
mpp = 0.5
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
readout = "{readout}"
embed_dim = {embed_dim}
weights_format = "safetensors"
key_mapping = "{mapping}"

[kwargs]
img_size = 32
depth = 2
init_values = 1e-5
reg_tokens = {reg}
num_classes = 0
"""


def tiny_card(
    folder: Path, readout: str = "cls", mapping: str = "timm", reg: int = 0, embed_dim: int = 192
) -> Path:
    path = folder / f"tiny-{readout.replace('+', '-')}-{mapping}.toml"
    text = TINY_CARD.format(readout=readout, mapping=mapping, reg=reg, embed_dim=embed_dim)
    path.write_text(text)
    return path
