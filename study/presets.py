"""Study presets: the YAML specs shipped in the ``search_spaces`` package."""

from __future__ import annotations

from importlib import resources


def names() -> list[str]:
    """Names of the shipped presets, sorted.

    Returns:
        Preset names (file names without ``.yaml``).
    """
    root = resources.files("search_spaces")
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def read_text(name: str) -> str:
    """The YAML text of a preset.

    Args:
        name: a preset name from :func:`names`.

    Returns:
        The spec document.

    Raises:
        KeyError: no preset of that name.
    """
    if name not in names():
        raise KeyError(name)
    return (resources.files("search_spaces") / f"{name}.yaml").read_text()
