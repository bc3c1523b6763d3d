"""man/ is generated from the CLI (python -m metastore_cli.manpage): every page is fresh, lists
every option and subcommand, sets cleanly with groff, and is installed with the package."""

from __future__ import annotations

import shutil
import subprocess
import tomllib

import pytest

from metastore_cli.manpage import MAN, commands, pages

PAGES = pages()


@pytest.mark.parametrize("path", sorted(PAGES), ids=lambda p: p.name)
def test_page_is_not_stale(path: object) -> None:
    assert PAGES[path] == path.read_text(), "stale man page: run python -m metastore_cli.manpage"  # type: ignore[union-attr]


def test_every_option_and_command_is_in_its_page() -> None:
    for name, cmd in commands().items():
        page = (MAN / f"{name}.1").read_text()
        subs = getattr(cmd, "commands", {})
        documented_here = [cmd] if name == "metastore" else [cmd, *subs.values()]  # the rest: own pages
        for sub in documented_here:
            for p in sub.params:
                for opt in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]:
                    if p.param_type_name == "option" and not p.hidden:
                        assert opt.replace("-", "\\-") in page, (name, opt)
        for sub_name in subs:
            assert f".B {sub_name}\n" in page, (name, sub_name)
        assert "\\-h, \\-\\-help" in page
    assert set(commands()["metastore"].commands) == {"serve", "stop", "health", "stats", "snapshot"}


def test_groff_sets_every_page_without_a_warning() -> None:
    groff = shutil.which("groff") or pytest.fail("groff is not installed: tests/run.sh installs groff-base")
    for path in PAGES:
        r = subprocess.run([groff, "-man", "-ww", "-z", str(path)], capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", (path.name, r.stderr)


def test_pages_are_installed_with_the_package() -> None:
    with open(MAN.parent / "pyproject.toml", "rb") as f:
        files = tomllib.load(f)["tool"]["setuptools"]["data-files"]
    assert files == {"share/man/man1": ["man/*.1"]}
    assert {p.name for p in MAN.glob("*.1")} == {p.name for p in PAGES}
