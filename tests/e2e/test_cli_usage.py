"""The `metastore` command line as a user meets it: -h everywhere, one line and exit 2 for every
usage mistake, the same exit codes in every subcommand, etcdctl's environment, shell completion.

In-process (CliRunner) where no daemon is needed: a new interpreter per call costs seconds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from metastore_cli.main import app
from metastore_cli.ops import EXIT_CODES, EXIT_UNREACHABLE, EXIT_USAGE

from conftest import ROOT, free_port

COMMANDS = [
    ["serve"],
    ["stop"],
    ["health"],
    ["stats"],
    ["snapshot"],
    ["snapshot", "save"],
    ["snapshot", "verify"],
    ["snapshot", "restore"],
]


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args), env=env)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_dash_h_is_help(command: list[str]) -> None:
    code, out, _ = run(*command, "-h")
    assert code == 0 and out.startswith(f"Usage: metastore {' '.join(command)} ")


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_an_unknown_flag_is_one_line_and_exit_2(command: list[str]) -> None:
    code, out, err = run(*command, "--bogus")
    assert code == EXIT_USAGE and out == ""
    assert err.startswith("Error: No such option: --bogus") and len(err.splitlines()) == 1
    assert err.endswith(f"(see metastore {' '.join(command)} --help)\n")  # click may suggest a flag between


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuch"], "Error: No such command 'nosuch'. (see metastore --help)"),
        (["stats", "--dial-timeout", "0"], "Error: Invalid value for --dial-timeout: 0: must be more than 0"),
        (["stop", "--timeout", "-1"], "Error: Invalid value for --timeout: -1: must be more than 0"),
        (["health", "-w", "yaml"], "Error: Invalid value for -w: 'yaml': want one of simple, json, table"),
        (["stats", "-i", "soon"], "Error: Invalid value for '-i' / '--interval': "),
        (["snapshot", "save"], "Error: Missing argument 'file'."),
        (["snapshot", "restore", "x", "--data-dir", "d", "--member-id", "zz"], "--member-id: 'zz': want hex"),
    ],
)
def test_usage_mistakes_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    code, _, err = run(*args)
    assert code == EXIT_USAGE, err
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize(
    "args",
    [["health"], ["stats"], ["stop"], ["snapshot", "save", "unused.snap"]],
    ids=lambda a: a[0],
)
def test_no_connection_is_the_same_code_everywhere(args: list[str]) -> None:
    code, _, err = run(*args, f"--endpoints=127.0.0.1:{free_port()}", "--dial-timeout", "0.2")
    assert code == EXIT_UNREACHABLE, err
    assert err.startswith("Error: ") or " is unhealthy: failed to connect" in err
    assert not os.path.exists("unused.snap.part")


def test_etcdctl_endpoints_are_honoured_and_ours_win() -> None:
    theirs, ours = free_port(), free_port()
    env = {"ETCDCTL_ENDPOINTS": f"http://127.0.0.1:{theirs}", "METASTORE_DIAL_TIMEOUT": "0.2"}
    code, _, err = run("stats", env=env)
    assert code == EXIT_UNREACHABLE and f"127.0.0.1:{theirs}" in err
    code, _, err = run("stats", env={**env, "METASTORE_ENDPOINTS": f"127.0.0.1:{ours}"})
    assert code == EXIT_UNREACHABLE and f"127.0.0.1:{ours}" in err


def test_exit_codes_are_distinct() -> None:
    codes = [code for code, _ in EXIT_CODES]
    assert len(codes) == len(set(codes)) and codes[:3] == [0, 1, 2]


def test_shell_completion_completes_commands_and_options() -> None:
    def complete(words: str) -> list[str]:
        env = dict(
            os.environ,
            _METASTORE_COMPLETE="complete_bash",
            COMP_WORDS=words,
            COMP_CWORD=str(len(words.split()) - 1),
        )
        r = subprocess.run(
            [sys.executable, "-m", "metastore_cli"], env=env, capture_output=True, text=True, cwd=ROOT
        )
        return r.stdout.split()

    assert complete("metastore sn") == ["snapshot"]
    assert complete("metastore serve --max-mem") == ["--max-memory"]
