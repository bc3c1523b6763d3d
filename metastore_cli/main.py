"""`metastore`: run, stop, probe and inspect the daemon."""

from __future__ import annotations

import typer

from metastore_cli.health import ProbeCommand, health
from metastore_cli.serve import ServeCommand, serve
from metastore_cli.snapshot import app as snapshot_app
from metastore_cli.stats import stats
from metastore_cli.stop import stop
from metastore_core import __version__

app = typer.Typer(
    name="metastore",
    help="metastore: an etcd v3 compatible metadata store on LevelDB.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
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
app.command(cls=ProbeCommand)(health)
app.command()(stats)
