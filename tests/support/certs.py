"""Self-signed test certificates: one small CA per test session, and leaf certificates it
signs, written as cert-manager mounts a TLS Secret (`tls.crt`, `tls.key`)."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import pathlib
import ssl
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclasses.dataclass(frozen=True)
class Leaf:
    cert_pem: bytes
    key_pem: bytes
    serial: int

    def write(self, folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
        """Write tls.crt/tls.key into `folder` as the kubelet updates a Secret volume: the
        files are links into a `..data` folder that is swapped in one rename, so a reader
        never sees a new certificate with an old key. Returns the two paths."""
        return write_pair(folder, self.cert_pem, self.key_pem)


def write_pair(
    folder: pathlib.Path, cert_pem: bytes, key_pem: bytes
) -> tuple[pathlib.Path, pathlib.Path]:
    folder.mkdir(parents=True, exist_ok=True)
    version = folder / f"..{time.time_ns()}"
    version.mkdir()
    for name, data in (("tls.crt", cert_pem), ("tls.key", key_pem)):
        (version / name).write_bytes(data)
    link = folder / "..data_tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(version.name)
    link.replace(folder / "..data")
    paths = folder / "tls.crt", folder / "tls.key"
    for path in paths:
        if not path.is_symlink():
            path.symlink_to(f"..data/{path.name}")
    return paths


@dataclasses.dataclass(frozen=True)
class CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    pem: bytes

    def issue(self, *names: str, common_name: str | None = None) -> Leaf:
        """A server certificate for DNS names and IP addresses."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name or names[0]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return Leaf(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key), serial)

    def client_context(self) -> ssl.SSLContext:
        """What a client that trusts this CA (and checks host names) uses."""
        ctx = ssl.create_default_context(cadata=self.pem.decode())
        return ctx

    def write(self, path: pathlib.Path) -> pathlib.Path:
        path.write_bytes(self.pem)
        path.chmod(0o644)
        return path


def make_ca(common_name: str = "mailwarden test CA") -> CA:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CA(cert, key, cert.public_bytes(serialization.Encoding.PEM))


def served_serial(der: bytes | None) -> int:
    """The serial number of a certificate as `SSLSocket.getpeercert(binary_form=True)` gives
    it."""
    assert der is not None, "the server sent no certificate"
    return x509.load_der_x509_certificate(der).serial_number
