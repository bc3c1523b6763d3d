"""`metastore`: run, stop, probe and inspect the daemon.

Every subcommand shares one set of exit codes (ops.EXIT_CODES); a usage mistake is one line on
stderr and exit 2, never a traceback or a usage screen.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from metastore_cli.health import health
from metastore_cli.ops import EXIT_INTERRUPTED, EXIT_USAGE
from metastore_cli.serve import ServeCommand, serve
from metastore_cli.snapshot import app as snapshot_app
from metastore_cli.stats import stats
from metastore_cli.stop import stop
from metastore_core import __version__

# typer bundles its own click: its exception classes, found without importing a private module
_USAGE_ERROR: type[Exception] = typer.BadParameter.__mro__[1]
_CLICK_EXCEPTION: type[Exception] = typer.BadParameter.__mro__[2]
HELP = {"help_option_names": ["-h", "--help"]}


def usage_line(exc: Any) -> str:
    """'Error: No such option: --bogus (see metastore health --help)'."""
    where = exc.ctx.command_path if exc.ctx is not None else "metastore"
    return f"Error: {exc.format_message()} (see {where} --help)"


class MetastoreGroup(TyperGroup):
    """The top command: usage errors become one line and exit 2; Ctrl-C exits 130."""

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> Any:
        extra.pop("standalone_mode", None)
        try:
            code = super().main(args, prog_name, standalone_mode=False, **extra)
        except _USAGE_ERROR as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `metastore` alone: the help, as asked
                exc.show()  # type: ignore[attr-defined]
            else:
                typer.echo(usage_line(exc), err=True)
            sys.exit(EXIT_USAGE)
        except _CLICK_EXCEPTION as exc:
            typer.echo(f"Error: {exc.format_message()}", err=True)  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        except typer.Abort:
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="metastore",
    cls=MetastoreGroup,
    help="metastore: an etcd v3 compatible metadata store on LevelDB.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=HELP,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"metastore {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """metastore: an etcd v3 compatible metadata store on LevelDB."""


app.command(cls=ServeCommand)(serve)
app.add_typer(snapshot_app, name="snapshot")
app.command()(stop)
app.command()(health)
app.command()(stats)
