"""The --auth-token option as etcd spells it: `simple`, or `jwt,pub-key=PATH,priv-key=PATH,...`.

Parsed here, below the member, so the configuration can check it (member/tokens.py builds the
provider from it).
"""

from __future__ import annotations

JWT_METHODS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
DEFAULT_JWT_TTL_S = 300.0  # etcd: 5 minutes


def parse_duration(raw: str) -> float:
    """'300' or '300s', '5m', '1h' -> seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    raw = raw.strip()
    scale = units.get(raw[-1:])
    number = raw[:-1] if scale is not None else raw
    value = float(number) * (scale or 1.0)
    if value <= 0:
        raise ValueError(f"duration {raw!r} must be > 0")
    return value


def parse_options(spec: str) -> tuple[str, dict[str, str]]:
    """'jwt,pub-key=a,priv-key=b' -> ('jwt', {'pub-key': 'a', 'priv-key': 'b'}) (etcd's decomposeOpts)."""
    kind, *rest = [p.strip() for p in spec.split(",")]
    opts: dict[str, str] = {}
    for item in rest:
        key, eq, value = item.partition("=")
        if not eq or not key or key in opts:
            raise ValueError(f"auth: invalid auth options: {item!r}")
        opts[key] = value
    if kind not in ("simple", "jwt"):
        raise ValueError(f"unknown token type {kind!r}: want simple or jwt")
    if kind == "simple" and opts:
        raise ValueError("simple tokens take no options")
    if kind == "jwt":
        unknown = set(opts) - {"pub-key", "priv-key", "sign-method", "ttl"}
        if unknown:
            raise ValueError(f"unknown jwt option(s): {', '.join(sorted(unknown))}")
        if "pub-key" not in opts:
            raise ValueError("jwt needs pub-key=PATH (and priv-key=PATH to sign)")
        if opts.get("sign-method", "RS256") not in JWT_METHODS:
            raise ValueError(f"sign-method: want one of {', '.join(JWT_METHODS)}")
        if "ttl" in opts:
            parse_duration(opts["ttl"])
    return kind, opts
