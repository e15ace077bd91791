"""A federation's X.509 PKI: one CA, the aggregator's server certificate, one certificate per party.

Every party certificate names the party (subject common name = party id) and carries the party's
Ed25519 *protocol identity* — the key SecAgg signs its key advertisements with — in a non-critical
extension, so the CA's signature binds the TLS identity and the protocol identity together: whoever
the aggregator accepts over mutual TLS as ``hospital-a`` is the party whose signatures the other
parties verify as ``hospital-a``. TLS keys are ECDSA P-256 (what every TLS stack speaks); all of it
is built with ``cryptography``'s X.509 API.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securefl.crypto.keyfiles import private_directory, read_private, write_private
from securefl.durable import require_absent, write_new
from securefl.errors import ConfigError, WireError
from securefl.wire import check_name

# A UUID-derived OID (ITU-T X.667 arc 2.25), minted for this extension: the party's Ed25519 key.
IDENTITY_OID = x509.ObjectIdentifier("2.25.214329866375373125366214812372412357473")
DEFAULT_DAYS = 365


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(days: int, not_before: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    return start, start + dt.timedelta(days=days)


def create_ca(federation: str, days: int = DEFAULT_DAYS) -> Issued:
    """A self-signed CA for one federation; it signs only this federation's certificates."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"{federation} federation CA", federation)
    start, end = _validity(days, None)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(
    ca: Issued,
    common_name: str,
    *,
    server_names: tuple[str, ...] = (),
    identity: Ed25519PublicKey | None = None,
    days: int = DEFAULT_DAYS,
    not_before: dt.datetime | None = None,
) -> Issued:
    """A leaf certificate signed by ``ca``: a server's (``server_names``: DNS names or IP addresses
    it is reached at) or a party's (``identity``: its Ed25519 protocol key)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days, not_before)
    organisation = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, str(organisation)))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
    )
    if server_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(_alt_names(server_names)), critical=False)
    if identity is not None:
        raw = identity.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        builder = builder.add_extension(x509.UnrecognizedExtension(IDENTITY_OID, raw), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _check_names(federation: str, server_names: tuple[str, ...]) -> None:
    """The names a ceremony puts in certificates, checked before anything is made (found by an
    attacker: a non-ASCII server name failed after the CA key was written, and a re-run was then
    refused; a long federation name failed deep inside X.509)."""
    if not isinstance(federation, str) or not 1 <= len(federation) <= _MAX_FEDERATION_NAME:
        raise ConfigError(
            f"keys tls: --federation must be 1 to {_MAX_FEDERATION_NAME} characters (it names the CA in "
            f"X.509, whose names hold 64), got {federation!r}"
        )
    if not server_names:
        raise ConfigError("keys tls: --server-names needs at least one DNS name or IP address")
    for name in server_names:
        try:
            ipaddress.ip_address(name)
            continue
        except ValueError:
            pass
        if not (name.isascii() and name.isprintable() and name and " " not in name and len(name) <= 253):
            raise ConfigError(
                f"keys tls: server name {name!r} is not an IP address or an ASCII DNS name (write an "
                "internationalised name in its xn-- form)"
            )


_MAX_FEDERATION_NAME = 40  # the CA's common name is "<federation> federation CA": 64 at most


def _alt_names(names: tuple[str, ...]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


@dataclass(frozen=True)
class PartyCertificate:
    """What a verified party certificate says: who, with which protocol key, until when."""

    party: str
    identity: bytes  # raw Ed25519 public key
    not_after: dt.datetime
    fingerprint: str  # SHA-256 of the DER certificate, hex


def read_public_file(path: str | Path, what: str) -> bytes:
    """A certificate file: read only if it is a regular file (a FIFO or a device would block the
    reader for ever — found by an attacker — and a directory is named). Links are followed:
    certificates are public, and often linked from a system store."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {str(path)!r} ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{what}: {str(path)!r} is not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            if sum(map(len, chunks)) > _MAX_PEM_BYTES:
                raise ConfigError(
                    f"{what}: {str(path)!r} is larger than any certificate ({_MAX_PEM_BYTES} bytes)"
                )
        return b"".join(chunks)
    finally:
        os.close(fd)


_MAX_PEM_BYTES = 1 << 20


def check_tls_pair(cert_pem: bytes, key_pem: bytes, ca_pem: bytes, server: bool, where: str) -> None:
    """Refuse, naming the files, a TLS key that is not the certificate's own, a certificate this CA
    did not issue, or one of the other side's kind (a party's certificate on the aggregator, the
    aggregator's on a party): each otherwise surfaced only as a failed listen or connection."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        raise ConfigError(f"{where}: the certificate or the CA is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: the key is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ConfigError(
            f"{where}: the key is not this certificate's key (another party's, an identity key, or the "
            "CA's?): give the key issued with the certificate (securefl keys tls: private/NAME.key)"
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(f"{where}: the certificate was not issued by this federation's CA") from None
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = []
    wanted = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    if wanted not in usages:
        side = "the aggregator's (aggregator.pem)" if server else "this party's (parties/NAME.pem)"
        raise ConfigError(f"{where}: the certificate is not {side}; it is {common_name(cert)!r}")


def verify_party_certificate(
    cert_pem: bytes, ca_pem: bytes, now: dt.datetime | None = None
) -> PartyCertificate:
    """Check that ``cert_pem`` is a party certificate issued by this federation's CA and valid now;
    raise ConfigError naming what is wrong."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise ConfigError(f"not a PEM certificate: {exc}") from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(
            f"certificate {common_name(cert)!r} was not issued by this federation's CA ({common_name(ca)!r})"
        ) from None
    now = now or dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ConfigError(
            f"certificate {common_name(cert)!r} is valid from {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}, not now: issue a new one (securefl keys tls)"
        )
    try:
        raw = cert.extensions.get_extension_for_oid(IDENTITY_OID).value.value
        Ed25519PublicKey.from_public_bytes(raw)
    except (x509.ExtensionNotFound, ValueError):
        raise ConfigError(
            f"certificate {common_name(cert)!r} carries no protocol identity: it is not a party certificate"
        ) from None
    return PartyCertificate(
        common_name(cert),
        bytes(raw),
        cert.not_valid_after_utc,
        cert.fingerprint(hashes.SHA256()).hex(),
    )


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def load_identity(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(read_private(path, "identity key"), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key")
    return key


def write_federation(
    out: Path,
    federation: str,
    parties: list[str],
    server_names: tuple[str, ...] = ("127.0.0.1", "localhost"),
    days: int = DEFAULT_DAYS,
) -> dict[str, str]:
    """The files of ``securefl keys tls``: the CA, the aggregator's and every party's certificate
    (public, under ``out``) and their keys (0600, under ``out/private``: hand each party only its own).
    Refuses to overwrite an existing CA key: certificates already handed out would stop verifying."""
    out = Path(out)
    private = out / "private"
    if not parties or len(set(parties)) != len(parties):
        raise ConfigError("keys tls needs distinct party ids")
    for party in parties:
        # A party id names its files: one such as "../../x" wrote keys outside --out (found by an
        # attacker). Party ids are the wire's names anyway: letters, digits, '_', '.', ':', '-'.
        try:
            check_name(party, "party id")
        except WireError as exc:
            raise ConfigError(f"keys tls: {exc}") from None
    if type(days) is not int or not 1 <= days <= 36500:
        raise ConfigError(f"keys tls: --days must be a whole number of days from 1 to 36500, got {days!r}")
    _check_names(federation, server_names)
    # Every file, checked before any is made: the guard was the CA key alone, so moving it offline
    # after the ceremony (good practice) let a re-run silently re-mint every issued key (attacker).
    targets = [out / "ca.pem", out / "aggregator.pem", private / "ca.key", private / "aggregator.key"]
    for party in parties:
        targets += [out / "parties" / f"{party}.pem", private / f"{party}.key"]
        targets.append(private / f"{party}.identity.key")
    if len(set(targets)) != len(targets) or {"ca", "aggregator"} & set(parties):
        # Two files of one path (party "ca" and the CA's key, parties "a" and "a.identity"): the run
        # would fail half-made, and a re-run be refused (found by an attacker).
        raise ConfigError(
            "keys tls: party ids 'ca' and 'aggregator' are reserved, and no id may be another's followed "
            "by '.identity': their files would share a path"
        )
    require_absent(targets, "keys tls")
    ca = create_ca(federation, days)
    server = issue(ca, "aggregator", server_names=server_names, days=days)
    (out / "parties").mkdir(parents=True, exist_ok=True)
    private_directory(private, tighten=True)
    write_private(private / "ca.key", ca.key_pem, overwrite=False)
    write_new(out / "ca.pem", ca.cert_pem)
    write_new(out / "aggregator.pem", server.cert_pem)
    write_private(private / "aggregator.key", server.key_pem, overwrite=False)
    for party in parties:
        identity = Ed25519PrivateKey.generate()
        leaf = issue(ca, party, identity=identity.public_key(), days=days)
        write_new(out / "parties" / f"{party}.pem", leaf.cert_pem)
        write_private(private / f"{party}.key", leaf.key_pem, overwrite=False)
        write_private(private / f"{party}.identity.key", _key_pem(identity), overwrite=False)
    return {
        "ca": str(out / "ca.pem"),
        "aggregator": str(out / "aggregator.pem"),
        "parties": str(out / "parties"),
    }
