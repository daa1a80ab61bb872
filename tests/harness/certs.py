"""Test certificates made with `cryptography`: a CA, a server certificate for 127.0.0.1/localhost,
a client certificate for mutual TLS, and the bad ones negative tests need (expired, wrong host,
signed by an unrelated CA).

Every issued identity is written three ways: the certificate, the key, and a Kafka PEM keystore
(unencrypted PKCS#8 key followed by the certificate chain, which `ssl.keystore.type=PEM` reads
without a password). Certificates satisfy strict X.509 checking (key identifiers, critical basic
constraints, key usage), so clients that verify strictly accept the good ones for the right reason.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
_KEY_BITS = 2048


@dataclass(frozen=True, slots=True)
class Identity:
    """A key and its certificate on disk."""

    cert_file: Path
    key_file: Path
    keystore_file: Path  # key + chain in one PEM file, as Kafka's PEM keystore wants it


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    name: str
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    cert_file: Path

    def issue_server(self, directory: Path, stem: str = "server", hosts: tuple[str, ...] = LOOPBACK_HOSTS,
                     not_before: dt.datetime | None = None, not_after: dt.datetime | None = None) -> Identity:
        return self._issue(directory, stem, common_name=hosts[0], hosts=hosts, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                           not_before=not_before, not_after=not_after)

    def issue_client(self, directory: Path, stem: str = "client", common_name: str = "audit-shipper-test-client",
                     not_before: dt.datetime | None = None, not_after: dt.datetime | None = None) -> Identity:
        return self._issue(directory, stem, common_name=common_name, hosts=(), usage=ExtendedKeyUsageOID.CLIENT_AUTH,
                           not_before=not_before, not_after=not_after)

    def _issue(self, directory: Path, stem: str, *, common_name: str, hosts: tuple[str, ...],
               usage: x509.ObjectIdentifier, not_before: dt.datetime | None,
               not_after: dt.datetime | None) -> Identity:
        now = _now()
        key = rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(hours=1))
            .not_valid_after(not_after or now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(host) for host in hosts]),
                                            critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return _write_identity(directory, stem, key, [cert, self.cert])


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """What a TLS-enabled test broker and its clients need."""

    ca: CertificateAuthority
    server: Identity
    client: Identity

    @property
    def ca_file(self) -> Path:
        return self.ca.cert_file


def new_ca(directory: Path, name: str = "audit-shipper test CA", stem: str = "ca") -> CertificateAuthority:
    directory.mkdir(parents=True, exist_ok=True)
    now = _now()
    key = rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / f"{stem}.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CertificateAuthority(name=name, key=key, cert=cert, cert_file=cert_file)


def make_tls_material(directory: Path) -> TlsMaterial:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, all from that CA."""
    ca = new_ca(directory)
    return TlsMaterial(ca=ca, server=ca.issue_server(directory), client=ca.issue_client(directory))


def expired_server_identity(ca: CertificateAuthority, directory: Path) -> Identity:
    """Right hosts, right CA, but its validity ended yesterday."""
    now = _now()
    return ca.issue_server(directory, stem="server-expired", not_before=now - dt.timedelta(days=10),
                           not_after=now - dt.timedelta(days=1))


def wrong_host_server_identity(ca: CertificateAuthority, directory: Path) -> Identity:
    """Right CA, valid, but names a host that is not the one clients dial."""
    return ca.issue_server(directory, stem="server-wrong-host", hosts=("kafka.invalid", "192.0.2.10"))


def unrelated_ca(directory: Path) -> CertificateAuthority:
    """A second CA with no trust relation to the first: a server identity it issues must be refused by a
    client that trusts only the first."""
    return new_ca(directory, name="unrelated test CA", stem="ca-unrelated")


def _write_identity(directory: Path, stem: str, key: rsa.RSAPrivateKey, chain: list[x509.Certificate]) -> Identity:
    directory.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    chain_pem = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain)
    identity = Identity(cert_file=directory / f"{stem}.crt", key_file=directory / f"{stem}.key",
                        keystore_file=directory / f"{stem}.keystore.pem")
    identity.cert_file.write_bytes(chain_pem)
    identity.key_file.write_bytes(key_pem)
    identity.key_file.chmod(0o600)
    identity.keystore_file.write_bytes(key_pem + chain_pem)
    identity.keystore_file.chmod(0o600)
    return identity


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
