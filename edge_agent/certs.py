"""`edge-agent certs`: make and inspect OPC UA application certificates (self-signed, RSA-2048, SHA-256)."""

from __future__ import annotations

import argparse
import hashlib
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

DEFAULT_URI = "urn:edge-agent:client"


def create_certificate(
    cert_file: Path,
    key_file: Path,
    application_uri: str = DEFAULT_URI,
    *,
    host_name: str | None = None,
    days: int = 730,
    server: bool = False,
) -> x509.Certificate:
    """Write a self-signed application instance certificate (DER) and its private key (PEM, mode 600).

    The application URI goes into the subjectAltName, where OPC UA servers check it against the
    client's ApplicationUri (`opcua.application_uri` in the agent config).
    """
    host = host_name or socket.gethostname()
    key = cert_gen.generate_private_key()
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri), x509.DNSName(host)]
    use = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = cert_gen.generate_self_signed_app_certificate(
        key, application_uri, {}, alt_names, extended=[use], days=days
    )
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_bytes(cert_gen.dump_private_key_as_pem(key))
    key_file.chmod(0o600)
    cert_file.write_bytes(cert.public_bytes(Encoding.DER))
    return cert


def load_certificate(path: Path) -> x509.Certificate:
    """Read a DER or PEM certificate; ValueError names the file when it is neither."""
    data = path.read_bytes()
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ValueError(f"{path}: not a DER or PEM certificate ({exc})") from None


def describe(cert: x509.Certificate) -> str:
    """Subject, application URI, validity and SHA-1 thumbprint (what OPC UA tools show) of a certificate."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        dns = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        uris, dns = [], []
    der = cert.public_bytes(Encoding.DER)
    return "\n".join(
        [
            f"subject:         {cert.subject.rfc4514_string()}",
            f"application URI: {', '.join(uris) or '(none)'}",
            f"host names:      {', '.join(dns) or '(none)'}",
            f"valid:           {cert.not_valid_before_utc:%Y-%m-%d} .. {cert.not_valid_after_utc:%Y-%m-%d}",
            f"SHA-1 thumbprint: {hashlib.sha1(der).hexdigest()}",  # OPC UA names certificates by SHA-1
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`edge-agent certs create|show ...`."""
    parser = argparse.ArgumentParser(prog="edge-agent certs", description="OPC UA application certificates.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("create", help="make a self-signed client certificate and key")
    p.add_argument("--out", type=Path, default=Path("pki"), help="folder for the files (default: pki)")
    p.add_argument("--name", default="client", help="file name stem: NAME-cert.der, NAME-key.pem")
    p.add_argument("--uri", default=DEFAULT_URI, help=f"application URI (default {DEFAULT_URI})")
    p.add_argument("--host", help="host name in the certificate (default: this machine's)")
    p.add_argument("--days", type=int, default=730, help="validity in days (default 730)")
    p.add_argument("--server", action="store_true", help="make a server certificate instead")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p = sub.add_parser("show", help="print subject, application URI, validity and thumbprint")
    p.add_argument("file", type=Path, help="certificate (DER or PEM)")
    args = parser.parse_args(argv)
    if args.action == "show":
        try:
            print(describe(load_certificate(args.file)))
        except (OSError, ValueError) as exc:
            print(f"edge-agent certs show: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.days < 1:
        parser.error("--days must be at least 1")
    cert_file = args.out / f"{args.name}-cert.der"
    key_file = args.out / f"{args.name}-key.pem"
    existing = [str(f) for f in (cert_file, key_file) if f.exists()]
    if existing and not args.force:
        print(
            f"edge-agent certs create: {', '.join(existing)} already exist; use --force to replace "
            "(servers that trusted the old certificate must then trust the new one)",
            file=sys.stderr,
        )
        return 2
    cert = create_certificate(
        cert_file, key_file, args.uri, host_name=args.host, days=args.days, server=args.server
    )
    print(f"wrote {cert_file} and {key_file}")
    print(describe(cert))
    print(
        f'In the device config: certificate = "{cert_file}", private_key = "{key_file}", '
        f'application_uri = "{args.uri}"; copy {cert_file} into the server\'s trusted clients.'
    )
    return 0
