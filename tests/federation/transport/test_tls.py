import datetime
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ranvier.federation.transport.tls import (
    CertificateFileError,
    client_ssl_context,
    ensure_certificate,
    generate_self_signed_certificate,
    server_ssl_context,
)


def _names(certificate: x509.Certificate) -> tuple[list[str], list[str]]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        san.get_values_for_type(x509.DNSName),
        [str(address) for address in san.get_values_for_type(x509.IPAddress)],
    )


def test_certificate_names_the_host_and_loopback() -> None:
    certificate_pem, key_pem = generate_self_signed_certificate("matrix.example.org:8448")
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    key = load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert certificate.public_key() == key.public_key()
    assert _names(certificate) == (["matrix.example.org", "localhost"], ["127.0.0.1", "::1"])
    common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [attribute.value for attribute in common_name] == ["matrix.example.org"]
    assert certificate.issuer == certificate.subject
    now = datetime.datetime.now(datetime.UTC)
    assert certificate.not_valid_before_utc < now < certificate.not_valid_after_utc
    assert certificate.not_valid_after_utc - now > datetime.timedelta(days=365)
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage


@pytest.mark.parametrize(
    ("server_name", "dns", "ips"),
    [
        ("localhost:8448", ["localhost"], ["127.0.0.1", "::1"]),
        ("127.0.0.1:8448", ["localhost"], ["127.0.0.1", "::1"]),
        ("10.1.2.3", ["localhost"], ["10.1.2.3", "127.0.0.1", "::1"]),
        ("[2001:db8::1]:8448", ["localhost"], ["2001:db8::1", "127.0.0.1", "::1"]),
    ],
)
def test_ip_literal_server_names_become_ip_names(
    server_name: str, dns: list[str], ips: list[str]
) -> None:
    certificate = x509.load_pem_x509_certificate(generate_self_signed_certificate(server_name)[0])
    found_dns, found_ips = _names(certificate)
    assert found_dns == dns
    assert sorted(found_ips) == sorted(ips)


def test_long_host_names_keep_the_full_name_in_the_san() -> None:
    host = "a" * 70 + ".example.org"
    certificate = x509.load_pem_x509_certificate(generate_self_signed_certificate(host)[0])
    assert _names(certificate)[0][0] == host
    common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert len(str(common_name[0].value)) <= 64


def test_bad_server_name() -> None:
    with pytest.raises(ValueError, match="not allowed in a host name"):
        generate_self_signed_certificate("bad_name")


def test_ensure_certificate_creates_once_with_private_key_file(tmp_path: Path) -> None:
    certificate = tmp_path / "data" / "tls.crt"
    key = tmp_path / "data" / "tls.key"
    assert ensure_certificate(certificate, key, "localhost:8448") is True
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(certificate.stat().st_mode) == 0o644
    before = (certificate.read_bytes(), key.read_bytes())
    assert ensure_certificate(certificate, key, "localhost:8448") is False
    assert (certificate.read_bytes(), key.read_bytes()) == before
    # The pair loads as a server context.
    server_ssl_context(certificate, key)


def test_ensure_certificate_never_replaces_one_of_a_pair(tmp_path: Path) -> None:
    certificate, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    key.write_bytes(b"the operator's key")
    with pytest.raises(CertificateFileError, match=f"{certificate} does not exist but {key}"):
        ensure_certificate(certificate, key, "localhost")
    assert key.read_bytes() == b"the operator's key"
    assert not certificate.exists()
    key.unlink()
    certificate.write_bytes(b"cert")
    with pytest.raises(CertificateFileError, match=f"{key} does not exist but {certificate}"):
        ensure_certificate(certificate, key, "localhost")


def test_server_context_refuses_mismatched_files(tmp_path: Path) -> None:
    ensure_certificate(tmp_path / "a.crt", tmp_path / "a.key", "localhost")
    ensure_certificate(tmp_path / "b.crt", tmp_path / "b.key", "localhost")
    with pytest.raises(CertificateFileError, match=f"cannot load certificate {tmp_path / 'a.crt'}"):
        server_ssl_context(tmp_path / "a.crt", tmp_path / "b.key")
    with pytest.raises(CertificateFileError, match="cannot load certificate"):
        server_ssl_context(tmp_path / "missing.crt", tmp_path / "b.key")


def test_server_context_settings(tmp_path: Path) -> None:
    ensure_certificate(tmp_path / "a.crt", tmp_path / "a.key", "localhost")
    context = server_ssl_context(tmp_path / "a.crt", tmp_path / "a.key")
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION


def test_client_context_verifies_by_default(tmp_path: Path) -> None:
    context = client_ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2

    ensure_certificate(tmp_path / "a.crt", tmp_path / "a.key", "localhost")
    with_ca = client_ssl_context(ca_file=tmp_path / "a.crt")
    assert with_ca.verify_mode == ssl.CERT_REQUIRED
    # The CA file replaces the system's trust store.
    assert with_ca.cert_store_stats()["x509"] == 1

    unverified = client_ssl_context(verify=False)
    assert unverified.verify_mode == ssl.CERT_NONE
    assert unverified.check_hostname is False

    with pytest.raises(CertificateFileError, match="cannot load CA file"):
        client_ssl_context(ca_file=tmp_path / "missing.pem")
