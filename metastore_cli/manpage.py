"""Write the OPTIONS of man/metastore-serve.1 from the settings: `python -m metastore_cli.manpage`.

Only the block between the BEGIN and END comments is generated; the prose around it is kept
by hand. `--check` exits 1 when the committed page is stale, as tests/unit/test_manpage_fresh.py
does.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from metastore_cli.serve import CONFIG_FILE_HELP, OTHER, option_names
from metastore_core.config import GROUPS, SETTINGS
from metastore_core.setting import Setting

PAGE = Path(__file__).resolve().parent.parent / "man" / "metastore-serve.1"
BEGIN = '.\\" BEGIN OPTIONS: generated from metastore_core/config.py by python -m metastore_cli.manpage'
END = '.\\" END OPTIONS'
WIDTH = 100


def roff(text: str) -> str:
    """Text set as a roff paragraph: escapes, wrapped, and no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = textwrap.wrap(text, WIDTH, break_on_hyphens=False)
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in lines)


def _entry(head: str, placeholder: str, body: str) -> list[str]:
    tag = f'.BI {roff(head)} " {roff(placeholder)}"' if placeholder else f".B {roff(head)}"
    return [".TP", tag, roff(body)]


def _setting(s: Setting) -> list[str]:
    body = " ".join(part for part in (s.help, s.more, f"[{s.facts()}]") if part)
    return _entry(option_names(s).replace("/", ", "), s.placeholder, body)


def options() -> str:
    """The generated block: a subsection per group, an entry per visible option."""
    out: list[str] = []
    for group in GROUPS:
        out += [f".SS {group}"]
        for s in SETTINGS:
            if s.group == group and not s.hidden:
                out += _setting(s)
    out += [f".SS {OTHER}", *_entry("--config-file", "FILE", CONFIG_FILE_HELP)]
    return "\n".join(out)


def render(page: str) -> str:
    """page with its generated block replaced by a fresh one."""
    head, found, rest = page.partition(BEGIN + "\n")
    _, found_end, tail = rest.partition(END + "\n")
    if not (found and found_end):
        raise ValueError(f"the page lacks the lines {BEGIN!r} and {END!r}")
    return f"{head}{BEGIN}\n{options()}\n{END}\n{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale; write nothing")
    ns = parser.parse_args()
    page = PAGE.read_text()
    fresh = render(page)
    if ns.check:
        sys.exit(0 if fresh == page else f"{PAGE} is stale: run python -m metastore_cli.manpage")
    PAGE.write_text(fresh)


if __name__ == "__main__":
    main()
