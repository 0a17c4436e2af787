"""OPC UA security for real: every policy and mode, server trust, user tokens, refusals with clear errors."""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent import certs
from edge_agent.config import ConfigError, parse_config
from edge_agent.drivers.opcua.config import OpcUaDevice
from edge_agent.drivers.opcua.driver import OpcUaConfigError, OpcUaDriver, OpcUaRefused
from edge_agent.simulators.imm import ImmSimulator
from edge_agent.simulators.opcua_server import SimSecurity, make_self_signed
from edge_agent.types import Quality

pytestmark = pytest.mark.asyncio(loop_scope="module")
PASSWORD_ENV = "EDGE_TEST_OPCUA_PASSWORD"


@dataclass
class Pki:
    """Files of the secure setup: client and user certificates, the server's, a trust store."""

    root: Path
    client_cert: Path
    client_key: Path
    user_cert: Path
    user_key: Path
    server_cert: Path
    trusted: Path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure_imm(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[ImmSimulator, Pki]]:
    """A machine offering only secure endpoints, a user/password and an X.509 user; no anonymous logins."""
    root = tmp_path_factory.mktemp("pki")
    client_cert, client_key = root / "client-cert.der", root / "client-key.pem"
    certs.create_certificate(client_cert, client_key, "urn:edge-agent:client")
    user_cert, user_key = root / "user-cert.der", root / "user-key.pem"
    certs.create_certificate(user_cert, user_key, "urn:edge-agent:user")
    security = SimSecurity.secure(
        root / "server",
        "urn:edge-agent:sim:imm:server",
        users={"operator": "s3cret"},
        allow_anonymous=False,
        user_certificates=[user_cert],
    )
    assert security.certificate is not None
    trusted = root / "trusted"
    trusted.mkdir()
    shutil.copy(security.certificate, trusted / "imm-server.der")
    sim = ImmSimulator(speed=10.0, cycle_s=2.0, security=security)
    await sim.start()
    yield sim, Pki(root, client_cert, client_key, user_cert, user_key, security.certificate, trusted)
    await sim.stop()


def secure_device(sim: ImmSimulator, pki: Pki, **opcua: object) -> OpcUaDevice:
    """The shipped IMM config with a secure [devices.opcua] table."""
    table: dict[str, object] = {
        "certificate": str(pki.client_cert),
        "private_key": str(pki.client_key),
        "trust_store": str(pki.trusted),
        **opcua,
    }
    table = {k: v for k, v in table.items() if v is not None}
    device = parse_config(sim.device_config(opcua=table), base_dir=pki.root).devices[0]
    assert isinstance(device, OpcUaDevice)
    return device


async def read_mode(device: OpcUaDevice, pki: Pki) -> float:
    """Connect, read machine_mode once, close."""
    rows = {name: i for i, name in enumerate(device.signal_names())}
    driver = OpcUaDriver(device, rows, config_dir=pki.root)
    await driver.connect()
    try:
        batch = await driver.read(driver.groups()[0])
    finally:
        await driver.close()
    assert batch.quality[batch.signal == rows["machine_mode"]][0] == Quality.GOOD
    return float(batch.value[batch.signal == rows["machine_mode"]][0])


@pytest.mark.parametrize("policy", ["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"])
async def test_each_policy_sign_and_encrypt_with_password(
    secure_imm: tuple[ImmSimulator, Pki], policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim, pki = secure_imm
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    device = secure_device(
        sim,
        pki,
        security_policy=policy,
        security_mode="SignAndEncrypt",
        username="operator",
        password=f"${{{PASSWORD_ENV}}}",
    )
    assert await read_mode(device, pki) == 1.0


@pytest.mark.parametrize("policy", ["Basic256Sha256", "Aes256_Sha256_RsaPss"])
async def test_sign_only_with_user_certificate(secure_imm: tuple[ImmSimulator, Pki], policy: str) -> None:
    sim, pki = secure_imm
    device = secure_device(
        sim,
        pki,
        security_policy=policy,
        security_mode="Sign",
        user_certificate=str(pki.user_cert),
        user_private_key=str(pki.user_key),
        trust_store=None,
        server_certificate=str(pki.server_cert),  # pinned instead of a trust store
    )
    assert await read_mode(device, pki) == 1.0


async def test_untrusted_server_is_refused(
    secure_imm: tuple[ImmSimulator, Pki], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim, pki = secure_imm
    other = tmp_path / "trusted"
    make_self_signed(other / "someone-else.der", tmp_path / "k.pem", "urn:other", server=True)
    device = secure_device(
        sim,
        pki,
        trust_store=str(other),
        user_certificate=str(pki.user_cert),
        user_private_key=str(pki.user_key),
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(
        OpcUaRefused, match=r"server certificate is not trusted .*thumbprint [0-9a-f]{40}.*trust_store"
    ):
        await read_mode(device, pki)
    # the refusal is the one message; asyncua's own verification traceback would only confuse
    assert [r.getMessage() for r in caplog.records if r.name.startswith("asyncua") and r.levelno >= 30] == []
    assert not any(r.exc_info for r in caplog.records)
    pinned_wrong = secure_device(
        sim,
        pki,
        trust_store=None,
        server_certificate=str(other / "someone-else.der"),
        user_certificate=str(pki.user_cert),
        user_private_key=str(pki.user_key),
    )
    with pytest.raises(OpcUaRefused, match="not trusted"):
        await read_mode(pinned_wrong, pki)


async def test_empty_trust_store_is_refused_with_the_way_out(
    secure_imm: tuple[ImmSimulator, Pki], tmp_path: Path
) -> None:
    sim, pki = secure_imm
    empty = tmp_path / "trusted"
    empty.mkdir()
    device = secure_device(sim, pki, trust_store=str(empty))
    server_cert = certs.load_certificate(pki.server_cert)
    with pytest.raises(OpcUaRefused) as info:
        await read_mode(device, pki)
    thumbprint = certs.describe(server_cert).rsplit(" ", 1)[-1]
    assert str(info.value) == (
        f"the server certificate is not trusted (subject {server_cert.subject.rfc4514_string()}, "
        f"SHA-1 thumbprint {thumbprint}); if this is the right server, pin it with server_certificate "
        f"or copy it into trust_store {empty}"
    )


async def test_anonymous_refused_where_credentials_are_required(secure_imm: tuple[ImmSimulator, Pki]) -> None:
    sim, pki = secure_imm
    device = secure_device(sim, pki)
    with pytest.raises(OpcUaRefused, match="does not accept this kind of login"):
        await read_mode(device, pki)


async def test_wrong_password_refused(
    secure_imm: tuple[ImmSimulator, Pki], monkeypatch: pytest.MonkeyPatch
) -> None:
    sim, pki = secure_imm
    monkeypatch.setenv(PASSWORD_ENV, "guess")
    device = secure_device(sim, pki, username="operator", password=f"${{{PASSWORD_ENV}}}")
    with pytest.raises(OpcUaRefused, match="refused the user name or password"):
        await read_mode(device, pki)


async def test_policy_none_refused_when_server_does_not_offer_it(
    secure_imm: tuple[ImmSimulator, Pki],
) -> None:
    sim, pki = secure_imm
    device = parse_config(sim.device_config(), base_dir=pki.root).devices[0]  # the shipped insecure variant
    assert isinstance(device, OpcUaDevice)
    with pytest.raises(
        OpcUaRefused, match=r"offers no endpoint with None/None; it offers .*Basic256Sha256/SignAndEncrypt"
    ):
        await read_mode(device, pki)


async def test_insecure_setups_are_refused_before_connecting(secure_imm: tuple[ImmSimulator, Pki]) -> None:
    sim, pki = secure_imm
    with pytest.raises(ConfigError, match="refused over a channel that is not encrypted"):
        parse_config(
            sim.device_config(
                opcua={
                    "security_mode": "Sign",
                    "certificate": "c.der",
                    "private_key": "k.pem",
                    "username": "operator",
                    "password": "${HOME}",
                }
            )
        )
    with pytest.raises(ConfigError, match="allow_insecure"):
        parse_config(sim.device_config(opcua={"security_policy": "None", "security_mode": "None"}))
    for mode in ("Sign", "SignAndEncrypt"):
        with pytest.raises(ConfigError) as info:
            secure_device(sim, pki, trust_store=None, security_mode=mode)
        assert info.value.problems == [
            f"devices[0].opcua.trust_store: security mode {mode} needs the server's certificate to be "
            "trusted, and neither trust_store nor server_certificate is set; set devices[0].opcua.trust_store "
            "to a folder holding the server's (or its CA's) certificate, or "
            "devices[0].opcua.server_certificate to the server's certificate file"
        ]
    # a device built without the config's check (by code) is still refused by the driver
    no_trust = secure_device(sim, pki).model_copy(
        update={"opcua": secure_device(sim, pki).opcua.model_copy(update={"trust_store": None})}
    )
    with pytest.raises(OpcUaConfigError, match=r"server_certificate.*trust_store"):
        OpcUaDriver(no_trust, {n: i for i, n in enumerate(no_trust.signal_names())}, config_dir=pki.root)


async def test_certs_command_makes_a_usable_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert certs.main(["create", "--out", str(tmp_path), "--uri", "urn:acme:gateway-7"]) == 0
    cert = certs.load_certificate(tmp_path / "client-cert.der")
    assert "urn:acme:gateway-7" in certs.describe(cert)
    assert (tmp_path / "client-key.pem").stat().st_mode & 0o777 == 0o600
    assert certs.main(["create", "--out", str(tmp_path)]) == 2  # never overwrites silently
    assert "already exist" in capsys.readouterr().err
    assert certs.main(["show", str(tmp_path / "client-cert.der")]) == 0
    assert "SHA-1 thumbprint" in capsys.readouterr().out


def write_certificate(
    cert_file: Path,
    key_file: Path,
    uri: str,
    not_before: datetime,
    not_after: datetime,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None,
    ca: bool = False,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """An OPC UA server (or CA) certificate with the given validity dates, self-signed or issued by `issuer`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA" if ca else "imm-server")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    else:
        usage = x509.KeyUsage(True, True, True, True, False, False, False, False, False)
        builder = builder.add_extension(usage, critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        san = [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if issuer:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key())
        builder = builder.add_extension(aki, critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


NOW = datetime.now(UTC).replace(microsecond=0)
#: kind -> (not_valid_before, not_valid_after, trusted through a CA rather than a copy of the certificate)
OUT_OF_DATE = {
    "expired": (NOW - timedelta(days=800), NOW - timedelta(days=35), False),
    "not_yet_valid": (NOW + timedelta(days=2), NOW + timedelta(days=700), False),
    "expired_issued_by_trusted_ca": (NOW - timedelta(days=800), NOW - timedelta(days=35), True),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=sorted(OUT_OF_DATE))
async def out_of_date_imm(
    request: pytest.FixtureRequest,
    secure_imm: tuple[ImmSimulator, Pki],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ImmSimulator, Pki, str]]:
    """A secure machine whose certificate is trusted but outside its validity dates."""
    _, pki = secure_imm
    kind: str = request.param
    not_before, not_after, via_ca = OUT_OF_DATE[kind]
    tmp_path = tmp_path_factory.mktemp(kind)
    server_dir, trusted = tmp_path / "server", tmp_path / "trusted"
    uri = "urn:edge-agent:sim:imm:server"
    issuer = None
    if via_ca:
        # the CA is valid now: only the certificate it issued is out of date
        issuer = write_certificate(
            trusted / "ca.der",
            tmp_path / "ca-key.pem",
            uri,
            NOW - timedelta(days=900),
            NOW + timedelta(days=900),
            ca=True,
        )
    write_certificate(
        server_dir / "server-cert.der", server_dir / "server-key.pem", uri, not_before, not_after, issuer
    )
    if not via_ca:
        trusted.mkdir()
        shutil.copy(server_dir / "server-cert.der", trusted / "imm-server.der")
    security = SimSecurity.secure(server_dir, uri, users={"operator": "s3cret"}, allow_anonymous=True)
    sim = ImmSimulator(speed=10.0, cycle_s=2.0, security=security)
    await sim.start()
    yield (
        sim,
        Pki(
            pki.root,
            pki.client_cert,
            pki.client_key,
            pki.user_cert,
            pki.user_key,
            server_dir / "server-cert.der",
            trusted,
        ),
        kind,
    )
    await sim.stop()


async def test_out_of_date_server_certificate_is_refused_with_its_dates(
    out_of_date_imm: tuple[ImmSimulator, Pki, str],
) -> None:
    sim, pki, kind = out_of_date_imm
    not_before, not_after, _ = OUT_OF_DATE[kind]
    device = secure_device(sim, pki)
    server_cert = certs.load_certificate(pki.server_cert)
    with pytest.raises(OpcUaRefused) as info:
        await read_mode(device, pki)
    state = "not yet valid" if kind == "not_yet_valid" else "expired"
    clock = "check this computer's clock, or " if kind == "not_yet_valid" else ""
    thumbprint = certs.describe(server_cert).rsplit(" ", 1)[-1]
    message = str(info.value)
    now = message.split(", now ", 1)[1].split(" UTC", 1)[0]
    assert abs(
        datetime.strptime(now, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) - datetime.now(UTC)
    ) < timedelta(minutes=5)
    assert message == (
        f"the server certificate (subject {server_cert.subject.rfc4514_string()}, SHA-1 thumbprint "
        f"{thumbprint}) is {state}: not_valid_before {not_before:%Y-%m-%d %H:%M:%S} UTC, "
        f"not_valid_after {not_after:%Y-%m-%d %H:%M:%S} UTC, now {now} UTC; {clock}renew the certificate "
        "on the server and trust the new one, or set allow_expired_server_certificate = true in the "
        "device's [devices.opcua] to accept it"
    )


async def test_out_of_date_server_certificate_allowed_explicitly_warns_at_each_connect(
    out_of_date_imm: tuple[ImmSimulator, Pki, str], caplog: pytest.LogCaptureFixture
) -> None:
    sim, pki, kind = out_of_date_imm
    not_before, not_after, _ = OUT_OF_DATE[kind]
    device = secure_device(sim, pki, allow_expired_server_certificate=True)
    caplog.set_level(logging.WARNING, logger="edge_agent.drivers.opcua")
    assert await read_mode(device, pki) == 1.0
    assert await read_mode(device, pki) == 1.0
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "edge_agent.drivers.opcua" and r.levelno == logging.WARNING
    ]
    state = "not yet valid" if kind == "not_yet_valid" else "expired"
    dates = f"not_valid_before {not_before:%Y-%m-%d %H:%M:%S} UTC, not_valid_after {not_after:%Y-%m-%d %H:%M:%S} UTC"
    assert len(warnings) == 2, warnings
    for warning in warnings:
        assert warning.startswith(f"{device.name}: the server certificate (subject ")
        assert f") is {state}: {dates}, now " in warning
        assert warning.endswith("; accepted (allow_expired_server_certificate = true)")


async def test_untrusted_out_of_date_certificate_is_refused_as_untrusted(
    out_of_date_imm: tuple[ImmSimulator, Pki, str], tmp_path: Path
) -> None:
    """Allowing an expired certificate never trusts it: trust is checked first."""
    sim, pki, _ = out_of_date_imm
    other = tmp_path / "other"
    make_self_signed(other / "someone-else.der", tmp_path / "k.pem", "urn:other", server=True)
    device = secure_device(sim, pki, trust_store=str(other), allow_expired_server_certificate=True)
    with pytest.raises(OpcUaRefused, match="the server certificate is not trusted"):
        await read_mode(device, pki)
