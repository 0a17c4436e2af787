"""The sink contract: what a sink package exports as `PLUGIN`; edge_agent/sinks/registry.py lists the packages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge_agent.config_model import Model
from edge_agent.records import Record, StatusData
from edge_agent.sinks.delivery import Sink


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What the agent gives every sink it builds, besides the sink's own config section."""

    agent_name: str
    """`agent.name` (e.g. for a client id)."""
    outbox_dir: Path
    """`outbox.dir`, where the outboxes are (a sink's own files may default to it)."""
    online: StatusData
    """The agent's online status, numbered in its sequence, for sinks that announce it when they connect."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """How the delivery loop feeds a sink (see DeliveryLoop)."""

    batch_records: int = 1000
    """Records per take from the outbox."""
    batch_values: int | None = None
    """Values to fill a batch up to, waiting at most `linger` seconds for more (None: what one take gives)."""
    linger: float = 0.0
    in_flight: int = 2
    """Batches sent without waiting for the earlier ones to be acknowledged."""


class RunningSink(Sink, Protocol):
    """A sink as the sink set runs it: the delivery loop's `send`, plus a start and a stop.

    `send` gets outbox records and encodes them itself: packed records (edge_agent.records) and, from
    outboxes written before that format, rows already in the sink's own encoding. It may also have
    `wait_ready` (see Sink), `connected` (bool, exported as a metric) and `restarts` (int).
    """

    async def start(self) -> None:
        """Connect or prepare; raise SinkConfigError for what a person must fix, never for an outage."""

    async def stop(self) -> None:
        """Disconnect and release; the agent's final status is already in the outbox."""


@dataclass(frozen=True, slots=True)
class SinkPlugin:
    """What a sink package exports as `PLUGIN`: its config model and how the agent builds and feeds the sink."""

    name: str
    """The `[sinks.<name>]` key; also the outbox file's name and the `sink` label of the metrics."""
    config_model: type[Model]
    """The pydantic model of its `[sinks.<name>]` table."""
    open: Callable[[Model, SinkContext], RunningSink]
    """Builds the sink from its config section; imports the sink's client library only when called."""
    delivery: Callable[[Model], Delivery]
    """How the delivery loop feeds it, from its config section."""
    paths: tuple[str, ...] = ()
    """Dotted fields of the model holding file paths, which the loader makes relative to the config file."""
    sections: tuple[tuple[str, type[Model]], ...] = ()
    """(TOML header, model) of its config sections, in reading order, for docs/configuration.md."""
    preview: Callable[[Model | None, Sequence[Record]], list[Record]] | None = None
    """How `edge-agent run --once` shows records (key, payload) with this sink's encoding (None: it cannot);
    gets the sink's config section, or None when the sink is not configured."""
