"""TLS for federation: a self-signed certificate when none is configured, and
the SSL contexts of the server and of the outgoing client.

A server that starts without a configured certificate generates a
self-signed one for its server name (and for ``localhost``, ``127.0.0.1``
and ``::1``, so loopback clients can verify it with the certificate itself
as their CA). Remote servers that verify certificates, as they should,
will refuse it; it is for development, tests and servers behind a
TLS-terminating proxy. The private key file is created readable by its
owner only, and an existing file is never overwritten.

Outgoing connections verify certificates by default. Tests and private
federations give a CA file, which then replaces the system's trust store
rather than adding to it, so that a test cannot pass by trusting some
public certificate by accident.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ranvier.federation._files import create_new_file
from ranvier.protocol.x_matrix import split_server_name

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "CertificateFileError",
    "client_ssl_context",
    "ensure_certificate",
    "generate_self_signed_certificate",
    "server_ssl_context",
]

#: How long a generated certificate is valid. Long, because nothing renews
#: it: an expired certificate would stop even loopback federation.
_VALIDITY: Final = datetime.timedelta(days=3650)
# Started in the past, so a peer whose clock is a little behind accepts it.
_BACKDATE: Final = datetime.timedelta(hours=1)
# Certificates allow at most 64 characters in a common name.
_MAX_COMMON_NAME: Final = 64
_ALPN: Final = ["h2", "http/1.1"]


class CertificateFileError(OSError):
    """A certificate or key file that is missing, unreadable or unusable.

    The message names the file, so the operator knows which one.
    """


def generate_self_signed_certificate(server_name: str) -> tuple[bytes, bytes]:
    """A new self-signed certificate for ``server_name``, in PEM.

    Returns ``(certificate, private_key)``. The certificate names the
    server's host (without port) and the loopback names; its key is a P-256
    ECDSA key, quick to generate and accepted by every TLS stack in use.
    Raises ValueError for a server name that breaks the grammar.
    """
    # Imported here: only a server without a certificate needs it, and it
    # costs every other server some 8 MiB of memory.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    host, _ = split_server_name(server_name)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for name in (host.strip("[]"), "localhost", "127.0.0.1", "::1"):
        general = _general_name(name)
        if general not in names:
            names.append(general)
    common_name = host if len(host) <= _MAX_COMMON_NAME else "ranvier self-signed"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _general_name(name: str) -> x509.GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def ensure_certificate(certificate_path: Path, private_key_path: Path, server_name: str) -> bool:
    """Generate a self-signed certificate into the two paths unless both exist.

    Returns True if it generated one. Missing parent directories are
    created. If only one of the files exists, it is not replaced (it may be
    the operator's real certificate or key) and
    :class:`CertificateFileError` names the missing one.
    """
    have_certificate = certificate_path.exists()
    have_key = private_key_path.exists()
    if have_certificate and have_key:
        return False
    if have_certificate or have_key:
        present, missing = (
            (certificate_path, private_key_path)
            if have_certificate
            else (private_key_path, certificate_path)
        )
        raise CertificateFileError(
            f"{missing} does not exist but {present} does; give both, or neither to have"
            " a self-signed certificate generated"
        )
    certificate, private_key = generate_self_signed_certificate(server_name)
    create_new_file(private_key_path, private_key, mode=0o600)
    try:
        create_new_file(certificate_path, certificate, mode=0o644)
    except BaseException:
        private_key_path.unlink(missing_ok=True)
        raise
    return True


def server_ssl_context(certificate_path: Path, private_key_path: Path) -> ssl.SSLContext:
    """The SSL context of a TLS listener: TLS 1.2 or later, HTTP/2 or 1.1.

    Raises :class:`CertificateFileError` naming the files if they cannot be
    loaded or do not belong together.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # HTTP/2 forbids TLS compression (RFC 9113 section 9.2.1).
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(_ALPN)
    try:
        context.load_cert_chain(certfile=certificate_path, keyfile=private_key_path)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateFileError(
            f"cannot load certificate {certificate_path} with key {private_key_path}: {exc}"
        ) from None
    return context


def client_ssl_context(*, verify: bool = True, ca_file: Path | None = None) -> ssl.SSLContext:
    """The SSL context for requests to other servers.

    With ``verify`` (the default) the peer's certificate must chain to a
    trusted CA and name the host: the system's CAs, or only those in
    ``ca_file`` if given. ``verify=False`` accepts any certificate and is
    for tests only.
    """
    if not verify:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_file is not None:
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise CertificateFileError(f"cannot load CA file {ca_file}: {exc}") from None
    else:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
