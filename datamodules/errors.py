"""The data modules' one error type, and downloads that fail in one line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class DataError(ValueError):
    """The data on disk cannot be used as configured."""


@contextmanager
def downloading(what: str, folder: str, instead: str) -> Iterator[None]:
    """torchvision's downloads raise URLError / RuntimeError / OSError with long messages: one line, and what to do."""
    try:
        yield
    except Exception as err:  # noqa: BLE001  (every download failure means the same to the user)
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise DataError(f"Cannot download {what} into '{folder}' ({reason}): no network? {instead}.") from None
