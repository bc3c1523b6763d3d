"""The one way every subcommand reaches a daemon: endpoint, TLS, credentials, as etcdctl has them.

Flags (and METASTORE_* variables): --cacert, --cert, --key, --insecure-skip-tls-verify,
--user NAME[:PASSWORD], --password. TLS is used when any TLS flag is given or an endpoint is
https://. With --user, the helper calls Authenticate and every call carries the token; a daemon
with auth off answers "authentication is not enabled" and the calls go without one, as clientv3
does. A password not given is asked for on the terminal.
"""

from __future__ import annotations

import functools
import getpass
import inspect
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import typer

from metastore_core.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

Metadata = list[tuple[str, str]]


def cacert_option() -> Any:
    return typer.Option(
        "",
        "--cacert",
        envvar="METASTORE_CACERT",
        help="Verify the daemon's certificate with this CA bundle.",
        metavar="PATH",
    )


def cert_option() -> Any:
    return typer.Option(
        "", "--cert", envvar="METASTORE_CERT", help="Client certificate (mutual TLS).", metavar="PATH"
    )


def key_option() -> Any:
    return typer.Option(
        "", "--key", envvar="METASTORE_KEY", help="Key of the client certificate.", metavar="PATH"
    )


def insecure_option() -> Any:
    return typer.Option(
        False,
        "--insecure-skip-tls-verify",
        envvar="METASTORE_INSECURE_SKIP_TLS_VERIFY",
        help="TLS without checking the daemon's certificate (trust what it presents).",
    )


def user_option() -> Any:
    return typer.Option(
        "", "--user", envvar="METASTORE_USER", help="User to authenticate as.", metavar="NAME[:PASSWORD]"
    )


def password_option() -> Any:
    return typer.Option(
        "", "--password", envvar="METASTORE_PASSWORD", help="Password of --user.", metavar="PASSWORD"
    )


@dataclass(frozen=True)
class Credentials:
    """What the TLS and auth flags say."""

    cacert: str = ""
    cert: str = ""
    key: str = ""
    insecure_skip_tls_verify: bool = False
    user: str = ""
    password: str = ""
    tls: bool = False  # an https:// endpoint was given

    @property
    def secure(self) -> bool:
        return self.tls or bool(self.cacert or self.cert or self.key or self.insecure_skip_tls_verify)


def credentials(
    endpoints: str,
    cacert: str = "",
    cert: str = "",
    key: str = "",
    insecure_skip_tls_verify: bool = False,
    user: str = "",
    password: str = "",
) -> Credentials:
    """The flags, checked (etcdctl's rules: --cert and --key together)."""
    if bool(cert) != bool(key):
        raise typer.BadParameter("--cert and --key go together", param_hint="--cert/--key")
    https = any(e.strip().startswith("https://") for e in endpoints.split(","))
    return Credentials(cacert, cert, key, insecure_skip_tls_verify, user, password, https)


F = TypeVar("F", bound=Callable[..., Any])
_TLS = {
    "cacert": cacert_option,
    "cert": cert_option,
    "key": key_option,
    "insecure_skip_tls_verify": insecure_option,
}
_AUTH = {"user": user_option, "password": password_option}


def with_credentials(auth: bool = True) -> Callable[[F], F]:
    """Give a command the TLS flags (and --user/--password when auth): it gets `creds` instead.

    The command must take `endpoints` and `creds: Credentials`; typer sees the flags.
    """
    flags = {**_TLS, **(_AUTH if auth else {})}

    def wrap(fn: F) -> F:
        sig = inspect.signature(fn)
        kept = [p for name, p in sig.parameters.items() if name != "creds"]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=make(), annotation=_kind(name))
            for name, make in flags.items()
        ]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in flags}
            # a bad combination is a usage error: one line and exit 2, as every other one
            kwargs["creds"] = credentials(kwargs["endpoints"], **given)
            return fn(**kwargs)

        command.__signature__ = sig.replace(parameters=[*kept, *added])  # type: ignore[attr-defined]
        command.__annotations__ = {
            **{k: v for k, v in fn.__annotations__.items() if k != "creds"},
            **{name: _kind(name) for name in flags},
        }
        return command  # type: ignore[return-value]

    return wrap


def _kind(name: str) -> type:
    return bool if name == "insecure_skip_tls_verify" else str


@dataclass
class Connection:
    """A ready channel and the metadata every call carries (the auth token)."""

    channel: grpc.Channel
    metadata: Metadata = field(default_factory=list)

    def close(self) -> None:
        self.channel.close()


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"{path}: {exc.strerror}") from None


def _presented(endpoint: str) -> tuple[bytes, str]:
    """The certificate the daemon presents, and a name in it to check it against."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    host, port = endpoint.rsplit(":", 1)
    pem = ssl.get_server_certificate((host.strip("[]"), int(port)), timeout=5).encode()
    cert = x509.load_pem_x509_certificate(pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = sans.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    cn = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return pem, (dns or cn or [host])[0]


def channel(endpoint: str, creds: Credentials, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A channel to endpoint (HOST:PORT), with TLS when the credentials ask for it."""
    opts = list(options or [])
    if not creds.secure:
        return grpc.insecure_channel(endpoint, options=opts)
    root = _read(creds.cacert) if creds.cacert else None
    if creds.insecure_skip_tls_verify:
        root, name = _presented(endpoint)
        opts.append(("grpc.ssl_target_name_override", name))
    tls = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=_read(creds.key) if creds.key else None,
        certificate_chain=_read(creds.cert) if creds.cert else None,
    )
    return grpc.secure_channel(endpoint, tls, options=opts)


def _password(creds: Credentials) -> tuple[str, str]:
    name, colon, password = creds.user.partition(":")
    if colon:
        return name, password
    if creds.password:
        return name, creds.password
    if not sys.stdin.isatty():
        raise typer.BadParameter("no password: give --user NAME:PASSWORD or --password", param_hint="--user")
    return name, getpass.getpass("Password: ")


def dial(
    endpoint: str, creds: Credentials, timeout: float, options: list[tuple[str, Any]] | None = None
) -> Connection:
    """A ready, authenticated connection; grpc.FutureTimeoutError when it is not ready in time,
    grpc.RpcError when Authenticate fails."""
    ch = channel(endpoint, creds, options)
    try:
        grpc.channel_ready_future(ch).result(timeout=timeout)
        conn = Connection(ch)
        if creds.user:
            name, password = _password(creds)
            try:
                resp = rpc_pb2_grpc.AuthStub(ch).Authenticate(
                    rpc_pb2.AuthenticateRequest(name=name, password=password), timeout=timeout
                )
                conn.metadata = [("token", resp.token)]
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:  # auth is off: go without
                    raise
    except BaseException:
        ch.close()
        raise
    return conn
