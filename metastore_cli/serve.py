"""`metastore serve`: the daemon in the foreground.

Its options are made from the settings declared in metastore_core/config.py, and
load_config there reads them: flag, then METASTORE_* environment variable, then the YAML
config file, then the preset, then the default. (etcd gives its config file precedence over
flags; we follow our spec and say so in the man page.)
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand

from metastore_cli import logs
from metastore_cli.ops import EXIT_ERROR, EXIT_USAGE
from metastore_core.config import (
    CONFIG_FILE_ENV,
    GROUPS,
    SETTINGS,
    Config,
    ConfigError,
    effective,
    load_config_traced,
)
from metastore_core.server.app import Server
from metastore_core.setting import Setting
from metastore_core.storage.base import StorageError
from metastore_core.storage.datadir import DataDirError

log = logging.getLogger("metastore")
OTHER = "Other"  # the help group of the options that are not settings
CONFIG_FILE_HELP = "YAML file of options, keyed by option name (data-dir: /var/lib/metastore)."
SOURCES_HELP = (
    "Every option is also an environment variable, METASTORE_ plus the option in upper case with "
    "underscores (METASTORE_DATA_DIR), and a key of the YAML config file (data-dir). A flag "
    "beats the environment, which beats the file, which beats the --preset, which beats the default."
)
_BY_PARAM = {s.flag.replace("-", "_"): s for s in SETTINGS}


def option_names(s: Setting) -> str:
    """'--enable-crc/--no-enable-crc' for a plain switch; the flag alone otherwise."""
    if s.kind is bool and not s.inverted and not s.hidden:
        return f"{s.option}/--no-{s.flag}"
    return s.option


def _parameter(name: str, s: Setting) -> inspect.Parameter:
    # Values reach load_config as typed text (switches as bools): parsing and checks are its job,
    # so flags, env and YAML are read and refused alike. Env vars too are read there, not by click.
    option = typer.Option(
        None,
        option_names(s),
        help=f"{s.help} [{s.facts()}]",
        metavar=s.placeholder or None,
        hidden=s.hidden,
        show_default=False,
    )
    annotation = bool if s.kind is bool else str
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


class ServeCommand(TyperCommand):
    """`metastore serve --help` lists the options under their groups."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        sections: dict[str, list[tuple[str, str]]] = {group: [] for group in GROUPS}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                s = _BY_PARAM.get(param.name or "")
                sections.setdefault(s.group if s else OTHER, []).append(record)
        for group, rows in sections.items():
            if rows:
                with formatter.section(group):
                    formatter.write_dl(rows)

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        formatter.write_paragraph()
        formatter.write_text(SOURCES_HELP)


def serve(config_file: Path | None = None, **options: Any) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT."""
    try:
        config, sources = load_config_traced(config_file, options)
    except ConfigError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    logs.configure(config.log_level, config.log_format, sys.stderr)

    def announce() -> None:
        # once serving: a start that fails says only its one "Error:" line
        log.info("effective configuration", extra={"config": effective(config, sources)})
        if not config.fsync:
            log.warning(
                "--unsafe-no-fsync: writes are acknowledged before they are on disk; "
                "a power loss or kernel crash can lose them (for benchmarks only)"
            )

    try:
        if config.event_loop == "uvloop":
            import uvloop

            code = uvloop.run(_run(config, announce))
        else:
            code = asyncio.run(_run(config, announce))
    except (DataDirError, StorageError, OSError, ValueError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    _exit(code)


def _exit(code: int) -> None:
    """Leave without freeing the heap object by object: the shutdown closed the store, the
    watermark and the lock, and the index of 2M keys took Python 2.4 s to free (benchmarks/README.md,
    scale). Exit handlers and log handlers still run; open files are flushed."""
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


serve.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        *(_parameter(name, s) for name, s in _BY_PARAM.items()),
        inspect.Parameter(
            "config_file",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None, "--config-file", help=CONFIG_FILE_HELP, envvar=CONFIG_FILE_ENV, metavar="FILE"
            ),
            annotation=Path | None,
        ),
    ]
)


_KEPT: list[Server] = []  # the server outlives its loop: freeing it is left to the exit (_exit)


async def _run(config: Config, announce: Callable[[], None]) -> int:
    """Serve until a signal, `metastore stop` or the Shutdown RPC; the exit code of the shutdown."""
    server = Server(config)
    _KEPT.append(server)
    await server.start()
    announce()
    return await server.serve_until_stopped()
