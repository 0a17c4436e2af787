"""Load and validate the agent's TOML configuration; the field docstrings are the reference documentation."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import tomllib._parser
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.functional_validators import AfterValidator, BeforeValidator

from drivers.opcua_address import split_browse_path, split_node_id

#: Where the shipped equipment profiles live (a checkout or an editable install).
BUILTIN_PROFILES_DIR = Path(__file__).resolve().parent.parent / "config" / "profiles"

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


# --------------------------------------------------------------------------- Modbus

ModbusTable = Literal["coil", "discrete_input", "holding_register", "input_register"]
ModbusType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]


class ModbusTag(Model):
    """One value read over Modbus TCP."""

    name: Name
    """Signal name, unique within the device (used in topics and series)."""
    table: ModbusTable = "holding_register"
    """Which Modbus table: coil (FC1), discrete_input (FC2), holding_register (FC3), input_register (FC4)."""
    address: int = Field(ge=0, le=65535)
    """Register or bit address as in the device manual, interpreted with the device's `address_base`."""
    type: ModbusType = "uint16"
    """Data type; coils and discrete inputs are always bool."""
    bit: int | None = Field(default=None, ge=0, le=15)
    """For `type = "bool"` on a register: which bit (0 = least significant)."""
    length: int | None = Field(default=None, ge=1, le=125)
    """For `type = "string"`: number of registers (two ASCII characters each)."""
    byte_order: ByteOrder | None = None
    """Byte/word order of multi-register values; defaults to the device's `byte_order`."""
    scale: float = 1.0
    """Engineering value = raw * scale + offset."""
    offset: float = 0.0
    """Added after scaling."""
    unit: str = ""
    """Engineering unit shown with the value (°C, bar, mm/s, ...)."""
    unit_id: int | None = Field(default=None, ge=0, le=255)
    """Unit id behind a Modbus TCP gateway; defaults to the device's `unit_id`."""
    interval: Seconds | None = None
    """Poll interval of this tag in seconds (its scan class); defaults to the device's `poll_interval`."""

    @model_validator(mode="after")
    def _check_type_fields(self) -> ModbusTag:
        bit_table = self.table in ("coil", "discrete_input")
        if bit_table and self.type != "bool":
            raise ValueError(f'a {self.table} holds single bits: use type = "bool" (got {self.type!r})')
        if self.bit is not None and (bit_table or self.type != "bool"):
            raise ValueError('`bit` only applies to type = "bool" on a register table')
        if self.type == "string" and self.length is None:
            raise ValueError('type = "string" needs `length` (number of registers)')
        if self.type != "string" and self.length is not None:
            raise ValueError('`length` only applies to type = "string"')
        return self


class ModbusOptions(Model):
    """Options of a Modbus TCP connection and its request planning."""

    unit_id: int = Field(default=1, ge=0, le=255)
    """Default unit (slave) id of the tags."""
    address_base: Literal[0, 1] = 0
    """1 if the register map counts from 1 (as many manuals do), so every tag address is at least 1; 0 for protocol addresses."""
    byte_order: ByteOrder = "ABCD"
    """Default byte/word order of multi-register values (ABCD = big-endian, Modbus standard)."""
    max_gap: int = Field(default=10, ge=0, le=124)
    """Largest run of unused registers (or bits) a merged request may read across."""
    max_registers_per_request: int = Field(default=125, ge=1, le=125)
    """A smaller cap for fragile PLCs; the protocol limit is 125."""
    max_bits_per_request: int = Field(default=2000, ge=1, le=2000)
    """A smaller cap for coil/discrete-input reads; the protocol limit is 2000."""
    request_pause: float = Field(default=0.0, ge=0, le=10)
    """Seconds to wait between requests on the connection (some gateways need it)."""
    timeout: Seconds = 1.0
    """Seconds to wait for one response."""


# --------------------------------------------------------------------------- OPC UA

SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]


class OpcUaTag(Model):
    """One value read over OPC UA, by NodeId (`ns=`/`nsu=`) or by browse path."""

    name: Name
    """Signal name, unique within the device."""
    node: str | None = None
    """NodeId: `ns=2;s=Machine.Temp`, `nsu=urn:vendor:ns;s=Temp` or `i=2258`."""
    path: str | None = None
    """Browse path from Objects, e.g. `/2:IMM_1/2:MachineStatus/2:MachineMode` (or `nsu` URIs in place of indices)."""
    mode: Literal["poll", "subscribe"] = "poll"
    """Read it in a batched poll, or subscribe to data changes."""
    interval: Seconds | None = None
    """Poll interval or sampling interval in seconds; defaults to the device's `poll_interval`."""
    deadband: float = Field(default=0.0, ge=0)
    """Subscription deadband (0 = every change)."""
    deadband_type: Literal["absolute", "percent"] = "absolute"
    """Absolute units, or percent of the EU range (the server must expose EURange)."""
    queue_size: int = Field(default=10, ge=1, le=10000)
    """Server-side queue of a monitored item, so bursts between publishes are not dropped."""
    unit: str = ""
    """Engineering unit shown with the value (overrides what the server reports, if anything)."""

    @model_validator(mode="after")
    def _one_address(self) -> OpcUaTag:
        if (self.node is None) == (self.path is None):
            raise ValueError("give exactly one of `node` (a NodeId) or `path` (a browse path)")
        return self

    @field_validator("node")
    @classmethod
    def _node_id(cls, v: str | None) -> str | None:
        if v is not None:
            split_node_id(v)  # the driver's own parser: what passes here, the driver can address
        return v

    @field_validator("path")
    @classmethod
    def _browse_path(cls, v: str | None) -> str | None:
        if v is not None:
            split_browse_path(v)
        return v


def _event_field_path(path: str) -> str:
    if any(not part for part in path.split("/")):
        raise ValueError(
            "the event field path has an empty element (a '//' or a '/' at either end); write browse "
            "names separated by '/', e.g. 'InjectionUnitCycleParameters_1/CushionVolume'"
        )
    return path


#: Browse names from the event type down to the field, separated by '/'.
EventFieldPath = Annotated[str, AfterValidator(_event_field_path)]


class OpcUaEvent(Model):
    """Subscribe to an event type (e.g. EUROMAP 77 CycleParametersEventType) and turn fields into signals."""

    name: Name
    """Prefix of the signals made from the event's fields."""
    event_type: str
    """NodeId of the event type, e.g. `nsu=http://opcfoundation.org/UA/IMM2MES/;i=1006`."""
    source: str = "i=2253"
    """Node that emits the events (default: the Server object)."""
    fields: dict[Name, EventFieldPath] = Field(min_length=1)
    """Signal name -> event field browse path, e.g. `cushion = "InjectionUnitCycleParameters_1/CushionVolume"`."""

    @field_validator("event_type", "source")
    @classmethod
    def _node_id(cls, v: str) -> str:
        split_node_id(v)
        return v


class OpcUaOptions(Model):
    """Options of an OPC UA session: security, identity, limits."""

    security_policy: SecurityPolicy = "Basic256Sha256"
    """Security policy; "None" only if `allow_insecure = true`."""
    security_mode: SecurityMode = "SignAndEncrypt"
    """Message security mode."""
    allow_insecure: bool = False
    """Must be set to allow security policy None (plain text on the network)."""
    certificate: Path | None = None
    """Client application certificate (DER or PEM); `edge-agent certs create` makes one."""
    private_key: Path | None = None
    """Private key of the client certificate."""
    server_certificate: Path | None = None
    """Pinned server certificate: the server must present exactly this one. A signed channel needs
    this or `trust_store`."""
    trust_store: Path | None = None
    """Folder of trusted server (or CA) certificates. A signed channel needs this or `server_certificate`."""
    allow_expired_server_certificate: bool = False
    """Accept a trusted server certificate outside its validity dates (expired, or not yet valid).
    Refused by default, naming the dates; a machine often keeps the certificate it was delivered
    with for years, so this allows it, with a WARNING giving the dates at each connect. The
    certificate must still be pinned or trusted."""
    username: str | None = None
    """User name for username/password authentication (refused over an unencrypted channel)."""
    password: Secret | None = None
    """Password, as `${ENV_NAME}`."""
    user_certificate: Path | None = None
    """User certificate for X.509 user-token authentication."""
    user_private_key: Path | None = None
    """Private key of the user certificate."""
    application_uri: str = "urn:edge-agent:client"
    """Application URI; must match the one in the client certificate."""
    timeout: Seconds = 10.0
    """Seconds to wait for one service call (a 10k-node read must fit in it)."""
    session_timeout: Seconds = 60.0
    """Requested session timeout in seconds."""
    watchdog_interval: Seconds = 5.0
    """Seconds between keep-alive checks of the connection."""
    max_nodes_per_read: int | None = Field(default=None, ge=1)
    """Cap on nodes per Read request; default: the server's MaxNodesPerRead operational limit."""
    publishing_interval: Seconds = 0.5
    """Subscription publishing interval in seconds."""

    @model_validator(mode="after")
    def _security_consistent(self) -> OpcUaOptions:
        insecure = self.security_policy == "None" or self.security_mode == "None"
        if insecure and not self.allow_insecure:
            raise ValueError(
                "security policy/mode None sends everything in plain text; set allow_insecure = true "
                "to accept that, or choose e.g. Basic256Sha256 with SignAndEncrypt"
            )
        if (self.security_policy == "None") != (self.security_mode == "None"):
            raise ValueError("security_policy and security_mode must both be None or both not None")
        if not insecure and (self.certificate is None or self.private_key is None):
            raise ValueError(
                "a secure channel needs the client `certificate` and `private_key` "
                "(make them with `edge-agent certs create`)"
            )
        if self.username is not None and self.password is None:
            raise ValueError("`username` needs `password` (as '${ENV_NAME}')")
        if self.username is not None and self.security_mode != "SignAndEncrypt":
            raise ValueError(
                "username/password is refused over a channel that is not encrypted (SignAndEncrypt)"
            )
        if (self.user_certificate is None) != (self.user_private_key is None):
            raise ValueError("`user_certificate` and `user_private_key` go together")
        return self


# --------------------------------------------------------------------------- devices


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


class DeviceBase(Model):
    """Fields every device has, whatever its protocol."""

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


def _check_unique(items: Iterable[Any], what: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise ValueError(f"duplicate {what} name {item.name!r}; names must be unique")
        seen.add(item.name)


class ModbusDevice(DeviceBase):
    """A device polled over Modbus TCP."""

    protocol: Literal["modbus"]
    """Protocol of the device."""
    modbus: ModbusOptions = Field(default_factory=ModbusOptions)
    """Connection and request-planning options."""
    tags: list[ModbusTag] = Field(min_length=1)
    """The register map."""

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        parts = urlsplit(v)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "modbus-tcp" or not parts.hostname or port is None:
            raise ValueError("expected modbus-tcp://HOST:PORT, e.g. modbus-tcp://192.0.2.10:502")
        return v

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, v: list[ModbusTag]) -> list[ModbusTag]:
        _check_unique(v, "tag")
        return v

    def signal_names(self) -> list[str]:
        """The tags in file order: the device's rows in the signal table."""
        return [t.name for t in self.tags]


class OpcUaDevice(DeviceBase):
    """A device read over OPC UA."""

    protocol: Literal["opcua"]
    """Protocol of the device."""
    opcua: OpcUaOptions
    """Security, identity and limits of the session; required, so the security choice is always written down."""
    tags: list[OpcUaTag] = Field(default_factory=list)
    """Variables to poll or subscribe to."""
    events: list[OpcUaEvent] = Field(default_factory=list)
    """Events to subscribe to."""

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        parts = urlsplit(v)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "opc.tcp" or not parts.hostname or port is None:
            raise ValueError("expected opc.tcp://HOST:PORT[/PATH], e.g. opc.tcp://192.0.2.20:4840")
        return v

    @model_validator(mode="after")
    def _something_to_read(self) -> OpcUaDevice:
        if not self.tags and not self.events:
            raise ValueError("an OPC UA device needs at least one tag or event")
        _check_unique(self.tags, "tag")
        _check_unique(self.events, "event")
        tag_names = {t.name for t in self.tags}
        for event in self.events:
            for signal in event.fields:
                if signal in tag_names:
                    raise ValueError(f"event {event.name!r} field signal {signal!r} has the name of a tag")
        return self

    def signal_names(self) -> list[str]:
        """Tags, then event-field signals, in file order: the device's rows in the signal table."""
        return [t.name for t in self.tags] + [s for e in self.events for s in e.fields]


Device = Annotated[ModbusDevice | OpcUaDevice, Field(discriminator="protocol")]


# --------------------------------------------------------------------------- sinks and outbox


class TlsOptions(Model):
    """TLS towards a broker."""

    ca_file: Path
    """CA certificate(s) that signed the broker's certificate (relative paths are relative to the config file)."""
    cert_file: Path | None = None
    """Client certificate, for brokers that require one."""
    key_file: Path | None = None
    """Private key of the client certificate."""
    check_hostname: bool = True
    """Verify the broker's name against its certificate (leave on outside a lab)."""


class MqttSink(Model):
    """Publish raw values, indicators, alarms and status to an MQTT broker (unified namespace)."""

    url: str = "mqtt://127.0.0.1:1883"
    """`mqtt://host:port` or `mqtts://host:port`."""
    topic_prefix: str = "spBv1.0-free/uns"
    """First topic levels; the rest is `{site}/{area}/{line}/{machine}/{raw|kpi|alarm|status}`."""
    topic_template: str = "{prefix}/{site}/{area}/{line}/{machine}/{kind}"
    """Topic layout; placeholders: prefix, enterprise, site, area, line, machine, kind."""
    qos: Literal[0, 1, 2] = 1
    """MQTT QoS of data messages; 1 = at least once (the outbox acknowledges on PUBACK)."""
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    """MQTT protocol version. 3.1.1 by default: every broker speaks it (some cloud IoT hubs speak
    nothing else), the agent uses no feature of 5, and paho spends 7-15 % less per message on it
    (no reason code and properties object per PUBACK)."""
    client_id: str | None = None
    """Client id; default `edge-agent-{site}-{hostname}`."""
    username: str | None = None
    """User name, if the broker asks for one."""
    password: Secret | None = None
    """Password, as `${ENV_NAME}`."""
    tls: TlsOptions | None = None
    """TLS settings; required for mqtts://."""
    keepalive: int = Field(default=30, ge=5, le=3600)
    """Keep-alive in seconds; the broker publishes the last will after 1.5x this without traffic."""
    max_inflight: int = Field(default=1000, ge=1, le=65535)
    """QoS 1 messages on the wire before a PUBACK is awaited."""
    publisher: Literal["thread", "process"] = "thread"
    """Where paho runs. `thread`: an I/O thread in the agent (about 12k QoS 1 messages/s; a
    gateway with 100 devices polled at 10 Hz sends about 1k). `process`: a publisher process of its
    own (+26 MB resident), so paho's per-message work does not share the agent's GIL: about 1.5x
    the messages/s (16-18k in bench_sinks) and faster catch-up of a backlog after an outage."""

    @field_validator("topic_prefix", "topic_template")
    @classmethod
    def _no_wildcards(cls, v: str) -> str:
        # MQTT forbids them in a topic one publishes to: paho would refuse every message
        bad = sorted({c for c in v if c in "+#\0"})
        if bad:
            raise ValueError(f"must not contain the MQTT wildcard or NUL characters {bad}")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("expected mqtt://HOST:PORT or mqtts://HOST:PORT")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return v

    @model_validator(mode="after")
    def _tls_for_mqtts(self) -> MqttSink:
        if self.url.startswith("mqtts:") and self.tls is None:
            raise ValueError("mqtts:// needs a [sinks.mqtt.tls] section with at least ca_file")
        if self.username is not None and self.password is None:
            raise ValueError("`username` needs `password` (as '${ENV_NAME}')")
        return self


class InfluxSink(Model):
    """Write raw values and indicators to InfluxDB 2.x (or anything serving /api/v2/write)."""

    url: str = "http://127.0.0.1:8086"
    """Base URL of the server."""
    org: str = "shopfloor"
    """Organization."""
    bucket: str = "process"
    """Bucket."""
    token: Secret | None = None
    """API token, as `${ENV_NAME}`."""
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    """Lines per write request."""
    flush_interval: Seconds = 1.0
    """Seconds to wait for a batch to fill before writing what there is."""
    gzip: bool = True
    """Compress request bodies."""
    timeout: Seconds = 10.0
    """Seconds to wait for one write."""
    dead_letter: Path | None = None
    """File for lines the server rejected (HTTP 400, 413 or 422); default `<outbox dir>/influx.deadletter`;
    relative to the config file."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected http(s)://HOST:PORT")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return v


class Sinks(Model):
    """The outputs; each has its own outbox and delivery loop."""

    mqtt: MqttSink | None = None
    """MQTT output."""
    influx: InfluxSink | None = None
    """InfluxDB output."""


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


class AgentConfig(Model):
    """Process-level settings of the agent."""

    name: Name = "edge-agent"
    """Name of this agent (client id, status topic)."""
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the Prometheus /metrics endpoint (none if unset)."""
    log_format: Literal["text", "json"] = "text"
    """Log line format."""
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

    @field_validator("devices")
    @classmethod
    def _unique_devices(cls, v: list[ModbusDevice | OpcUaDevice]) -> list[ModbusDevice | OpcUaDevice]:
        _check_unique(v, "device")
        return v

    def summary(self) -> str:
        """One line: how many devices, tags and sinks."""
        tags = sum(len(d.signal_names()) for d in self.devices)
        sinks = [name for name in ("mqtt", "influx") if getattr(self.sinks, name) is not None]
        protocols = sorted({d.protocol for d in self.devices})
        return (
            f"{len(self.devices)} devices ({', '.join(protocols) or 'none'}), {tags} tags, "
            f"{len(sinks)} sinks ({', '.join(sinks) or 'none'})"
        )


# --------------------------------------------------------------------------- error reporting


def _is_discriminator(loc: tuple[int | str, ...], i: int) -> bool:
    """pydantic puts the device union's tag in the path (devices.0.opcua...); a person never wrote it."""
    return i == 2 and loc[0] == "devices" and loc[i] in ("modbus", "opcua")


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_discriminator(loc, i):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _model_at(loc: tuple[int | str, ...], data: Any, root: type[BaseModel]) -> type[BaseModel] | None:
    """The model class that owns the last key of `loc`, found by walking the annotations and the input from `root`."""
    model: Any = root
    node = data
    for i, part in enumerate(loc[:-1]):
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if _is_discriminator(loc, i):
            model = ModbusDevice if part == "modbus" else OpcUaDevice
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


def _describe(error: Any, data: Any, root: type[BaseModel] | None = None) -> str:
    """One problem line of a pydantic error: the field path, what is wrong, the value given (never a secret's)."""
    loc = tuple(error["loc"])
    where = _format_loc(loc)
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(loc, data, root or Config)
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
        return f"{where}.protocol: unknown protocol {error['ctx']['tag']!r}; expected 'modbus' or 'opcua'"
    if kind == "union_tag_not_found":
        return f"{where}: missing key 'protocol' ('modbus' or 'opcua')"
    secret = bool(loc) and loc[-1] in _SECRET_KEYS
    shown = "" if secret or isinstance(value, dict | list) or value is None else f" (got {value!r})"
    return f"{where}: {message}{shown}"


def _profile_problems(config: Config, config_dir: Path) -> list[str]:
    dirs = profile_dirs(config, config_dir)
    known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.toml")})
    problems = []
    for i, device in enumerate(config.devices):
        if device.profile not in known:
            close = difflib.get_close_matches(device.profile, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"devices[{i}].profile: unknown profile {device.profile!r}{hint} "
                f"(known: {', '.join(known) or 'none'})"
            )
    return problems


def _profile_binding_problems(config: Config, config_dir: Path) -> list[str]:
    """What the pipeline could not do with a device and its profile: reversed spec limits, per-cycle signals without the cycle counter."""
    # imported here: profiles.py builds on this module's Model and ConfigError
    from edge_agent.profiles import Profile, find_profile

    dirs = profile_dirs(config, config_dir)
    profiles: dict[str, Profile] = {}
    problems = []
    for i, device in enumerate(config.devices):
        if device.profile not in profiles:
            try:
                profiles[device.profile] = find_profile(device.profile, dirs)
            except ConfigError as exc:
                problems += [f"devices[{i}].profile: {exc.source}: {p}" for p in exc.problems]
                continue
        profile = profiles[device.profile]
        names = set(device.signal_names())
        from_events = (
            {s for e in device.events for s in e.fields} if isinstance(device, OpcUaDevice) else set()
        )
        # a per-cycle value polled without the counter would be charted once per poll: the same
        # shot's value over and over, a sigma of ~0 and alarms on every shot
        polled = [
            s.name
            for s in profile.signals
            if s.sampling == "per_cycle" and s.name in names and s.name not in from_events
        ]
        for s in profile.signals:
            # a device's entry replaces the profile's limits, and SpecLimits checks its own order
            given = s.name in names and s.name not in device.limits
            if given and s.lsl is not None and s.usl is not None and s.lsl >= s.usl:
                problems.append(
                    f"devices[{i}] ({device.name}): signal {s.name} gets lsl ({s.lsl}) >= usl ({s.usl}) "
                    f"from profile {device.profile!r}; correct the profile, or give the device "
                    f"`limits.{s.name} = {{ lsl = ..., usl = ... }}`, which replaces the profile's limits"
                )
        counter = profile.cycle.counter if profile.cycle else None
        if polled and (counter is None or counter not in names):
            need = (
                f"the cycle counter {counter!r} of profile {device.profile!r} to be latched once per "
                f"cycle; add a tag named {counter!r}"
                if counter
                else f"a cycle counter to be latched once per cycle, and profile {device.profile!r} has none"
            )
            events = " or read them from a cycle event" if isinstance(device, OpcUaDevice) else ""
            problems.append(
                f"devices[{i}] ({device.name}): per-cycle signals {', '.join(polled)} need {need}{events}"
            )
    return problems


def _address_base_problems(config: Config) -> list[str]:
    # A tag model cannot see its device's address_base, so this is checked on the whole device.
    problems = []
    for i, device in enumerate(config.devices):
        if not isinstance(device, ModbusDevice):
            continue
        base = device.modbus.address_base
        for j, tag in enumerate(device.tags):
            if tag.address < base:
                problems.append(
                    f"devices[{i}].tags[{j}].address: below the device's address_base = {base}, so it "
                    f"names no register; write the address as the manual counts it (from {base}), or set "
                    f"modbus.address_base = 0 if the map uses protocol addresses (got {tag.address})"
                )
    return problems


#: OPC UA option -> (must be a folder, what makes or fills it)
_SECURITY_FILES = {
    "certificate": (False, "make the client certificate and key with `edge-agent certs create --out DIR`"),
    "private_key": (False, "make the client certificate and key with `edge-agent certs create --out DIR`"),
    "server_certificate": (False, "copy the server's certificate there, or trust it through `trust_store`"),
    "trust_store": (True, "create the folder and copy the server's certificate into it"),
    "user_certificate": (False, "give the certificate of the X.509 user login"),
    "user_private_key": (False, "give the private key of the X.509 user login"),
}


def _security_file_problems(config: Config, config_dir: Path) -> list[str]:
    # Resolved like the driver resolves them, so a missing file is caught here and not at connect.
    problems = []
    for i, device in enumerate(config.devices):
        # a disabled device is never connected: its certificates may not exist yet
        if not isinstance(device, OpcUaDevice) or not device.enabled:
            continue
        secure = device.opcua.security_policy != "None"
        for field, (folder, fix) in _SECURITY_FILES.items():
            path: Path | None = getattr(device.opcua, field)
            if path is None or (not secure and not field.startswith("user_")):
                continue
            where = path if path.is_absolute() else config_dir / path
            kind = "folder" if folder else "file"
            try:
                if where.is_dir() if folder else where.is_file():
                    continue
                state = "does not exist" if not where.exists() else f"is not a {kind}"
            except OSError as exc:  # a name too long, a loop of links: is_file() only hides some errors
                state = f"cannot be looked at ({exc.strerror or exc})"
            relative = "" if path.is_absolute() else " (relative to the config file's folder)"
            problems.append(f"devices[{i}].opcua.{field}: {kind} '{path}'{relative} {state}; {fix}")
    return problems


def _server_trust_problems(config: Config) -> list[str]:
    # The driver cannot open a signed channel without deciding whether to trust the server; say so
    # before starting, with the two ways out, rather than when the device's driver is built.
    problems = []
    for i, device in enumerate(config.devices):
        opts = device.opcua if isinstance(device, OpcUaDevice) else None
        if opts is None or opts.security_mode == "None":
            continue
        if opts.trust_store is None and opts.server_certificate is None:
            problems.append(
                f"devices[{i}].opcua.trust_store: security mode {opts.security_mode} needs the server's "
                f"certificate to be trusted, and neither trust_store nor server_certificate is set; set "
                f"devices[{i}].opcua.trust_store to a folder holding the server's (or its CA's) "
                f"certificate, or devices[{i}].opcua.server_certificate to the server's certificate file"
            )
    return problems


def profile_dirs(config: Config, config_dir: Path) -> list[Path]:
    """Folders searched for equipment profiles, first match wins."""
    dirs = []
    if config.profiles_dir is not None:
        dirs.append(
            config.profiles_dir if config.profiles_dir.is_absolute() else config_dir / config.profiles_dir
        )
    dirs.append(config_dir / "profiles")
    dirs.append(BUILTIN_PROFILES_DIR)
    return dirs


#: what an empty config file is told; both ways out exist in every installation from the sources
EMPTY_FILE = (
    "the file is empty; copy one of the examples shipped in the sources' config/ folder "
    "(config/example.toml has every section), or print a device skeleton with "
    "`edge-agent discover opcua|modbus TARGET`"
)


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


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Parse and validate TOML text; raises ConfigError with one line per problem.

    With `base_dir` (the config file's folder, as load_config gives it) the devices are also
    checked against the contents of their profiles; without it a relative `profiles_dir`
    has no folder to be relative to, so only the profiles' existence is checked.
    """
    if not text.strip():
        raise ConfigError(source, [EMPTY_FILE])
    data = loads_toml(text, source)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e, data) for e in exc.errors()]) from None
    config_dir = base_dir or Path.cwd()
    problems = (
        _address_base_problems(config)
        + _server_trust_problems(config)
        + _profile_problems(config, config_dir)
        + _security_file_problems(config, config_dir)
    )
    if not problems and base_dir is not None:
        # only once every profile exists: this reads them
        problems = _profile_binding_problems(config, config_dir)
    if problems:
        raise ConfigError(source, problems)
    if base_dir is not None:
        config = _relative_to(config, base_dir)
    return config


def _relative_to(config: Config, base_dir: Path) -> Config:
    """The config with its relative file paths (outbox, MQTT TLS files, dead letters) made relative to `base_dir`.

    The config file's folder, as for device certificates: a service runs from / and must find
    the same files as `edge-agent run` started in the config's folder.
    """

    def at(path: Path) -> Path:
        return path if path.is_absolute() else base_dir / path

    update: dict[str, object] = {"outbox": config.outbox.model_copy(update={"dir": at(config.outbox.dir)})}
    sinks: dict[str, object] = {}
    mqtt = config.sinks.mqtt
    if mqtt is not None and mqtt.tls is not None:
        tls = mqtt.tls
        files = {"ca_file": at(tls.ca_file)}
        for name in ("cert_file", "key_file"):
            value = getattr(tls, name)
            if value is not None:
                files[name] = at(value)
        sinks["mqtt"] = mqtt.model_copy(update={"tls": tls.model_copy(update=files)})
    influx = config.sinks.influx
    if influx is not None and influx.dead_letter is not None:
        sinks["influx"] = influx.model_copy(update={"dead_letter": at(influx.dead_letter)})
    if sinks:
        update["sinks"] = config.sinks.model_copy(update=sinks)
    return config.model_copy(update=update)


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a config file; raises ConfigError naming the file."""
    path = Path(path)
    return parse_config(read_text(path), str(path), path.resolve().parent)
