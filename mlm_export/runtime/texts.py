"""Texts in: the checks every task's `encode`/`__call__` applies before tokenizing, so a bad input is
an `InputError` that names it, whichever task was asked."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any

from ..errors import InputError


def as_text_list(inputs: object) -> list[Any]:
    """A list of the texts in `inputs`; refuses what only looks iterable (bytes, mappings, numbers)."""
    if isinstance(inputs, (bytes, bytearray)):
        raise InputError("inputs are bytes, not a string; decode them first, e.g. text.decode('utf-8')")
    if isinstance(inputs, (list, tuple)):
        return list(inputs)
    if isinstance(inputs, Sequence) or (isinstance(inputs, Iterable) and not isinstance(inputs, (Mapping, Set))):
        try:
            return list(inputs)
        except TypeError as exc:  # e.g. a 0-d numpy array: iterable in type, not in fact
            raise InputError(f"inputs must be a string or a list of strings, got {type(inputs).__name__}") from exc
    raise InputError(f"inputs must be a string or a list of strings, got {type(inputs).__name__}")


def check_texts(texts: Sequence[object]) -> None:
    """Each text a non-empty, encodable string."""
    for i, text in enumerate(texts):
        if isinstance(text, (bytes, bytearray)):
            raise InputError(f"input {i} is bytes, not a string; decode it first, e.g. text.decode('utf-8')")
        if not isinstance(text, str):
            raise InputError(f"input {i} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise InputError(f"input {i} is empty")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(f"input {i} is not valid Unicode ({exc.reason} at character "
                             f"{exc.start}); it cannot be tokenized") from exc
