"""man/metastore-serve.1's OPTIONS match the settings (run `python -m metastore_cli.manpage`)."""

from __future__ import annotations

from metastore_cli.manpage import PAGE, render
from metastore_core.config import SETTINGS


def test_man_page_options_are_not_stale() -> None:
    page = PAGE.read_text()
    assert render(page) == page, "stale man page: run python -m metastore_cli.manpage"


def test_every_visible_option_is_in_the_man_page() -> None:
    page = PAGE.read_text()
    for s in SETTINGS:
        assert (s.option.replace("-", "\\-") in page) != s.hidden, s.flag
