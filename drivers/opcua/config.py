"""The config of an OPC UA device: `[[devices]]` with `protocol = "opcua"`, its session options, tags and
events, and the checks of its security files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic.functional_validators import AfterValidator

from edge_agent.config_model import DeviceBase, Model, Name, Seconds, Secret, TagBase, check_unique
from edge_agent.drivers.opcua.address import split_browse_path, split_node_id

SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]


SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]


class OpcUaTag(TagBase):
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
    points: int | None = Field(default=None, ge=2, le=1_000_000)
    """Read the variable as an array of this many numbers, one curve per read (a force signature over
    the crank angle): it reaches the equipment features as a trace, not as a value. An array of
    another length is still read, and flagged shorter or longer than configured. Polled only."""

    @model_validator(mode="after")
    def _one_address(self) -> OpcUaTag:
        if (self.node is None) == (self.path is None):
            raise ValueError("give exactly one of `node` (a NodeId) or `path` (a browse path)")
        if self.points is not None and self.mode != "poll":
            raise ValueError('a trace (`points`) is read with the values beside it: use mode = "poll"')
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
        check_unique(self.tags, "tag")
        check_unique(self.events, "event")
        tag_names = {t.name for t in self.tags}
        for event in self.events:
            for signal in event.fields:
                if signal in tag_names:
                    raise ValueError(f"event {event.name!r} field signal {signal!r} has the name of a tag")
        return self

    def signal_names(self) -> list[str]:
        """Tags, then event-field signals, in file order: the device's rows in the signal table."""
        return [t.name for t in self.tags] + [s for e in self.events for s in e.fields]

    def event_signals(self) -> set[str]:
        """The event-field signals: latched once per event, so once per cycle for a cycle event."""
        return {s for e in self.events for s in e.fields}

    def problems(self, where: str, config_dir: Path) -> list[str]:
        """A signed channel with nothing to trust the server by; security files that do not exist."""
        # a disabled device is never connected: its certificates may not exist yet
        if not self.enabled:
            return _server_trust_problems(self.opcua, where)
        return _server_trust_problems(self.opcua, where) + _security_file_problems(self, where, config_dir)


#: OPC UA option -> (must be a folder, what makes or fills it)
_SECURITY_FILES = {
    "certificate": (False, "make the client certificate and key with `edge-agent certs create --out DIR`"),
    "private_key": (False, "make the client certificate and key with `edge-agent certs create --out DIR`"),
    "server_certificate": (False, "copy the server's certificate there, or trust it through `trust_store`"),
    "trust_store": (True, "create the folder and copy the server's certificate into it"),
    "user_certificate": (False, "give the certificate of the X.509 user login"),
    "user_private_key": (False, "give the private key of the X.509 user login"),
}


def _security_file_problems(device: OpcUaDevice, where: str, config_dir: Path) -> list[str]:
    # Resolved like the driver resolves them, so a missing file is caught here and not at connect.
    problems = []
    secure = device.opcua.security_policy != "None"
    for field, (folder, fix) in _SECURITY_FILES.items():
        path: Path | None = getattr(device.opcua, field)
        if path is None or (not secure and not field.startswith("user_")):
            continue
        at = path if path.is_absolute() else config_dir / path
        kind = "folder" if folder else "file"
        try:
            if at.is_dir() if folder else at.is_file():
                continue
            state = "does not exist" if not at.exists() else f"is not a {kind}"
        except OSError as exc:  # a name too long, a loop of links: is_file() only hides some errors
            state = f"cannot be looked at ({exc.strerror or exc})"
        relative = "" if path.is_absolute() else " (relative to the config file's folder)"
        problems.append(f"{where}.opcua.{field}: {kind} '{path}'{relative} {state}; {fix}")
    return problems


def _server_trust_problems(opts: OpcUaOptions, where: str) -> list[str]:
    # The driver cannot open a signed channel without deciding whether to trust the server; say so
    # before starting, with the two ways out, rather than when the device's driver is built.
    if opts.security_mode == "None" or opts.trust_store is not None or opts.server_certificate is not None:
        return []
    return [
        f"{where}.opcua.trust_store: security mode {opts.security_mode} needs the server's "
        f"certificate to be trusted, and neither trust_store nor server_certificate is set; set "
        f"{where}.opcua.trust_store to a folder holding the server's (or its CA's) "
        f"certificate, or {where}.opcua.server_certificate to the server's certificate file"
    ]
