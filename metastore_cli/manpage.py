"""Write the man pages in man/ from the CLI itself: `python -m metastore_cli.manpage`.

One page per command (metastore.1, metastore-serve.1, ..., metastore-snapshot.1 with its three
subcommands). The generator owns the blocks between `.\\" BEGIN name` and `.\\" END name`
comments: the title, NAME and SYNOPSIS, OPTIONS (serve's grouped as the settings declare them,
every other command's read from its click parameters, environment variables included),
COMMANDS of a group, EXIT STATUS (ops.EXIT_CODES, the same table everywhere) and SEE ALSO. The
prose around them (DESCRIPTION, EXAMPLES, FILES...) is written by hand. `--check` exits 1 when
a page is stale, as tests/unit/test_manpage_fresh.py does.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import typer

from metastore_cli.main import app
from metastore_cli.ops import EXIT_CODES
from metastore_cli.serve import CONFIG_FILE_HELP, OTHER, option_names
from metastore_core import __version__
from metastore_core.config import GROUPS, SETTINGS
from metastore_core.setting import Setting, show

MAN = Path(__file__).resolve().parent.parent / "man"
WIDTH = 100
BEGIN = '.\\" BEGIN {}: generated from the CLI by python -m metastore_cli.manpage'
END = '.\\" END {}'
SETTING_PARAMS = {s.flag.replace("-", "_") for s in SETTINGS}


def roff(text: str) -> str:
    """Text set as a roff paragraph: escapes, wrapped, and no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = textwrap.wrap(text, WIDTH, break_on_hyphens=False)
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in lines)


def _entry(head: str, placeholder: str, body: str) -> list[str]:
    # quoted: a head of several names ("-w, --write-out") is one bold argument
    tag = f'.BI "{roff(head)}" " {roff(placeholder)}"' if placeholder else f".B {roff(head)}"
    return [".TP", tag, roff(body)]


# ---------------------------------------------------------------------- the command tree
def commands() -> dict[str, Any]:
    """Page name -> click command: metastore, metastore-serve, ..., metastore-snapshot."""
    root = typer.main.get_command(app)
    pages = {"metastore": root}
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        pages[f"metastore-{name}"] = cmd
    return pages


def _path(page: str) -> str:
    return page.replace("-", " ")


def _summary(cmd: Any) -> str:
    return (cmd.help or "").strip().splitlines()[0].rstrip(".")


def _visible(cmd: Any) -> list[Any]:
    return [p for p in cmd.params if not getattr(p, "hidden", False)]


def _metavar(p: Any) -> str:
    if getattr(p, "is_flag", False) or getattr(p, "count", False):
        return ""
    if p.metavar:
        return str(p.metavar)
    if isinstance(p.default, float):
        return "SECONDS"
    return "N" if isinstance(p.default, int) else "TEXT"


def _names(p: Any) -> str:
    return ", ".join([*p.opts, *p.secondary_opts])


def _option(p: Any) -> list[str]:
    """One option of a command that is not serve's: help, environment variables, default."""
    body = (p.help or "").strip()
    envs = [p.envvar] if isinstance(p.envvar, str) else list(p.envvar or [])
    if envs:
        body += " Environment: " + ", ".join(envs) + "."
    if p.default not in (None, False, "", ()) and not callable(p.default):
        shown = f"[{show(p.default)}]"
        if shown not in body:
            body += f" {shown}"
    return _entry(_names(p), _metavar(p), body)


HELP_ENTRY = _entry("-h, --help", "", "Show the help and exit.")


def _synopsis_line(page: str, cmd: Any) -> list[str]:
    parts = []
    for p in _visible(cmd):
        if p.param_type_name == "argument":
            parts.append(f"\\fI{p.name.upper()}\\fR")
    parts.append("[\\fIOPTIONS\\fR]")
    return [f".B {_path(page)}", " ".join(parts)]


def head(page: str, cmd: Any) -> str:
    """.TH, NAME and SYNOPSIS."""
    title = page.upper()
    out = [f'.TH {title} 1 "" "metastore {__version__}" "metastore manual"', ".SH NAME"]
    out.append(roff(f"{_path(page)} - {_summary(cmd)[0].lower()}{_summary(cmd)[1:]}"))
    out.append(".SH SYNOPSIS")
    subs = getattr(cmd, "commands", None)
    if page == "metastore":
        out += [".B metastore", "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]"]
    elif subs:
        for i, (name, sub) in enumerate(subs.items()):
            if i:
                out.append(".br")
            out += _synopsis_line(f"{page}-{name}", sub)
    else:
        out += _synopsis_line(page, cmd)
    return "\n".join(out)


def _serve_options(cmd: Any) -> list[str]:
    out: list[str] = []
    for group in GROUPS:
        out += [f".SS {group}"]
        for s in SETTINGS:
            if s.group == group and not s.hidden:
                out += _setting(s)
    out += [
        f".SS {OTHER}",
        *_entry("--config-file", "FILE", CONFIG_FILE_HELP + " Environment: METASTORE_CONFIG_FILE."),
    ]
    others = [p for p in _visible(cmd) if p.name not in SETTING_PARAMS and p.name != "config_file"]
    for p in others:
        out += _option(p)
    return [*out, *HELP_ENTRY]


def _setting(s: Setting) -> list[str]:
    body = " ".join(part for part in (s.help, s.more, f"[{s.facts()}]") if part)
    return _entry(option_names(s).replace("/", ", "), s.placeholder, body)


def options(page: str, cmd: Any) -> str:
    """OPTIONS (and COMMANDS for a group): every visible parameter."""
    out = []
    subs = getattr(cmd, "commands", None)
    if subs:
        out.append(".SH COMMANDS")
        for name, sub in subs.items():
            see = f" See \\fB{page}-{name}\\fR(1)." if page == "metastore" else ""
            out += [".TP", f".B {name}", roff(_summary(sub) + ".") + see]
    out.append(".SH OPTIONS")
    if page == "metastore-serve":
        out += _serve_options(cmd)
    elif subs and page != "metastore":
        for name, sub in subs.items():
            out.append(f".SS {name}")
            for p in _visible(sub):
                if p.param_type_name == "argument":
                    out += _entry(p.name.upper(), "", (getattr(p, "help", None) or "") + " (required)")
                else:
                    out += _option(p)
        out += [".SS all", *HELP_ENTRY]
    else:
        for p in _visible(cmd):
            out += _option(p)
        out += HELP_ENTRY
    return "\n".join(out)


def exit_status(page: str, cmd: Any) -> str:
    out = [".SH EXIT STATUS", roff("The same codes for every metastore command:")]
    for code, meaning in EXIT_CODES:
        out += [".TP", f".B {code}", roff(meaning[0].upper() + meaning[1:] + ".")]
    return "\n".join(out)


def see_also(page: str, cmd: Any) -> str:
    others = [p for p in commands() if p != page]
    refs = [f".BR {p} (1)," for p in others] + [".BR etcdctl (1)"]
    return "\n".join([".SH SEE ALSO", *refs])


BLOCKS = {"HEAD": head, "OPTIONS": options, "EXIT STATUS": exit_status, "SEE ALSO": see_also}


def render(page_name: str, text: str) -> str:
    """text with every generated block replaced by a fresh one."""
    cmd = commands()[page_name]
    for key, make in BLOCKS.items():
        begin, end = BEGIN.format(key), END.format(key)
        found = re.search(re.escape(begin) + r"\n.*?" + re.escape(end) + r"\n", text, re.S)
        if found is None:
            raise ValueError(f"{page_name}.1 lacks the lines {begin!r} ... {end!r}")
        text = f"{text[: found.start()]}{begin}\n{make(page_name, cmd)}\n{end}\n{text[found.end() :]}"
    return text


def pages() -> dict[Path, str]:
    """Every page file and its fresh text."""
    return {MAN / f"{name}.1": render(name, (MAN / f"{name}.1").read_text()) for name in commands()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is stale; write nothing")
    ns = parser.parse_args()
    stale = [path for path, fresh in pages().items() if fresh != path.read_text()]
    if ns.check:
        sys.exit(
            f"stale man pages: {', '.join(map(str, stale))}: run python -m metastore_cli.manpage"
            if stale
            else 0
        )
    for path, fresh in pages().items():
        path.write_text(fresh)


if __name__ == "__main__":
    main()
