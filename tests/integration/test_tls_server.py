"""TLS on both ports, in-process, with a CA made in the test: mutual TLS, CN as the user, rotation."""

from __future__ import annotations

import asyncio
import socket
import ssl
import warnings
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from metastore_cli.connect import Credentials, dial
from metastore_core.config import Config
from metastore_core.pb.authpb import auth_pb2 as apb
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc
from metastore_core.server.app import Server
from tests.tlskit import CA, Pair

from conftest import free_port


def _creds(ca: Path, client: Pair | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        ca.read_bytes(),
        client.key.read_bytes() if client else None,
        client.cert.read_bytes() if client else None,
    )


def _serial(port: int, ca: Path, client: Pair, tls: ssl.TLSVersion | None = None) -> int:
    """The serial of the certificate the port presents to a new connection."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(client.cert, client.key)
    if tls is not None:
        ctx.minimum_version = ctx.maximum_version = tls
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        der = s.getpeercert(binary_form=True)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        if not reply:  # TLS 1.3: the server checks the client's certificate after the client is done
            raise ConnectionError("closed without a reply")
        assert reply.startswith(b"HTTP/1.1 200 "), reply
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


async def test_mutual_tls_cn_as_user_and_certificate_rotation(tmp_path: Path) -> None:
    ca = CA(tmp_path / "ca")
    server_pair = ca.issue("server", server=True)
    root, alice = ca.issue("root"), ca.issue("alice")
    stranger = CA(tmp_path / "other", "other-ca").issue("alice")
    port, metrics = free_port(), free_port()
    cfg = Config(
        backend="memory",
        bcrypt_cost=4,
        listen_client_urls=[f"https://127.0.0.1:{port}"],
        listen_metrics_urls=[f"https://127.0.0.1:{metrics}"],
        cert_file=str(server_pair.cert),
        key_file=str(server_pair.key),
        trusted_ca_file=str(ca.cert),
        client_cert_auth=True,
    )
    server = Server(cfg)
    await server.start()
    target = f"127.0.0.1:{port}"
    try:
        # refused: no client certificate, or one from another CA
        for bad in (None, stranger):
            async with grpc.aio.secure_channel(target, _creds(ca.cert, bad)) as ch:
                err = await _refused(rpc_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(key=b"k"), timeout=3))
                assert err.code() == grpc.StatusCode.UNAVAILABLE
        # users without passwords, known by their certificate's CN
        async with grpc.aio.secure_channel(target, _creds(ca.cert, root)) as ch:
            auth = rpc_pb2_grpc.AuthStub(ch)
            nopw = apb.UserAddOptions(no_password=True)
            for name in ("root", "alice"):
                await auth.UserAdd(pb.AuthUserAddRequest(name=name, options=nopw))
            await auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"))
            await auth.RoleAdd(pb.AuthRoleAddRequest(name="app"))
            perm = apb.Permission(permType=apb.Permission.READWRITE, key=b"app/", range_end=b"app0")
            await auth.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="app", perm=perm))
            await auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="alice", role="app"))
            await auth.AuthEnable(pb.AuthEnableRequest())
            assert list((await auth.UserList(pb.AuthUserListRequest())).users) == ["alice", "root"]
            err = await _refused(auth.Authenticate(pb.AuthenticateRequest(name="alice", password="")))
            assert err.details() == "etcdserver: authentication failed, invalid user ID or password"
        async with grpc.aio.secure_channel(target, _creds(ca.cert, alice)) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            await kv.Put(pb.PutRequest(key=b"app/x", value=b"1"))
            err = await _refused(kv.Put(pb.PutRequest(key=b"other", value=b"1")))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            err = await _refused(rpc_pb2_grpc.AuthStub(ch).UserList(pb.AuthUserListRequest()))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED

        # the metrics port: the same certificates, TLS 1.2 at least, a client certificate required
        before = await asyncio.to_thread(_serial, metrics, ca.cert, alice)
        assert before == server_pair.serial
        with pytest.raises(ssl.SSLError), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # asking for TLS 1.1 is the point
            await asyncio.to_thread(_serial, metrics, ca.cert, alice, ssl.TLSVersion.TLSv1_1)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.to_thread(_serial, metrics, ca.cert, stranger)

        # rotation: new files are picked up without a restart, on both ports
        rotated = ca.issue("server", server=True)
        for _ in range(100):
            if await asyncio.to_thread(_serial, metrics, ca.cert, alice) == rotated.serial:
                break
            await asyncio.sleep(0.1)
        assert await asyncio.to_thread(_serial, metrics, ca.cert, alice) == rotated.serial
        assert server.tls is not None and server.tls.reloads == 1
        async with grpc.aio.secure_channel(target, _creds(ca.cert, alice)) as ch:
            await rpc_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(key=b"app/x"))
        presented = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", port))
        assert x509.load_pem_x509_certificate(presented.encode()).serial_number == rotated.serial
    finally:
        await server.stop()


async def test_auto_tls_and_an_https_url_without_a_certificate(tmp_path: Path) -> None:
    port = free_port()
    cfg = Config(
        backend="memory",
        auto_tls=True,
        listen_client_urls=[f"https://127.0.0.1:{port}"],
        listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
    )
    server = Server(cfg)
    await server.start()
    try:
        # the CLI's --insecure-skip-tls-verify: trust the certificate the daemon presents
        skip = Credentials(insecure_skip_tls_verify=True)
        conn = await asyncio.to_thread(dial, f"127.0.0.1:{port}", skip, 5.0)
        try:
            stub = rpc_pb2_grpc.KVStub(conn.channel)
            await asyncio.to_thread(stub.Put, pb.PutRequest(key=b"k", value=b"v"), timeout=5)
        finally:
            conn.close()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:  # plaintext: no answer
            err = await _refused(rpc_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(key=b"k"), timeout=2))
            assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        await server.stop()
    bare = Config(backend="memory", listen_client_urls=[f"https://127.0.0.1:{free_port()}"])
    with pytest.raises(ValueError, match="need --cert-file"):
        await Server(bare).start()
