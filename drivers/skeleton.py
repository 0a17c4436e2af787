"""What the drivers' discovery shares to write a config skeleton: TOML strings, the device header, a progress spinner."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress


def toml_string(s: str) -> str:
    """`s` as a TOML basic string."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def device_header(name: str, protocol: str, profile: str, endpoint: str) -> list[str]:
    """The `[[devices]]` lines every skeleton starts its device with."""
    return [
        "[[devices]]",
        f"name = {toml_string(name)}",
        f'protocol = "{protocol}"',
        f"profile = {toml_string(profile)}",
        f"endpoint = {toml_string(endpoint)}",
    ]


def progress() -> Progress:
    """A spinner on stderr (a terminal only) that disappears when done, so stdout carries only the skeleton."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        transient=True,
        console=console,
        disable=not console.is_terminal,  # in a log or a pipe it would leave an empty line
    )
