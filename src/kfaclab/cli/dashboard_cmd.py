"""`kfaclab dashboard`: optuna-dashboard on a sweep's storage, with its record artifacts.

    kfaclab dashboard DIR | --storage URL [--host 127.0.0.1] [--port 8080]

Serves optuna-dashboard's WSGI app on the storage kfaclab itself opens (for a folder, the
journal with the same file lock the workers use, so it is safe beside a running sweep) and the
artifact store of its records (study/artifacts.py), which ``optuna-dashboard`` alone would not
find for a database. Prints the URL on stdout (the port actually bound, so ``--port 0`` picks a
free one) and serves until Ctrl-C. optuna-dashboard is an optional dependency.

The dashboard has no login and can delete studies, so it answers only requests whose Host header
names this server: 127.0.0.1, localhost, ::1, the --host address, and any --allow-host NAME
(behind a reverse proxy, allow the name the proxy forwards). Other Host headers get 403: a web
page the browser fetched from elsewhere cannot reach it by pointing its own DNS name at
127.0.0.1 ("DNS rebinding"). An empty --host (an unset shell variable) is refused, since it would
listen on every interface; to mean that, say --host 0.0.0.0 and list the names with --allow-host.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
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
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests for this host name (repeatable; e.g. behind a proxy)",
    )
    p.set_defaults(func=run_dashboard)


class _QuietHandler(WSGIRequestHandler):
    """wsgiref logs every request to stderr; the dashboard polls every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def host_guard(app: Any, allowed: set[str]) -> Any:
    """``app`` answering only requests whose Host header (without its port) is in ``allowed``."""

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        host = str(environ.get("HTTP_HOST", "")).lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name.strip("[]") not in allowed:
            start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"Host not allowed (kfaclab dashboard --allow-host NAME)\n"]
        return app(environ, start_response)

    return guarded


def run_dashboard(args: argparse.Namespace) -> int:
    if args.host == "":
        raise UsageError(
            "--host must name an address, got '' (that would listen on every interface; "
            "say --host 0.0.0.0 to mean it)"
        )
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
    allowed = {"127.0.0.1", "localhost", "::1", args.host.strip("[]").lower()}
    app = host_guard(app, allowed | {h.lower() for h in args.allow_host})
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
        _serve_until_stopped(server)
    finally:
        server.server_close()
    return 0


def _serve_until_stopped(server: Any, poll: float = 0.5) -> None:
    """Serve until Ctrl-C or SIGTERM. The signals only set a flag: an exception raised by a
    handler while a request is being answered is caught by wsgiref's handler (a bare ``except``
    that logs it and goes on serving), so a SIGTERM that arrived mid-request used to leave the
    server running (2 of 8 terminations in a loop of starts, one request each)."""
    if threading.current_thread() is not threading.main_thread():
        server.serve_forever()  # signals reach only the main thread: its caller stops it
        return
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    server.timeout = poll  # handle_request returns at least this often to look at the flag
    try:
        while not stop.is_set():
            server.handle_request()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
