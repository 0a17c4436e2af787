"""Shared plumbing of the OPC UA simulators: server security, simulated clock, faults, restarts, device configs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import socket
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from asyncua import Server, ua
from asyncua.crypto import cert_gen, uacrypto
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge_agent.simulators.command import cannot_listen, fault_list

log = logging.getLogger(__name__)

#: The shipped device configs (config/ in the sources), package data of the wheel: read as data, not imported.
CONFIG_DIR = resources.files("edge_agent") / "builtin"

#: Security policy names as in the agent config -> asyncua endpoint types (Sign, SignAndEncrypt).
POLICY_TYPES: dict[str, tuple[ua.SecurityPolicyType, ua.SecurityPolicyType]] = {
    "Basic256Sha256": (
        ua.SecurityPolicyType.Basic256Sha256_Sign,
        ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ),
    "Aes128_Sha256_RsaOaep": (
        ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
        ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ),
    "Aes256_Sha256_RsaPss": (
        ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
        ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
    ),
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def make_self_signed(
    cert_file: Path,
    key_file: Path,
    application_uri: str,
    *,
    server: bool,
    host_name: str | None = None,
    days: int = 365,
) -> None:
    """Write a self-signed OPC UA application certificate (DER) and its RSA-2048 key (PEM)."""
    host = host_name or socket.gethostname()
    key = cert_gen.generate_private_key()
    names: list[Any] = [
        cert_gen.x509.UniformResourceIdentifier(application_uri),
        cert_gen.x509.DNSName(host),
    ]
    if host != "localhost":
        names.append(cert_gen.x509.DNSName("localhost"))
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        application_uri,
        {},
        names,
        extended=[ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH],
        days=days,
    )
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_bytes(cert_gen.dump_private_key_as_pem(key))
    key_file.chmod(0o600)
    cert_file.write_bytes(cert.public_bytes(Encoding.DER))


@dataclass
class SimSecurity:
    """Security of a simulator's endpoints: policies offered, server certificate, who may log in."""

    policies: tuple[str, ...] = ("None",)
    """Offered policies: "None" and/or Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss (Sign and SignAndEncrypt each)."""
    certificate: Path | None = None
    """Server certificate (DER); needed for any policy but None."""
    private_key: Path | None = None
    """Server private key (PEM)."""
    users: dict[str, str] = field(default_factory=dict)
    """User name -> password accepted for user-name logins."""
    allow_anonymous: bool = True
    """Accept anonymous logins."""
    user_certificates: tuple[Path, ...] = ()
    """Certificates accepted for X.509 user logins."""

    @classmethod
    def secure(
        cls,
        pki_dir: Path,
        application_uri: str,
        *,
        users: Mapping[str, str] | None = None,
        allow_anonymous: bool = False,
        user_certificates: Iterable[Path] = (),
        policies: Iterable[str] = tuple(POLICY_TYPES),
    ) -> SimSecurity:
        """All secure policies, a server certificate made in `pki_dir` if missing, the given users."""
        cert = pki_dir / "server-cert.der"
        key = pki_dir / "server-key.pem"
        if not (cert.is_file() and key.is_file()):
            make_self_signed(cert, key, application_uri, server=True)
        return cls(
            policies=tuple(policies),
            certificate=cert,
            private_key=key,
            users=dict(users or {}),
            allow_anonymous=allow_anonymous,
            user_certificates=tuple(user_certificates),
        )


class _SimUserManager(UserManager):
    """Checks logins against SimSecurity: anonymous, user name/password, X.509 user certificate."""

    def __init__(self, security: SimSecurity, user_certs: list[bytes]) -> None:
        self.security = security
        self.user_certs = user_certs

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        """The user for a login, or None to refuse it."""
        if username:
            ok = self.security.users.get(username) == password
            return User(role=UserRole.User, name=username) if ok else None
        # asyncua passes the channel's client certificate here too, so a certificate alone is not an X.509 login.
        if certificate:
            der = certificate if isinstance(certificate, bytes) else uacrypto.der_from_x509(certificate)
            if der in self.user_certs:
                return User(role=UserRole.User, name="x509")
        return User(role=UserRole.User, name="anonymous") if self.security.allow_anonymous else None


def to_datavalue(value: Any, vtype: ua.VariantType, when: datetime) -> ua.DataValue:
    """A DataValue with a source timestamp, as a PLC would report it."""
    stamp: Any = when  # asyncua annotates timestamps with its own DateTime alias of datetime
    return ua.DataValue(ua.Variant(value, vtype), SourceTimestamp=stamp, ServerTimestamp=stamp)


def nid(identifier: int | str, ns_index: int) -> ua.NodeId:
    """A NodeId from plain Python values (asyncua annotates its constructor with its own UA scalar types)."""
    return ua.NodeId(identifier, ns_index)  # type: ignore[arg-type]


class OpcUaSimulator:
    """Base of a simulated machine: an asyncua server on a free port, a simulated clock, faults, restarts.

    Subclasses set `kind`, `FAULTS`, `namespace_uris()`, build the address space in `build()`,
    advance the physics in `advance(dt_s)` and write the values in `publish()`.
    """

    kind: ClassVar[str] = "sim"
    default_port: ClassVar[int] = 4840
    FAULTS: ClassVar[dict[str, str]] = {}
    """Fault name -> what it does and its parameters (`edge-agent simulate KIND --help` lists them)."""
    tick_s: float = 0.1

    def __init__(
        self,
        *,
        speed: float = 1.0,
        seed: int = 0,
        faults: Iterable[str] = (),
        security: SimSecurity | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0 (simulated seconds per wall second), got {speed}")
        self.speed = speed
        self.rng = np.random.default_rng(seed)
        self.security = security or SimSecurity()
        self.faults: dict[str, dict[str, Any]] = {}
        self.sim_time_s = 0.0
        for fault in faults:
            name, _, params = fault.partition(":")
            self.set_fault(name, True, **_parse_params(params))
        self.host = "127.0.0.1"
        self.port = 0
        self.endpoint = ""
        self.application_uri = f"urn:edge-agent:sim:{self.kind}:server"
        self.server: Server | None = None
        self.ns: dict[str, int] = {}
        self.restarts = 0
        self._reordered = False
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ subclass hooks

    def namespace_uris(self) -> list[str]:
        """Namespace URIs the address space uses, in normal registration order."""
        return [self.application_uri]

    async def build(self, server: Server) -> None:
        """Create the address space; `self.ns` maps each URI to its index on this start."""

    def advance(self, dt_s: float) -> None:
        """Advance the process by `dt_s` simulated seconds."""

    async def publish(self, server: Server) -> None:
        """Write the current values (and fire events) on the running server."""

    # ------------------------------------------------------------------ public API

    def set_fault(self, name: str, on: bool = True, **params: Any) -> None:
        """Switch a fault on (with parameters) or off; unknown names raise with the list of known ones."""
        if name not in self.FAULTS:
            raise ValueError(f"unknown {self.kind} fault {name!r}; known: {', '.join(sorted(self.FAULTS))}")
        if on:
            self.faults[name] = {"since_s": self.sim_time_s, **params}
        else:
            self.faults.pop(name, None)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving on host:port (0 = a free port) and return the endpoint URL."""
        self.host = host
        self.port = port or free_port(host)
        self.endpoint = f"opc.tcp://{host}:{self.port}/{self.kind}"
        await self._start_server()
        self._task = asyncio.create_task(self._run(), name=f"sim-{self.kind}")
        return self.endpoint

    async def restart(self, reorder_namespaces: bool = False, downtime_s: float = 0.0) -> None:
        """Stop the server, wait `downtime_s`, start it again (with namespaces registered in another order)."""
        await self._stop_server()
        if downtime_s > 0:
            await asyncio.sleep(downtime_s)
        if reorder_namespaces:
            self._reordered = not self._reordered
        self.restarts += 1
        await self._start_server()

    async def stop_server(self) -> None:
        """Take the server down while the machine keeps running (an outage); `resume_server()` brings it back."""
        await self._stop_server()

    async def resume_server(self) -> None:
        """Start the server again after `stop_server()`."""
        if self.server is None:
            self.restarts += 1
            await self._start_server()

    async def stop(self) -> None:
        """Stop the process loop and the server."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stop_server()

    def monitored_item_count(self) -> int:
        """Monitored items on the running server, over all sessions (tests check re-subscription creates no duplicates)."""
        if self.server is None:
            return 0
        subs = self.server.iserver.subscription_service.subscriptions.values()
        return sum(len(s.monitored_item_srv._monitored_items) for s in subs)

    def device_config(
        self,
        opcua: Mapping[str, Any] | None = None,
        name: str | None = None,
        endpoint: str | None = None,
        poll_interval: float | None = None,
    ) -> str:
        """The shipped config/<kind>.toml pointed at this server; `opcua` replaces its [devices.opcua] table."""
        text = (CONFIG_DIR / f"{self.kind}.toml").read_text(encoding="utf-8")
        text = re.sub(r'(?m)^endpoint = ".*"$', f'endpoint = "{endpoint or self.endpoint}"', text, count=1)
        if name is not None:
            text = re.sub(r'(?m)^name = ".*"$', f'name = "{name}"', text, count=1)
        if poll_interval is not None:
            text = re.sub(r"(?m)^poll_interval = .*$", f"poll_interval = {poll_interval!r}", text, count=1)
        if opcua is not None:
            table = "[devices.opcua]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in opcua.items())
            text, n = re.subn(r"(?ms)^\[devices\.opcua\]\n.*?(?=^\[)", table + "\n", text, count=1)
            if n != 1:
                raise ValueError(f"config/{self.kind}.toml has no [devices.opcua] table to replace")
        return text

    # ------------------------------------------------------------------ internals

    async def _start_server(self) -> None:
        server = Server(user_manager=None)
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"edge-agent simulated {self.kind}")
        await server.set_application_uri(self.application_uri)
        await self._apply_security(server)
        uris = self.namespace_uris()
        if self._reordered:
            # A server that loads its companion specs in another order after an update or restart.
            uris = [f"urn:edge-agent:sim:{self.kind}:padding", *reversed(uris)]
        self.ns = {uri: await server.register_namespace(uri) for uri in uris}
        await self.build(server)
        # asyncua logs a failed bind with its traceback before raising the OSError, which says it all
        server_log = logging.getLogger("asyncua.server.server")
        level = server_log.level
        server_log.setLevel(logging.CRITICAL)
        try:
            await server.start()
        finally:
            server_log.setLevel(level)
        self.server = server
        await self.publish(server)
        log.info("%s simulator serving %s (namespaces %s)", self.kind, self.endpoint, self.ns)

    async def _apply_security(self, server: Server) -> None:
        sec = self.security
        types: list[ua.SecurityPolicyType] = []
        for policy in sec.policies:
            if policy == "None":
                types.append(ua.SecurityPolicyType.NoSecurity)
            elif policy in POLICY_TYPES:
                types.extend(POLICY_TYPES[policy])
            else:
                raise ValueError(
                    f"unknown security policy {policy!r}; known: None, {', '.join(POLICY_TYPES)}"
                )
        if any(p != "None" for p in sec.policies):
            if sec.certificate is None or sec.private_key is None:
                raise ValueError("a secure simulator endpoint needs SimSecurity.certificate and private_key")
            await server.load_certificate(str(sec.certificate))
            await server.load_private_key(str(sec.private_key))
        server.set_security_policy(types)
        tokens: list[type] = []
        if sec.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        if sec.users:
            tokens.append(ua.UserNameIdentityToken)
        if sec.user_certificates:
            tokens.append(ua.X509IdentityToken)
        server.set_identity_tokens(tokens)
        user_certs = [
            uacrypto.der_from_x509(await uacrypto.load_certificate(str(p))) for p in sec.user_certificates
        ]
        server.iserver.set_user_manager(_SimUserManager(sec, user_certs))

    async def _stop_server(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            dt = (now - last) * self.speed
            last = now
            self.sim_time_s += dt
            self.advance(dt)
            server = self.server
            if server is None:
                continue
            try:
                await self.publish(server)
            except Exception:
                # A restart can pull the server away mid-write; the next tick writes again.
                log.debug("%s: publish failed", self.kind, exc_info=True)


def _parse_params(text: str) -> dict[str, Any]:
    """`rate=0.05,zone=2` -> {"rate": 0.05, "zone": 2}."""
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, raw = item.partition("=")
        try:
            out[key.strip()] = int(raw)
        except ValueError:
            try:
                out[key.strip()] = float(raw)
            except ValueError:
                out[key.strip()] = raw.strip()
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def simulator_main(cls: type[OpcUaSimulator], argv: list[str] | None, description: str) -> int:
    """Command line of a simulator: `edge-agent simulate <kind> [--port N] [--speed X] [--fault F] [--secure DIR]`."""
    parser = argparse.ArgumentParser(
        prog=f"edge-agent simulate {cls.kind}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=fault_list(cls.FAULTS),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=cls.default_port,
        help=f"TCP port (0 = any free port; default {cls.default_port}, as in config/{cls.kind}.toml)",
    )
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall-clock second")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        help="inject a fault from the start, NAME or NAME:key=value,... (repeatable; listed below)",
    )
    parser.add_argument(
        "--secure",
        metavar="PKI_DIR",
        type=Path,
        help="offer only secure endpoints; the server certificate is made in PKI_DIR (trust it in the agent)",
    )
    parser.add_argument(
        "--user", action="append", default=[], help="accept a login USER:PASSWORD (repeatable)"
    )
    parser.add_argument("--print-config", action="store_true", help="print the device config and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # asyncua logs every node it loads at INFO (~1,100 lines at start); its warnings still show
    # (`edge-agent simulate --log-level asyncua=INFO` has set its level already: that one stays)
    if logging.getLogger("asyncua").level == logging.NOTSET:
        logging.getLogger("asyncua").setLevel(logging.WARNING)
    users = dict(u.split(":", 1) for u in args.user if ":" in u)
    security = None
    if args.secure is not None:
        security = SimSecurity.secure(
            args.secure, f"urn:edge-agent:sim:{cls.kind}:server", users=users, allow_anonymous=not users
        )
    elif users:
        parser.error("--user needs --secure (passwords are not sent over an unencrypted channel)")
    try:
        sim = cls(speed=args.speed, seed=args.seed, faults=args.fault, security=security)
    except ValueError as exc:
        parser.error(str(exc))

    async def run() -> None:
        endpoint = await sim.start(args.host, args.port)
        if args.print_config:
            print(sim.device_config())
            await sim.stop()
            return
        print(f"{cls.kind} simulator on {endpoint} (speed x{args.speed}); Ctrl-C to stop", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await sim.stop()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(cannot_listen(cls.kind, args.host, args.port, exc), file=sys.stderr)
        return 2
    return 0


def now_utc() -> datetime:
    """The wall-clock time the simulators stamp values with."""
    return datetime.now(UTC)
