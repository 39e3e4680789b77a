"""Certificates for development and tests: the local development CA that `make cert` / `make up
TLS=1` create for the gateway, and throwaway CAs with server certificates for tests.

The development CA lives in one directory (``var/tls`` for `make up`): ``ca.pem`` (what clients
trust: REQUESTS_CA_BUNDLE, or the system store), ``ca-key.pem``, and the server certificate
``server.pem`` with its key ``server-key.pem``. The CA is made once and kept, so trusting it once
is enough; the server certificate is issued again when it nears its end or lacks a name the
gateway is reached at.
"""
from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import logging
import os
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

CA_NAME = "DSS local development CA"
CA_DAYS = 3650
SERVER_DAYS = 397          # the longest validity browsers and Apple clients accept for a leaf
RENEW_BEFORE_DAYS = 30
DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")


# --- the local development CA -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DevCertificate:
    ca_file: str      # the CA certificate clients trust
    cert_file: str    # the gateway's certificate (DSS_TLS_CERT_FILE)
    key_file: str     # its private key (DSS_TLS_KEY_FILE)


def _write(path: pathlib.Path, data: bytes, private: bool = False) -> None:
    """Write atomically (a reader never sees half a file); private files readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _alternative_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _issue_ca(key) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = _now()
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))


def _issue_server(names: tuple[str, ...], key, ca: x509.Certificate, ca_key) -> x509.Certificate:
    now = _now()
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([_alternative_name(n) for n in names]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))


def _server_certificate_fits(path: pathlib.Path, key_path: pathlib.Path, names: tuple[str, ...],
                             ca: x509.Certificate) -> bool:
    """Whether the certificate at ``path`` is ours, current, and names every one of ``names``."""
    if not path.exists() or not key_path.exists():
        return False
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
        ca.public_key().verify(certificate.signature, certificate.tbs_certificate_bytes,
                               ec.ECDSA(certificate.signature_hash_algorithm))
        covered = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:  # unreadable, another CA's, no SAN: issue a new one
        return False
    if certificate.not_valid_after_utc - _now() < datetime.timedelta(days=RENEW_BEFORE_DAYS):
        return False
    return all(_alternative_name(name) in covered for name in names)


def ensure_dev_certificate(directory: str | os.PathLike, names=DEFAULT_NAMES) -> DevCertificate:
    """The development CA and a server certificate for ``names`` (DNS names or IP addresses) in
    ``directory``, made if missing; idempotent. The CA is kept once made."""
    directory = pathlib.Path(directory)
    names = tuple(dict.fromkeys(n for n in names if n))
    if not names:
        raise ValueError("a server certificate needs at least one name")
    ca_path, ca_key_path = directory / "ca.pem", directory / "ca-key.pem"
    cert_path, key_path = directory / "server.pem", directory / "server-key.pem"
    if ca_path.exists() and ca_key_path.exists():
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _issue_ca(ca_key)
        _write(ca_key_path, _key_pem(ca_key), private=True)
        _write(ca_path, ca.public_bytes(serialization.Encoding.PEM))
        logger.info("created the development CA %s", ca_path)
    if not _server_certificate_fits(cert_path, key_path, names, ca):
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _issue_server(names, key, ca, ca_key)
        # The key first: a gateway re-reading the pair on the certificate's change finds both new.
        _write(key_path, _key_pem(key), private=True)
        _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
        logger.info("issued the server certificate %s for %s", cert_path, ", ".join(names))
    return DevCertificate(str(ca_path), str(cert_path), str(key_path))


# --- TLS certificates from a CA of the test's own ---------------------------------------------------

def _certificate(subject, issuer, public_key, signing_key, *, ca, names=(), addresses=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                        critical=True)
    else:
        alternative_names = [x509.DNSName(name) for name in names]
        alternative_names += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def issue_server_certificate(directory, names=(), addresses=()) -> tuple[str, str]:
    """A CA of the test's own and a server certificate it signed for ``names`` (DNS) and
    ``addresses`` (IP), as PEM files in ``directory``: (the CA bundle, the certificate followed by
    its private key, as ``SSLContext.load_cert_chain`` takes it)."""
    directory = pathlib.Path(directory)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test CA", "test CA", ca_key.public_key(), ca_key, ca=True)
    leaf = _certificate((list(names) + list(addresses))[0], "test CA", server_key.public_key(), ca_key, ca=False,
                        names=names, addresses=addresses)
    ca_path, server_path = directory / "ca.pem", directory / "server.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(ca_path), str(server_path)
