"""The pieces every config model shares: the base model, names, secrets, spec limits, the fields of every
device, reading TOML files and turning validation errors into lines a person can act on."""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
import tomllib._parser
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic.functional_validators import BeforeValidator

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


def _resolve_secret(value: object) -> object:
    """Expand a `${ENV_NAME}` reference; plain text is refused so secrets never sit in the file."""
    if isinstance(value, SecretStr):
        return value
    if not isinstance(value, str):
        return value
    match = _ENV_REF.match(value.strip())
    if match is None:
        raise ValueError("secrets are written as an environment reference like '${MQTT_PASSWORD}'")
    name = match.group(1)
    resolved = os.environ.get(name)
    if resolved is None:
        raise ValueError(f"environment variable {name} is not set; export it before starting the agent")
    return resolved


#: A password or token, given as `${ENV_NAME}` in the file and held as a secret (never printed).
Secret = Annotated[SecretStr, BeforeValidator(_resolve_secret)]


class Model(BaseModel):
    """Base of every config section: unknown keys are errors, docstrings are the docs."""

    # NaN and infinity mean nothing in a limit, a scale or a time, and NaN passes every comparison
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True, allow_inf_nan=False)


Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


Name = Annotated[str, Field(pattern=_NAME, min_length=1, max_length=64)]


def _raw_number(value: Any) -> Any:
    """One clear error for what is not a finite number (the int | float union would report each branch)."""
    finite = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    if isinstance(value, bool) or not finite:
        raise ValueError("expected a finite number as the device sends it, e.g. 32767 or -9999.9")
    return value


# int | float: an integer stays exact (18446744073709551615, SunSpec's uint64 "not implemented", has no double)
RawNumber = Annotated[int | float, BeforeValidator(_raw_number)]


class SpecLimits(Model):
    """Specification limits of one signal; give one or both (capability is one-sided with one)."""

    lsl: float | None = None
    """Lower specification limit."""
    usl: float | None = None
    """Upper specification limit."""
    target: float | None = None
    """Nominal value, if it is not the middle of the limits."""

    @model_validator(mode="after")
    def _ordered(self) -> SpecLimits:
        if self.lsl is None and self.usl is None:
            raise ValueError("give `lsl`, `usl` or both")
        if self.lsl is not None and self.usl is not None and self.lsl >= self.usl:
            raise ValueError(f"lsl ({self.lsl}) must be below usl ({self.usl})")
        return self


class TagBase(Model):
    """Fields every tag has, whatever its protocol."""

    name: Name
    """Signal name, unique within the device (used in topics and series)."""
    unit: str = ""
    """Engineering unit shown with the value (°C, bar, mm/s, ...)."""
    valid_min: float | None = None
    """Lowest value the sensor can truly read, in the engineering unit; below it the reading is
    published as BAD_SENSOR_FAILURE with no value (a broken thermocouple reading far downscale).
    Unset on both ends, the tag takes `valid_min` and `valid_max` of its profile signal, if any;
    setting either replaces both."""
    valid_max: float | None = None
    """Highest value the sensor can truly read; above it the reading is BAD_SENSOR_FAILURE (an
    open thermocouple driven upscale, a transmitter's over-range value)."""
    sentinels: list[RawNumber] = Field(default_factory=list, max_length=16)
    """Raw values, as the device sends them before any `scale` and `offset`, that mean "no valid
    reading", e.g. `[32767, -32768]` for an int16 input whose module reports a broken wire so; read
    as BAD_SENSOR_FAILURE with no value. They are compared exactly, in the type the device sends:
    on a Modbus float32 register (or an OPC UA Float) a sentinel is rounded to the nearest float32,
    so `-9999.9` or `3.4028235e38` match what the device writes for them; on a Modbus integer
    register a sentinel must be a whole number the register can hold (`-32768` on a uint16
    register is refused: it reads that pattern as 32768), string tags take none, bool tags only 0
    or 1. OPC UA integers are compared as doubles, exactly up to 2**53."""

    @model_validator(mode="after")
    def _valid_range_ordered(self) -> TagBase:
        if self.valid_min is not None and self.valid_max is not None and self.valid_min >= self.valid_max:
            raise ValueError(f"valid_min ({self.valid_min}) must be below valid_max ({self.valid_max})")
        return self

    def validity(self) -> tuple[float | None, float | None, list[int | float]]:
        """(valid_min, valid_max, sentinels): what edge_agent.types.ValidityRules takes per tag."""
        return self.valid_min, self.valid_max, self.sentinels


class DeviceBase(Model):
    """Fields every device has, whatever its protocol; a driver's device model adds `protocol`, its options and tags."""

    name: Name
    """Machine name, unique in the file; the last level of the MQTT topic."""
    profile: Name
    """Equipment profile from config/profiles (injection_molding, die_casting, mold_tcu, furnace)."""
    endpoint: str
    """`modbus-tcp://host:port` or `opc.tcp://host:port/path`."""
    area: Name | None = None
    """Overrides the site's default area."""
    line: Name | None = None
    """Overrides the site's default line."""
    poll_interval: Seconds = 1.0
    """Default poll interval of the tags, seconds."""
    enabled: bool = True
    """Set false to keep a device in the file without polling it (nor checking its certificate files)."""
    nominal_cycle_s: float | None = Field(default=None, gt=0)
    """Nominal cycle time of this machine in seconds; overrides the profile's (stop detection)."""
    ideal_cycle_s: float | None = Field(default=None, gt=0)
    """Ideal cycle time per part in seconds for OEE performance; overrides the profile's."""
    limits: dict[str, SpecLimits] = Field(default_factory=dict)
    """Specification limits per signal, `limits.cushion = {lsl = 3.0, usl = 7.0}`. An entry replaces both
    of the profile's limits of that signal: give one limit for a one-sided specification."""
    # last, as the protocol's own fields follow them in the models that narrow them
    protocol: str
    """Protocol of the device (the driver's name in drivers/registry.py)."""
    tags: Sequence[TagBase]
    """The values to read."""

    def signal_names(self) -> list[str]:
        """The device's signals in file order: its rows in the signal table."""
        return [t.name for t in self.tags]

    def units(self) -> dict[str, str]:
        """Engineering unit of each tag."""
        return {t.name: t.unit for t in self.tags}

    def event_signals(self) -> set[str]:
        """Signals that arrive latched once per machine cycle by the protocol itself (e.g. OPC UA events)."""
        return set()

    def problems(self, where: str, config_dir: Path) -> list[str]:
        """What the model alone cannot check (across fields, or files next to the config); `where` is its path."""
        return []


def check_unique(items: Iterable[Any], what: str) -> None:
    """Refuse a list whose items' names repeat."""
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise ValueError(f"duplicate {what} name {item.name!r}; names must be unique")
        seen.add(item.name)


def _line_column(text: str, pos: int) -> tuple[int, int]:
    """1-based line and column of a character position, as tomllib counts them."""
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _recursion_line(exc: RecursionError, text: str) -> int | None:
    """Line of the key/value pair whose value exhausted tomllib's stack (its outermost frame's position)."""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        pos = frame.f_locals.get("pos")
        # the outermost parser frame (loads) holds where the statement starts, whatever the stack depth
        if frame.f_code.co_filename == tomllib._parser.__file__ and isinstance(pos, int):
            return _line_column(text, min(pos, len(text)))[0]
        tb = tb.tb_next
    return None


def loads_toml(text: str, source: str) -> dict[str, Any]:
    """The TOML document in `text`; raises ConfigError naming `source` and the line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    except RecursionError as exc:
        # tomllib recurses once per level of [ or {: a few hundred levels exhaust the stack
        line = _recursion_line(exc, text)
        where = f" in the key/value pair at line {line}" if line is not None else ""
        raise ConfigError(
            source, [f"not valid TOML: arrays or inline tables nested too deeply to parse{where}"]
        ) from None


def read_text(path: Path) -> str:
    """The UTF-8 text of a config or profile file; raises ConfigError naming the file and, for bad bytes, the line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), ["no such file"]) from None
    except IsADirectoryError:
        raise ConfigError(str(path), ["is a folder; give the path of a TOML file"]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot be read ({exc.strerror or exc})"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8")  # valid: decoding stopped at the first bad byte
        line, column = _line_column(before, len(before))
        raise ConfigError(
            str(path),
            [
                f"not UTF-8 text: {exc.reason} at line {line}, column {column} (byte {exc.start}); "
                "save the file as UTF-8"
            ],
        ) from None
    return text.removeprefix("\ufeff")  # editors on Windows may start UTF-8 files with a BOM


#: The device models by `protocol`, as the union in an error's path names them (devices.0.opcua...).
Variants = Mapping[str, type[BaseModel]]


def _is_discriminator(loc: tuple[int | str, ...], i: int, variants: Variants) -> bool:
    """pydantic puts the device union's tag in the path (devices.0.opcua...); a person never wrote it."""
    return i == 2 and loc[0] == "devices" and loc[i] in variants


def _format_loc(loc: tuple[int | str, ...], variants: Variants) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_discriminator(loc, i, variants):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _model_at(
    loc: tuple[int | str, ...], data: Any, root: type[BaseModel], variants: Variants
) -> type[BaseModel] | None:
    """The model class that owns the last key of `loc`, found by walking the annotations and the input from `root`."""
    model: Any = root
    node = data
    for i, part in enumerate(loc[:-1]):
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if _is_discriminator(loc, i, variants):
            model = variants[str(part)]
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        node = node.get(part) if isinstance(node, dict) else None
        model = _unwrap_model(annotation, node)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap_model(annotation: Any, node: Any) -> Any:
    """Find the BaseModel inside Optional[...], list[...], Annotated[Union, discriminator]."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap_model(typing.get_args(annotation)[0], node)
    if origin in (list, tuple):
        return _unwrap_model(typing.get_args(annotation)[0], node)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _unwrap_model(arg, node)
            if isinstance(found, type) and issubclass(found, BaseModel):
                proto = found.model_fields.get("protocol")
                if proto is None or node is None or isinstance(node, list):
                    return found
                if isinstance(node, dict) and typing.get_args(proto.annotation) == (node.get("protocol"),):
                    return found
        return None
    return annotation


_SECRET_KEYS = {"password", "token"}


def _one_of(names: Iterable[str]) -> str:
    """'a', 'b' or 'c'."""
    quoted = [repr(n) for n in names]
    return " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)


def describe(error: Any, data: Any, root: type[BaseModel], variants: Variants | None = None) -> str:
    """One problem line of a pydantic error: the field path, what is wrong, the value given (never a secret's).

    `root` is the model that was validated; `variants` the device models by protocol, for a config file.
    """
    variants = variants or {}
    loc = tuple(error["loc"])
    where = _format_loc(loc, variants)
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(loc, data, root, variants)
        hint = ""
        if model is not None:
            close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
            if close:
                hint = f"; did you mean {close[0]!r}?"
        return f"{where}: unknown key {key!r}{hint}"
    if kind == "missing":
        return f"{where}: required key is missing"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if kind == "union_tag_invalid":
        return f"{where}.protocol: unknown protocol {error['ctx']['tag']!r}; expected {_one_of(variants)}"
    if kind == "union_tag_not_found":
        return f"{where}: missing key 'protocol' ({_one_of(variants)})"
    secret = bool(loc) and loc[-1] in _SECRET_KEYS
    shown = "" if secret or isinstance(value, dict | list) or value is None else f" (got {value!r})"
    return f"{where}: {message}{shown}"
