"""Load and validate the agent's TOML configuration; the field docstrings are the reference documentation."""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    create_model,
    field_validator,
)

from edge_agent.config_model import (
    ConfigError,
    DeviceBase,
    Model,
    Name,
    Seconds,
    check_unique,
    describe,
    loads_toml,
    read_text,
)
from edge_agent.drivers.registry import DRIVERS, Device
from edge_agent.log_config import LEVELS as LOG_LEVELS
from edge_agent.log_config import level_name
from edge_agent.sinks.registry import SINKS
from edge_agent.web.config import WebConfig

if TYPE_CHECKING:
    from edge_agent.profiles import Profile

__all__ = [
    "Config",
    "ConfigError",
    "Device",
    "config_warnings",
    "json_schema",
    "load_config",
    "parse_config",
    "profile_dirs",
]

#: Where the built-in equipment profiles ship: package data (config/profiles in the sources). Wheels install
#: unzipped, so this is a real folder, which messages can name.
BUILTIN_PROFILES_DIR = Path(str(resources.files("edge_agent") / "builtin" / "profiles"))

#: The device models by `protocol`, for error messages.
DEVICE_MODELS = {name: plugin.device_model for name, plugin in DRIVERS.items()}


class SiteConfig(Model):
    """Where this agent sits in the ISA-95 hierarchy; used for MQTT topics and InfluxDB tags."""

    enterprise: Name = "acme"
    """Top of the unified namespace (first topic level after the prefix is `site`)."""
    site: Name = "plant1"
    """Factory or plant name."""
    area: Name = "area1"
    """Default area (shop) of the devices; a device may override it."""
    line: Name = "line1"
    """Default line or cell of the devices; a device may override it."""


# --------------------------------------------------------------------------- sinks and outbox


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n")[0]


if TYPE_CHECKING:

    class Sinks(Model):
        """The outputs; each has its own outbox and delivery loop."""

        def __getattr__(self, name: str) -> Any: ...

else:
    #: `[sinks]`: one optional table per registered sink, `[sinks.<name>]`, in registry order.
    Sinks = create_model(
        "Sinks",
        __base__=Model,
        __doc__="The outputs; each has its own outbox and delivery loop.",
        **{
            name: (
                plugin.config_model | None,
                Field(default=None, description=_first_line(plugin.config_model.__doc__)),
            )
            for name, plugin in SINKS.items()
        },
    )


def configured_sinks(sinks: Sinks) -> dict[str, Model]:
    """The configured sinks' config sections by sink name, in registry order."""
    return {name: section for name in SINKS if (section := getattr(sinks, name)) is not None}


class OutboxConfig(Model):
    """Disk store-and-forward shared settings (one outbox file per sink)."""

    dir: Path = Path("var/outbox")
    """Folder of the outbox files (relative paths are relative to the config file)."""
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    """Cap on disk per sink, in bytes."""
    when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    """What to drop when the cap is reached."""
    keep_priority: bool = True
    """When dropping, drop raw samples before indicators and alarms."""
    sync: Literal["full", "normal"] = "full"
    """full: fsync every batch (nothing acknowledged is lost on power loss); normal: faster, loses the last batch."""


#: A log level name; any case is accepted and kept upper case.
LogLevel = Annotated[
    str,
    BeforeValidator(level_name),
    WithJsonSchema({"type": "string", "enum": [*LOG_LEVELS, *(n.lower() for n in LOG_LEVELS)]}),
]
_HOST = re.compile(r"\[?[0-9A-Fa-f:.]+\]?|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def _listen_host(value: object) -> object:
    if isinstance(value, str) and not _HOST.fullmatch(value):
        raise ValueError(
            "give an IP address or a host name, without scheme or port (e.g. 127.0.0.1 or 0.0.0.0)"
        )
    return value


def _logger_name(value: object) -> object:
    if isinstance(value, str) and (not value or any(c.isspace() or c == "=" for c in value)):
        raise ValueError("a logger name is a dotted name like edge_agent.drivers.opcua (no spaces)")
    return value


#: A logger name as Python's logging knows it (dotted, e.g. `edge_agent.drivers.opcua`).
LoggerName = Annotated[str, BeforeValidator(_logger_name)]
#: An address to listen on: an IP address or a host name (no scheme, no port).
Host = Annotated[str, BeforeValidator(_listen_host)]


class AgentConfig(Model):
    """Process-level settings of the agent."""

    name: Name = "edge-agent"
    """Name of this agent (client id, status topic)."""
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the Prometheus /metrics endpoint (none if unset)."""
    metrics_host: Host = "127.0.0.1"
    """Address the /metrics endpoint listens on. 127.0.0.1 answers only on this machine; 0.0.0.0 (or `::`)
    listens on every interface, so any host that can reach this one can read the metrics (device and sink
    names, counts, no values or secrets): what a Prometheus on another host or container needs; keep the port
    closed to others with a firewall or the container network."""
    log_format: Literal["text", "json"] = "text"
    """Log line format."""
    log_level: LogLevel = "INFO"
    """Level of the log: DEBUG, INFO, WARNING, ERROR or CRITICAL (`run --log-level` overrides it)."""
    log_levels: dict[LoggerName, LogLevel] = Field(default_factory=dict)
    """Levels of single loggers and their children, e.g. `"edge_agent.drivers.opcua" = "DEBUG"` or
    `asyncua = "INFO"`; asyncua and pymodbus log at WARNING (or `log_level` if higher) unless named here."""
    shutdown_timeout: Seconds = 10.0
    """Seconds to flush the outboxes on SIGTERM before exiting."""
    status_interval: Seconds = 10.0
    """Seconds between health reports on the MQTT status topic (retained) and in `agent_status`."""


class Config(Model):
    """The whole agent configuration file."""

    agent: AgentConfig = Field(default_factory=AgentConfig)
    """Process-level settings."""
    site: SiteConfig = Field(default_factory=SiteConfig)
    """Place in the site hierarchy."""
    devices: list[Device] = Field(default_factory=list)
    """Machines to poll."""
    sinks: Sinks = Field(default_factory=Sinks)
    """Outputs."""
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    """Store-and-forward."""
    profiles_dir: Path | None = None
    """Extra folder of equipment profiles, searched before the built-in ones."""
    web: WebConfig = Field(default_factory=WebConfig)
    """The live web page (off unless enabled)."""

    @field_validator("devices")
    @classmethod
    def _unique_devices(cls, v: list[DeviceBase]) -> list[DeviceBase]:
        check_unique(v, "device")
        return v

    def summary(self) -> str:
        """One line: how many devices, tags and sinks."""
        tags = sum(len(d.signal_names()) for d in self.devices)
        sinks = list(configured_sinks(self.sinks))
        protocols = sorted({d.protocol for d in self.devices})
        return (
            f"{len(self.devices)} devices ({', '.join(protocols) or 'none'}), {tags} tags, "
            f"{len(sinks)} sinks ({', '.join(sinks) or 'none'})"
        )


# --------------------------------------------------------------------------- error reporting


@functools.cache
def _device_adapter() -> TypeAdapter[DeviceBase]:
    """Validates one `[[devices]]` entry alone (built once, on first need)."""
    return TypeAdapter(Device)


def _profile_dirs(profiles_dir: Path | None, config_dir: Path) -> list[Path]:
    dirs = []
    if profiles_dir is not None:
        dirs.append(profiles_dir if profiles_dir.is_absolute() else config_dir / profiles_dir)
    dirs.append(config_dir / "profiles")
    dirs.append(BUILTIN_PROFILES_DIR)
    return dirs


def profile_dirs(config: Config, config_dir: Path) -> list[Path]:
    """Folders searched for equipment profiles, first match wins."""
    return _profile_dirs(config.profiles_dir, config_dir)


def _unknown_profile(where: str, profile: str, known: list[str]) -> str:
    close = difflib.get_close_matches(profile, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{where}.profile: unknown profile {profile!r}{hint} (known: {', '.join(known) or 'none'})"


def _binding_problems(where: str, device: DeviceBase, profile: Profile) -> list[str]:
    """What the pipeline could not do with a device and its profile: reversed spec limits or valid ranges,
    per-cycle signals without the cycle counter."""
    problems = []
    names = set(device.signal_names())
    from_events = device.event_signals()
    tags = {t.name: t for t in device.tags}
    for s in profile.signals:
        # a device's entry replaces the profile's limits, and SpecLimits checks its own order
        given = s.name in names and s.name not in device.limits
        if given and s.lsl is not None and s.usl is not None and s.lsl >= s.usl:
            problems.append(
                f"{where} ({device.name}): signal {s.name} gets lsl ({s.lsl}) >= usl ({s.usl}) "
                f"from profile {device.profile!r}; correct the profile, or give the device "
                f"`limits.{s.name} = {{ lsl = ..., usl = ... }}`, which replaces the profile's limits"
            )
        tag = tags.get(s.name)
        takes_range = tag is not None and tag.valid_min is None and tag.valid_max is None
        if takes_range and s.valid_min is not None and s.valid_max is not None and s.valid_min >= s.valid_max:
            problems.append(
                f"{where} ({device.name}): tag {s.name} gets valid_min ({s.valid_min}) >= valid_max "
                f"({s.valid_max}) from profile {device.profile!r}; correct the profile, or give the tag "
                "`valid_min` and `valid_max`, which replace the profile's"
            )
    # a per-cycle value polled without the counter would be charted once per poll: the same
    # shot's value over and over, a sigma of ~0 and alarms on every shot
    polled = [
        s.name
        for s in profile.signals
        if s.sampling == "per_cycle" and s.name in names and s.name not in from_events
    ]
    counter = profile.cycle.counter if profile.cycle else None
    if polled and (counter is None or counter not in names):
        need = (
            f"the cycle counter {counter!r} of profile {device.profile!r} to be latched once per "
            f"cycle; add a tag named {counter!r}"
            if counter
            else f"a cycle counter to be latched once per cycle, and profile {device.profile!r} has none"
        )
        events = " or read them from a cycle event" if from_events else ""
        problems.append(f"{where} ({device.name}): per-cycle signals {', '.join(polled)} need {need}{events}")
    return problems


def _with_profile_validity(device: DeviceBase, profile: Profile) -> DeviceBase:
    """The device with its profile's valid ranges copied onto the tags of those signals that give none."""
    tags = []
    changed = False
    for tag in device.tags:
        signal = profile.signal(tag.name)
        if (
            signal is not None
            and (signal.valid_min is not None or signal.valid_max is not None)
            and tag.valid_min is None
            and tag.valid_max is None
        ):
            tag = tag.model_copy(update={"valid_min": signal.valid_min, "valid_max": signal.valid_max})
            changed = True
        tags.append(tag)
    return device.model_copy(update={"tags": tags}) if changed else device


def _check_devices(
    devices: list[tuple[int, DeviceBase]], dirs: list[Path], config_dir: Path, bind: bool
) -> tuple[list[str], dict[int, DeviceBase]]:
    """Problems of devices that validated (their own checks, their profiles) and the devices with the
    profile defaults applied, by index. `bind`: also check the devices against their profiles' contents."""
    # imported here: profiles.py builds on config_model, and loading it is only needed past validation
    from edge_agent.profiles import find_profile

    known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.toml")})
    loaded: dict[str, Profile | list[str]] = {}
    problems: list[str] = []
    ready: dict[int, DeviceBase] = {}
    for i, device in devices:
        where = f"devices[{i}]"
        problems += device.problems(where, config_dir)
        if device.profile not in known:
            problems.append(_unknown_profile(where, device.profile, known))
            continue
        if device.profile not in loaded:
            try:
                loaded[device.profile] = find_profile(device.profile, dirs)
            except ConfigError as exc:
                loaded[device.profile] = [f"{exc.source}: {p}" for p in exc.problems]
        profile = loaded[device.profile]
        if isinstance(profile, list):
            problems += [f"{where}.profile: {p}" for p in profile]
            continue
        if bind:
            problems += _binding_problems(where, device, profile)
        ready[i] = _with_profile_validity(device, profile)
    return problems, ready


_PATH_PART = re.compile(r"\.?([^.\[\]\s:]+)|\[(\d+)\]")


def _file_order(problem: str, data: Any) -> tuple[int, ...]:
    """Sort key of a problem line: the positions in the file's tables and arrays along the path it starts with.

    Tables keep their keys in file order; a missing key sorts after the keys of its table.
    """
    key: list[int] = []
    node = data
    pos = 0
    while match := _PATH_PART.match(problem, pos):
        pos = match.end()
        name, index = match.groups()
        if index is not None:
            i = int(index)
            key.append(i)
            node = node[i] if isinstance(node, list) and i < len(node) else None
        else:
            keys = list(node) if isinstance(node, dict) else []
            key.append(keys.index(name) if name in keys else len(keys))
            node = node.get(name) if isinstance(node, dict) else None
    return tuple(key)


#: what an empty config file is told; both ways out exist in every installation from the sources
EMPTY_FILE = (
    "the file is empty; copy one of the examples shipped in the sources' config/ folder "
    "(config/example.toml has every section), or print a device skeleton with "
    "`edge-agent discover opcua|modbus TARGET`"
)


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Parse and validate TOML text; raises ConfigError with one line per problem, every problem at once, in file order.

    With `base_dir` (the config file's folder, as load_config gives it) the devices are also
    checked against the contents of their profiles; without it a relative `profiles_dir`
    has no folder to be relative to, so only the profiles' existence is checked. Tags that give
    no valid range take their profile signal's.
    """
    if not text.strip():
        raise ConfigError(source, [EMPTY_FILE])
    data = loads_toml(text, source)
    config_dir = base_dir or Path.cwd()
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = [describe(e, data, Config, DEVICE_MODELS) for e in exc.errors()]
        # the devices that validate on their own still get their other checks in this same pass
        entries = data.get("devices")
        devices = []
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            try:
                devices.append((i, _device_adapter().validate_python(entry)))
            except ValidationError:
                continue
        given = data.get("profiles_dir")
        dirs = _profile_dirs(Path(given) if isinstance(given, str) else None, config_dir)
    else:
        problems = []
        devices = list(enumerate(config.devices))
        dirs = profile_dirs(config, config_dir)
    more, ready = _check_devices(devices, dirs, config_dir, bind=base_dir is not None)
    problems += more
    if problems or config is None:
        raise ConfigError(source, sorted(problems, key=lambda p: _file_order(p, data)))
    config = config.model_copy(update={"devices": [ready[i] for i in range(len(config.devices))]})
    if base_dir is not None:
        config = _relative_to(config, base_dir)
    return config


def _relative_to(config: Config, base_dir: Path) -> Config:
    """The config with its relative file paths (outbox, each sink's files) made relative to `base_dir`.

    The config file's folder, as for device certificates: a service runs from / and must find
    the same files as `edge-agent run` started in the config's folder.
    """

    def at(path: Path) -> Path:
        return path if path.is_absolute() else base_dir / path

    update: dict[str, object] = {"outbox": config.outbox.model_copy(update={"dir": at(config.outbox.dir)})}
    sinks = {
        name: _with_paths(section, SINKS[name].paths, at)
        for name, section in configured_sinks(config.sinks).items()
        if SINKS[name].paths
    }
    if sinks:
        update["sinks"] = config.sinks.model_copy(update=sinks)
    return config.model_copy(update=update)


def _with_paths(model: BaseModel, fields: tuple[str, ...], at: Callable[[Path], Path]) -> BaseModel:
    """`model` with `at` applied to each dotted path field that is set (a `tls.ca_file` in an unset `tls` is skipped)."""
    for dotted in fields:
        head, _, rest = dotted.partition(".")
        value = getattr(model, head)
        if value is None:
            continue
        value = _with_paths(value, (rest,), at) if rest else at(value)
        model = model.model_copy(update={head: value})
    return model


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a config file; raises ConfigError naming the file."""
    path = Path(path)
    return parse_config(read_text(path), str(path), path.resolve().parent)


# --------------------------------------------------------------------------- warnings


def _computed_from(profile: Profile) -> list[str]:
    """The profile's signals something is computed from (indicators, the cycle counter, a feature's inputs), in profile order."""
    used = {s.name for s in profile.signals if s.indicators}
    used |= {s.setpoint for s in profile.signals if s.indicators and s.setpoint is not None}
    if profile.cycle is not None:
        used.add(profile.cycle.counter)
    for feature, spec in profile.features():
        used |= {ref for _, ref in feature.references(spec) if ref is not None}
    return [s.name for s in profile.signals if s.name in used]


def config_warnings(config: Config, config_dir: Path) -> list[str]:
    """What is valid but likely not meant, one line each: no sink, profile signals no tag of a device provides.

    `config_dir` is the config file's folder (profiles are looked up from it); check-config prints
    these and `run` logs them once at start.
    """
    # imported here like in _check_devices: a valid config has loadable profiles
    from edge_agent.profiles import find_profile

    warnings = []
    dirs = profile_dirs(config, config_dir)
    profiles: dict[str, Profile] = {}
    for i, device in enumerate(config.devices):
        if not device.enabled:
            continue
        if device.profile not in profiles:
            profiles[device.profile] = find_profile(device.profile, dirs)
        profile = profiles[device.profile]
        names = set(device.signal_names())
        missing = [s for s in _computed_from(profile) if s not in names]
        if not missing:
            continue
        if any(profile.signal(n) is not None for n in names):
            what = f"no tag provides these signals of profile {device.profile!r}, so nothing that needs them is computed"
        else:
            # a discover skeleton names its tags after the machine's nodes or registers
            what = (
                f"none of its tags is named after a signal of profile {device.profile!r}, so only raw values "
                "are published and no indicator is computed"
            )
        warnings.append(
            f"devices[{i}] ({device.name}): {what}: {', '.join(missing)}; name a tag after each of them the machine has"
        )
    if not configured_sinks(config.sinks):
        sinks = " or ".join(f"[sinks.{name}]" for name in SINKS)
        warnings.append(f"sinks: no sink configured, so nothing read or computed is published; add {sinks}")
    return warnings


# --------------------------------------------------------------------------- JSON Schema for editors

#: The JSON Schema version the generated schema follows: the one editors' TOML tooling (Taplo) reads.
SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"


def _for_editors(node: Any) -> Any:
    """The schema tree with refs under `definitions` and a ref's own description kept beside it.

    In draft 7 the keys next to a `$ref` are ignored, so a field's description would be lost where
    its type is a table of its own; `allOf` with the single ref keeps both.
    """
    if isinstance(node, list):
        return [_for_editors(item) for item in node]
    if isinstance(node, str):
        # refs, and the discriminator's mapping (an OpenAPI keyword, kept as a hint), name the definitions
        return "#/definitions/" + node.removeprefix("#/$defs/") if node.startswith("#/$defs/") else node
    if not isinstance(node, dict):
        return node
    out = {key: _for_editors(value) for key, value in node.items()}
    if "$ref" in out and len(out) > 1:
        out["allOf"] = [{"$ref": out.pop("$ref")}]
    return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 7) of the config file, with the field docstrings as descriptions, for editors."""
    schema = Config.model_json_schema()
    definitions = schema.pop("$defs", {})
    out: dict[str, Any] = {"$schema": SCHEMA_DIALECT, **_for_editors(schema)}
    out["definitions"] = _for_editors(definitions)
    return out


def schema_command(args: argparse.Namespace) -> int:
    """`edge-agent schema`: print the config file's JSON Schema."""
    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
    return 0
