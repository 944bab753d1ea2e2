"""Model card commands: ``wsi-ai models list`` and ``wsi-ai models show NAME``."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table

from wsi_ai.cli.common import echo_json, error_line, json_option, run_each
from wsi_ai.errors import WsiAiError
from wsi_ai.nn.cards import ModelCard, card_files, find_card, load_card


@click.group()
def models() -> None:
    """Model cards: the backbones wsi-ai knows (models/*.toml or $WSI_AI_MODELS_DIR).

    Cards describe architectures; weights are local files that labs download from the
    publisher themselves. Nothing is ever downloaded.

    \b
    Example:
      wsi-ai models list
      wsi-ai models show virchow2 --json
    """


@models.command("list")
@json_option
def list_models(as_json: bool) -> None:
    """One row per card: name, architecture, embedding size, input size, MPP, weights format.

    A broken card is reported on one line (exit 1); the others are still listed.
    """
    try:
        files = card_files()
    except WsiAiError as err:
        error_line(str(err))
        raise SystemExit(1) from err
    cards: list[ModelCard] = []
    errors: list[dict[str, Any]] = []
    code = run_each(
        files,
        lambda path: cards.append(load_card(path)),
        on_error=lambda path, msg: errors.append({"path": str(path), "error": msg}),
    )
    if as_json:
        echo_json([_row(c) for c in cards] + errors)
    else:
        _print_table(cards)
    raise SystemExit(code)


@models.command("show")
@click.argument("name")
@json_option
def show(name: str, as_json: bool) -> None:
    """Every field of one card (by name, e.g. uni2-h, or a path to a .toml card).

    \b
    Example:
      wsi-ai models show uni
      wsi-ai models show ./my-card.toml --json
    """
    try:
        card = find_card(name)
    except WsiAiError as err:
        error_line(str(err))
        raise SystemExit(1) from err
    data = card.to_dict()
    if as_json:
        echo_json(data)
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v!r}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        elif value is None or value == "":
            value = "-"
        click.echo(f"{key:<{width}}  {value}")


def _row(card: ModelCard) -> dict[str, Any]:
    return {
        "name": card.name,
        "architecture": card.architecture,
        "embed_dim": card.embed_dim,
        "input_size": card.input_size,
        "mpp": card.mpp,
        "readout": card.readout,
        "weights_format": card.weights_format,
        "key_mapping": card.key_mapping,
        "path": None if card.path is None else str(card.path),
    }


def _print_table(cards: list[ModelCard]) -> None:
    if not cards:
        return
    table = Table(show_edge=False, header_style="bold")
    for column in ("name", "architecture", "embed dim", "input (px)", "MPP", "readout", "weights"):
        table.add_column(column, no_wrap=True)
    for card in cards:
        weights = card.weights_format
        if card.key_mapping != "timm":
            weights += f" ({card.key_mapping})"
        table.add_row(
            card.name,
            card.architecture,
            str(card.embed_dim),
            str(card.input_size),
            f"{card.mpp:g}",
            card.readout,
            weights,
        )
    Console(width=160).print(table)


__all__ = ["models"]
