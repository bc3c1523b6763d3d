"""`python -m metastore_cli` runs the CLI (tests use it to start the daemon)."""

from metastore_cli.main import app

app(prog_name="metastore")
