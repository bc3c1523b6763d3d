"""Run `metastore` with benchmark-only instrumentation, without changing the daemon.

    python -m benchmarks.launch [--uvloop] [--stats] [--no-layers] serve --data-dir ...

--uvloop installs uvloop's event loop policy before the CLI calls asyncio.run (to evaluate it
as an opt-in); --stats prints each committer's batch and entry counts to stderr at exit, so the
group-commit batch size under load can be read from the server log; --no-layers serves
without the reliability layer (recovery, limits, auth, metrics), to measure what it costs.
"""

from __future__ import annotations

import atexit
import json
import sys
from typing import Any


def _count_commits() -> None:
    try:
        from metastore_core.member import committer
    except ImportError:  # a tree from before the member layer (benchmarks --compare-rev)
        from metastore_core.server import committer  # type: ignore[no-redef]

    made: list[Any] = []
    init = committer.Committer.__init__

    def tracking_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    committer.Committer.__init__ = tracking_init  # type: ignore[method-assign]

    def report() -> None:
        for c in made:
            per = c.entries / c.batches if c.batches else 0.0
            stats = {
                "batches": c.batches,
                "inline_batches": c.inline_batches,
                "entries": c.entries,
                "entries_per_batch": round(per, 2),
            }
            print("bench-stats " + json.dumps(stats), file=sys.stderr, flush=True)

    atexit.register(report)


def _no_layers() -> None:
    from metastore_core.server import app

    init = app.Server.__init__

    def bare_init(self: Any, config: Any, layers: Any = None) -> None:
        init(self, config, [] if layers is None else layers)

    app.Server.__init__ = bare_init  # type: ignore[method-assign]


def main() -> None:
    args = sys.argv[1:]
    if "--uvloop" in args:
        args.remove("--uvloop")
        import uvloop

        uvloop.install()
    if "--stats" in args:
        args.remove("--stats")
        _count_commits()
    if "--no-layers" in args:
        args.remove("--no-layers")
        _no_layers()
    from metastore_cli.main import app

    app(args, prog_name="metastore")


if __name__ == "__main__":
    main()
