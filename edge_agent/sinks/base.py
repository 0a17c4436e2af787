"""The sink contract: what a sink package exports as `PLUGIN`; edge_agent/sinks/registry.py lists the packages."""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.config_model import Model


@dataclass(frozen=True, slots=True)
class SinkPlugin:
    """What a sink package exports as `PLUGIN`: its config model and how the agent builds and feeds the sink."""

    name: str
    """The `[sinks.<name>]` key; also the outbox file's name and the `sink` label of the metrics."""
    config_model: type[Model]
    """The pydantic model of its `[sinks.<name>]` table."""
    paths: tuple[str, ...] = ()
    """Dotted fields of the model holding file paths, which the loader makes relative to the config file."""
    sections: tuple[tuple[str, type[Model]], ...] = ()
    """(TOML header, model) of its config sections, in reading order, for docs/configuration.md."""
