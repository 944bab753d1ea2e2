"""Decode a JSON document one top-level piece at a time, so that a 50 MB GeoJSON export never
becomes one tree of Python objects (``json.loads`` of such a file takes ~10x its size).

:func:`read_top` uses the standard library's decoder for every value (the grammar of
``json.loads``: ``NaN``/``Infinity`` tokens accepted, as QuPath's lenient Gson does; the last of
duplicate keys wins) but hands the elements of a top-level array, and of a top-level object's
``"features"`` array, one at a time to a callback, which converts each and lets it go. Other
members are decoded whole. Syntax errors are :class:`json.JSONDecodeError` with the position in
the whole document, as ``json.loads`` gives them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
STREAMED = "features"
"""The member of a top-level object whose array elements are streamed."""


@dataclass
class TopLevel:
    """What the document is: ``"array"`` (elements streamed), ``"object"`` (``members`` holds
    every member but a streamed ``"features"`` array) or ``"scalar"`` (``value``)."""

    kind: str
    members: dict[str, Any] = field(default_factory=dict)
    streamed: bool = False  # a "features" array was streamed to the callback
    value: Any = None


def _skip(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return pos if match is None else match.end()


def _error(message: str, text: str, pos: int) -> json.JSONDecodeError:
    return json.JSONDecodeError(message, text, pos)


def _array(text: str, pos: int, each: Callable[[int, Any], None]) -> int:
    """Decode the array starting at ``text[pos] == "["``, element by element; the index after."""
    pos = _skip(text, pos + 1)
    if text.startswith("]", pos):
        return pos + 1
    index = 0
    while True:
        value, pos = _DECODER.raw_decode(text, pos)
        each(index, value)
        del value  # converted: let it go before the next one is decoded
        index += 1
        pos = _skip(text, pos)
        if text.startswith(",", pos):
            pos = _skip(text, pos + 1)
        elif text.startswith("]", pos):
            return pos + 1
        else:
            raise _error("Expecting ',' delimiter", text, pos)


def _object(
    text: str, pos: int, top: TopLevel, on_feature: Callable[[int, Any, dict[str, Any]], None]
) -> int:
    """Decode the object at ``text[pos] == "{"`` into ``top.members``, streaming "features"."""
    pos = _skip(text, pos + 1)
    if text.startswith("}", pos):
        return pos + 1
    while True:
        if not text.startswith('"', pos):
            raise _error("Expecting property name enclosed in double quotes", text, pos)
        key, pos = _DECODER.raw_decode(text, pos)
        pos = _skip(text, pos)
        if not text.startswith(":", pos):
            raise _error("Expecting ':' delimiter", text, pos)
        pos = _skip(text, pos + 1)
        if key == STREAMED and (top.streamed or STREAMED in top.members):
            raise _error(f"the member {STREAMED!r} appears twice", text, pos)
        if key == STREAMED and text.startswith("[", pos):
            top.streamed = True
            pos = _array(text, pos, lambda i, value: on_feature(i, value, top.members))
        else:
            top.members[key], pos = _DECODER.raw_decode(text, pos)
        pos = _skip(text, pos)
        if text.startswith(",", pos):
            pos = _skip(text, pos + 1)
        elif text.startswith("}", pos):
            return pos + 1
        else:
            raise _error("Expecting ',' delimiter", text, pos)


def read_top(
    text: str,
    on_element: Callable[[int, Any], None],
    on_feature: Callable[[int, Any, dict[str, Any]], None],
) -> TopLevel:
    """Decode ``text``: each element of a top-level array goes to ``on_element(index, value)``,
    each element of a top-level object's "features" array to ``on_feature(index, value,
    members so far)``; the rest is returned. Raises :class:`json.JSONDecodeError` (and
    RecursionError for absurdly deep nesting, as ``json.loads`` does)."""
    pos = _skip(text, 0)
    if text.startswith("[", pos):
        top = TopLevel("array")
        pos = _array(text, pos, on_element)
    elif text.startswith("{", pos):
        top = TopLevel("object")
        pos = _object(text, pos, top, on_feature)
    else:
        value, pos = _DECODER.raw_decode(text, pos)
        top = TopLevel("scalar", value=value)
    pos = _skip(text, pos)
    if pos != len(text):
        raise _error("Extra data", text, pos)
    return top
