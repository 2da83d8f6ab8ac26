"""Progress bars for long loops: tqdm on a terminal, silent when output is redirected."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


def progress(iterable: Any = None, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)` that hides itself when stderr is not a terminal."""
    kwargs.setdefault("disable", None)  # None: disabled on a non-TTY
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)
