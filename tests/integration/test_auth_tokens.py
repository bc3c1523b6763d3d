"""Token providers: JWT as etcd signs it, simple tokens' TTL, and the --auth-token spec."""

from __future__ import annotations

from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from metastore_core.config import Config
from metastore_core.member.tokens import SimpleTokens, make_provider
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc
from metastore_core.server.app import Server
from metastore_core.tokenspec import parse_options

from conftest import free_port


def _keys(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = tmp / "jwt.key", tmp / "jwt.pub"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub


async def test_jwt_tokens_carry_etcds_claims_and_go_stale_on_auth_changes(tmp_path: Path) -> None:
    priv, pub = _keys(tmp_path)
    cfg = Config(
        backend="memory",
        bcrypt_cost=4,
        auth_token=f"jwt,pub-key={pub},priv-key={priv},sign-method=ES256,ttl=1m",
        listen_client_urls=[f"http://127.0.0.1:{free_port()}"],
        listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
    )
    server = Server(cfg)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ports[0]}") as ch:
            auth, kv = rpc_pb2_grpc.AuthStub(ch), rpc_pb2_grpc.KVStub(ch)
            await auth.UserAdd(pb.AuthUserAddRequest(name="root", password="pw"))
            await auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"))
            await auth.AuthEnable(pb.AuthEnableRequest())
            token = (await auth.Authenticate(pb.AuthenticateRequest(name="root", password="pw"))).token
            claims = jwt.decode(token, pub.read_bytes(), algorithms=["ES256"])
            assert claims["username"] == "root" and claims["revision"] > 1 and claims["exp"] > 0
            md = [("token", token)]
            await kv.Put(pb.PutRequest(key=b"k", value=b"v"), metadata=md)
            await auth.RoleAdd(pb.AuthRoleAddRequest(name="r"), metadata=md)  # the auth revision moves on
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await kv.Put(pb.PutRequest(key=b"k", value=b"w"), metadata=md)
            assert (info.value.code(), info.value.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "etcdserver: revision of auth store is old",
            )
            forged = jwt.encode(
                {"username": "root", "revision": 99, "exp": 2**40},
                "a guessed secret, long enough for HS256!",
                algorithm="HS256",
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await kv.Put(pb.PutRequest(key=b"k", value=b"w"), metadata=[("token", forged)])
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop()


def test_simple_tokens_expire_without_use_and_renew_on_use() -> None:
    now = [0.0]
    tokens = SimpleTokens(ttl_s=300, clock=lambda: now[0])
    token = tokens.assign("alice", 5)
    assert len(token.split(".")[0]) == 16 and token != tokens.assign("alice", 5)
    now[0] = 299
    info = tokens.info(token, 7)
    assert info is not None and (info.user, info.auth_revision) == ("alice", 7)  # the revision now
    now[0] = 598  # used at 299: still alive
    assert tokens.info(token, 7) is not None
    now[0] = 899
    assert tokens.info(token, 7) is None
    other = tokens.assign("bob", 5)
    tokens.invalidate_user("bob")
    assert tokens.info(other, 5) is None


def test_token_specs(tmp_path: Path) -> None:
    assert parse_options("simple") == ("simple", {})
    kind, opts = parse_options("jwt,pub-key=/a,priv-key=/b,sign-method=EdDSA,ttl=10m")
    assert kind == "jwt" and opts["sign-method"] == "EdDSA"
    for bad in ("jwt", "jwt,priv-key=/b", "jwt,pub-key=/a,sign-method=HS256", "simple,ttl=1", "bogus"):
        with pytest.raises(ValueError):
            parse_options(bad)
    _, pub = _keys(tmp_path)
    (tmp_path / "other").mkdir()
    other, _ = _keys(tmp_path / "other")
    with pytest.raises(ValueError, match="don't match"):
        make_provider(f"jwt,pub-key={pub},priv-key={other},sign-method=ES256", 300, lambda: 0.0)
    verify_only = make_provider(f"jwt,pub-key={pub},sign-method=ES256", 300, lambda: 0.0)
    with pytest.raises(ValueError, match="verify-only"):
        verify_only.assign("root", 1)
