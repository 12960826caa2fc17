"""The node's HTTPS certificate: the admin's own (``<config-dir>/console/cert.pem`` and
``key.pem``), or one the node makes on its first start — self-signed, ECDSA P-256, ten years,
naming the node and its addresses — so that the console is never served in the clear."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def certificate_paths(config_dir: str | Path) -> tuple[Path, Path]:
    folder = Path(config_dir, "console")
    return folder / "cert.pem", folder / "key.pem"


def ensure_certificate(
    config_dir: str | Path, node: str, addresses: list[str]
) -> tuple[Path, Path]:
    """The certificate and key to serve; made (and said) if there is none."""
    cert_path, key_path = certificate_paths(config_dir)
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tandem node {node}")])
    alternatives: list[x509.GeneralName] = [x509.DNSName(node), x509.DNSName("localhost")]
    for address in addresses:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            alternatives.append(x509.DNSName(address))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def fingerprint(cert_path: Path) -> str:
    """SHA-256 of the certificate, as browsers show it (to check a first connection)."""
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    digest = certificate.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
