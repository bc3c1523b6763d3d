"""TLS for the client (gRPC) and metrics (HTTP) ports: certificates, mutual TLS, reloads.

The certificate set comes from --cert-file/--key-file (and --trusted-ca-file for client
certificates), or is made at start-up with --auto-tls (self-signed, kept in
<data-dir>/fixtures/client as etcd keeps it). Both ports serve the same set, as etcd's metrics
URLs do. Certificates are re-read on SIGHUP and when the files change (checked every few
seconds), without a restart: gRPC asks for the new set at each handshake (grpc's dynamic
credentials), the HTTP port's SSLContext loads it in place. A set that fails to load is logged
and the old one kept. Connections already open keep the certificate they began with.

TLS 1.2 is the minimum on both ports and only AEAD ciphers with forward secrecy are offered
(grpc-core's defaults; the same list for the HTTP port).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger("metastore.tls")

CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"  # TLS 1.2 suites; TLS 1.3's are all AEAD


@dataclass(frozen=True)
class TLSFiles:
    """Where the certificate set lives."""

    cert: Path
    key: Path
    ca: Path | None = None  # trusted CA for client certificates
    client_cert_auth: bool = False  # require (and verify) a client certificate


@dataclass(frozen=True)
class _Loaded:
    cert: bytes
    key: bytes
    ca: bytes | None
    stamp: tuple[tuple[int, int], ...]


def _stamp(files: TLSFiles) -> tuple[tuple[int, int], ...]:
    paths = [files.cert, files.key, *([files.ca] if files.ca else [])]
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


class Certificates:
    """The live certificate set of both ports."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self.reloads = 0
        self._now = self._read()  # raises at start-up: a bad set never starts serving
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._contexts: list[ssl.SSLContext] = []

    def _read(self) -> _Loaded:
        f = self.files
        stamp = _stamp(f)
        loaded = _Loaded(f.cert.read_bytes(), f.key.read_bytes(), f.ca.read_bytes() if f.ca else None, stamp)
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        probe.load_cert_chain(f.cert, f.key)  # refuses a key that does not match its certificate
        if f.ca is not None:
            probe.load_verify_locations(cafile=str(f.ca))
        return loaded

    def _grpc_config(self, loaded: _Loaded) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(loaded.key, loaded.cert)], root_certificates=loaded.ca
        )

    def reload(self, force: bool = False) -> bool:
        """Re-read the files if they changed (or when forced); True when a new set is in use."""
        try:
            if not force and _stamp(self.files) == self._now.stamp:
                return False
            loaded = self._read()
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("TLS certificates not reloaded, keeping the current ones: %s", exc)
            return False
        self._now = loaded
        self._pending = self._grpc_config(loaded)
        for ctx in self._contexts:
            self._load_into(ctx)
        self.reloads += 1
        log.info("TLS certificates reloaded from %s", self.files.cert)
        return True

    # ------------------------------------------------------------------ gRPC
    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by grpc-core at every handshake: a new set once, else None (keep the current)."""
        pending, self._pending = self._pending, None
        return pending

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._grpc_config(self._now),
            self._fetch,
            require_client_authentication=self.files.client_cert_auth,
        )

    # ------------------------------------------------------------------ HTTP
    def _load_into(self, ctx: ssl.SSLContext) -> None:
        ctx.load_cert_chain(self.files.cert, self.files.key)
        if self.files.ca is not None:
            ctx.load_verify_locations(cafile=str(self.files.ca))

    def ssl_context(self) -> ssl.SSLContext:
        """A server context for the HTTP port, kept current by reload()."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(CIPHERS)
        ctx.options |= ssl.OP_NO_COMPRESSION
        self._load_into(ctx)
        if self.files.client_cert_auth:
            ctx.verify_mode = ssl.CERT_REQUIRED
        self._contexts.append(ctx)
        return ctx


def auto_tls(directory: Path, hosts: list[str]) -> TLSFiles:
    """--auto-tls: a self-signed certificate for hosts, made once and kept in directory."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if cert.exists() and key.exists():
        return TLSFiles(cert, key)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for host in dict.fromkeys([*hosts, "127.0.0.1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "metastore autogenerated cert")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))  # etcd's self-signed certs: 1 year
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    log.warning("--auto-tls: serving a self-signed certificate made at %s", cert)
    return TLSFiles(cert, key)
