"""How a `metastore serve` option is declared, parsed and checked (the options are in config.py).

A Setting's flag names everything else: its env var is METASTORE_ plus the flag upper-cased
with underscores, its YAML key the flag itself. Values are parsed from a flag's or env var's
text, or taken from YAML as typed, then checked by the Setting's Rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

T = TypeVar("T")
ENV_PREFIX = "METASTORE_"


class ConfigError(ValueError):
    """A bad option value or config file; the message is one line naming the option."""


def show(value: Any) -> str:
    """A value as a user would type it: 30, 1.5, true, http://a:1,http://b:2, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return ",".join(show(v) for v in value)
    return str(value)


def _either(choices: tuple[str, ...]) -> str:
    return " or ".join([", ".join(choices[:-1]), choices[-1]] if len(choices) > 1 else choices)


@dataclass(frozen=True)
class Rule:
    """A check on a value: `problem` says why a value breaks it (or None); `text` what it wants."""

    text: str
    problem: Callable[[Any], str | None]
    choices: tuple[str, ...] = ()

    def __call__(self, value: Any) -> None:
        why = self.problem(value)
        if why is not None:
            raise ValueError(why)


def _rule(text: str, ok: Callable[[Any], bool], choices: tuple[str, ...] = ()) -> Rule:
    return Rule(text, lambda v: None if ok(v) else f"must be {text}", choices)


def at_least(least: float) -> Rule:
    """value >= least."""
    return _rule(f"at least {show(least)}", lambda v: v >= least)


def more_than(floor: float) -> Rule:
    """value > floor."""
    return _rule(f"more than {show(floor)}", lambda v: v > floor)


def one_of(*choices: str) -> Rule:
    """value is one of choices (which the help and the man page list)."""
    return _rule(_either(choices), lambda v: v in choices, choices)


# ---------------------------------------------------------------------- parsing
_BOOLS = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}


def _is_number(raw: Any) -> bool:
    return isinstance(raw, int | float) and not isinstance(raw, bool)


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _BOOLS:
        return _BOOLS[raw.strip().lower()]
    raise ValueError("want true or false")


def _to_int(raw: Any) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        with suppress(ValueError):
            return int(raw.strip())
    raise ValueError("want a whole number")


def _to_float(raw: Any) -> float:
    if _is_number(raw):
        return float(raw)
    if isinstance(raw, str):
        with suppress(ValueError):
            return float(raw.strip())
    raise ValueError("want a number")


def _to_text(raw: Any) -> str:
    # YAML reads `auto-compaction-retention: 5` as a number; a string setting takes it as typed.
    if isinstance(raw, str) or _is_number(raw):
        return str(raw)
    raise ValueError("want a string")


def _to_path(raw: Any) -> Path:
    return raw if isinstance(raw, Path) else Path(_to_text(raw))


def _to_list(raw: Any) -> list[str]:
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        raw = ",".join(raw)
    if isinstance(raw, str):
        return [item.strip() for item in raw.split(",") if item.strip()]
    raise ValueError("want a comma-separated string or a list of strings")


_PARSERS: dict[Any, Callable[[Any], Any]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: _to_text,
    Path: _to_path,
    list[str]: _to_list,
}
_PLACEHOLDERS: dict[Any, str] = {int: "N", float: "SECONDS", str: "TEXT", Path: "PATH", list[str]: "URLS"}


# ---------------------------------------------------------------------- the declaration
@dataclass(frozen=True)
class Setting:
    """One `metastore serve` option: flag, help group and text, check and preset values.

    attr, kind and default come from the Config field that declares it (see SETTINGS).
    Values are in the flag's terms: an inverted flag (`--unsafe-no-fsync`) holds the
    opposite of its attribute (`fsync`).
    """

    flag: str
    group: str
    help: str
    check: Rule | None = None
    presets: Mapping[str, Any] = field(default_factory=dict, hash=False)
    more: str = ""  # man page only: what the one-line help leaves out
    inverted: bool = False
    hidden: bool = False  # not in --help or the man page, and no env var
    secret: bool = False  # a password or key: logged as ****** (see config.effective)
    metavar: str = ""
    attr: str = ""
    kind: Any = None
    default: Any = None

    @property
    def option(self) -> str:
        return "--" + self.flag

    @property
    def env(self) -> str | None:
        return None if self.hidden else ENV_PREFIX + self.flag.upper().replace("-", "_")

    @property
    def yaml_key(self) -> str:
        return self.flag

    @property
    def placeholder(self) -> str:
        """What the help shows after the flag: N, SECONDS, leveldb|memory ('' for a switch)."""
        if self.kind is bool:
            return ""
        if self.check is not None and self.check.choices:
            return "|".join(self.check.choices)
        return self.metavar or _PLACEHOLDERS[self.kind]

    def facts(self) -> str:
        """The default, the preset values and the rule: 'default 128; high-load 256; at least 1'."""
        parts = [f"default {show(self.default) or 'none'}"]
        if self.presets:
            parts.append(", ".join(f"{name} {show(value)}" for name, value in self.presets.items()))
        if self.check is not None and not self.check.choices:
            parts.append(self.check.text)
        return "; ".join(parts)

    def error(self, value: Any, reason: object) -> ConfigError:
        """'--max-txn-ops -5: must be at least 1'."""
        return ConfigError(f"{self.option} {show(value)}: {reason}")

    def coerce(self, raw: Any) -> Any:
        """raw (a flag's or env var's text, or a YAML value) as a checked value of this option."""
        try:
            value = _PARSERS[self.kind](raw)
        except ValueError as exc:
            raise self.error(raw, exc) from None
        for item in value if isinstance(value, list) else [value]:
            try:
                if self.check is not None:
                    self.check(item)
            except ValueError as exc:
                raise self.error(item, exc) from None
        return value

    def attr_value(self, value: Any) -> Any:
        """The Config attribute's value for this option's value (inverted flags flip it)."""
        return not value if self.inverted else value


def declare(default: T, setting: Setting) -> T:
    """A Config field with its Setting; a list default becomes a fresh copy per Config."""
    meta = {"setting": setting}
    if isinstance(default, list):
        items = tuple(default)
        return cast(T, field(default_factory=lambda: list(items), metadata=meta))
    return field(default=default, metadata=meta)
