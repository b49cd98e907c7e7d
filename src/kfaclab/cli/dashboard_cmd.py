"""`kfaclab dashboard`: optuna-dashboard on a sweep's storage, with its record artifacts.

    kfaclab dashboard DIR | --storage URL [--host 127.0.0.1] [--port 8080]

Serves optuna-dashboard's WSGI app on the storage kfaclab itself opens (for a folder, the
journal with the same file lock the workers use, so it is safe beside a running sweep) and the
artifact store of its records (study/artifacts.py), which ``optuna-dashboard`` alone would not
find for a database. Prints the URL on stdout (the port actually bound, so ``--port 0`` picks a
free one) and serves until Ctrl-C. optuna-dashboard is an optional dependency.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from kfaclab.cli.targets import stored_sweep
from kfaclab.errors import UsageError
from kfaclab.study.artifacts import open_artifact_store
from kfaclab.study.storage import open_storage

DASHBOARD_PIN = "optuna-dashboard==0.21.0"  # the version kfaclab is tested with


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "dashboard",
        help="browse a sweep in optuna-dashboard (learning curves, trials, records)",
        description="Starts optuna-dashboard on a sweep's storage and prints its URL; safe "
        "beside a running sweep. Needs optuna-dashboard (pip install " + DASHBOARD_PIN + ").",
    )
    p.add_argument("target", nargs="?", help="output folder of the sweep")
    p.add_argument("--storage", help="database URL instead of an output folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free one)")
    p.set_defaults(func=run_dashboard)


class _QuietHandler(WSGIRequestHandler):
    """wsgiref logs every request to stderr; the dashboard polls every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def run_dashboard(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    try:
        import optuna_dashboard
    except ImportError:
        raise UsageError(
            f"kfaclab dashboard needs optuna-dashboard, which is not installed: pip install "
            f"{DASHBOARD_PIN}"
        ) from None
    spec = stored_sweep(args.target, args.storage)
    storage = open_storage(spec, create=False)
    app = optuna_dashboard.wsgi(
        storage, artifact_store=open_artifact_store(spec, storage, create=False)
    )
    try:
        server = make_server(args.host, args.port, app, handler_class=_QuietHandler)
    except OSError as exc:
        raise UsageError(
            f"--host/--port {args.host}:{args.port} cannot be listened on: {exc.strerror or exc}"
        ) from None
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"kfaclab dashboard: http://{host}:{server.server_port}/ ({spec.describe()})", flush=True)
    print("press Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
