"""``wft``: run the whole system on one machine, and operate it.

Exit codes: 0 done, 1 failed, 2 bad input or usage, 69 a backend is unavailable, 78 misconfigured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from config import QUEUES, get_settings
from fabric.errors import AppError, BackendUnavailable, ConfigurationError, InvalidInput

if TYPE_CHECKING:
    from celery import Celery

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_CONFIG = 0, 1, 2, 69, 78


def version() -> str:
    """The installed project's version (``pyproject.toml``), or a note that it is not installed."""
    try:
        return metadata.version("workflow-tasks")
    except metadata.PackageNotFoundError:
        return "(not installed: run scripts/bootstrap.sh)"


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def cmd_run(args: argparse.Namespace) -> int:
    """Start Redis if none answers, a worker for every queue, beat, the API and Flower; run the demo; serve
    until Ctrl-C, SIGTERM or SIGHUP. Everything started here is stopped on the way out, with a warm shutdown
    of up to ``TASK_TIME_LIMIT`` + 30 s (running tasks finish); a second signal kills at once."""
    from cli.demo import run_demo
    from cli.processes import Child, StopRequested, stop_all, stop_on_signals
    from fabric.producer import get_message_queue

    children: list[Child] = []
    out = sys.stdout
    with stop_on_signals():
        try:
            hostname, worker = _start_services(args, children, out)
            queue = get_message_queue()
            _wait_for_worker(queue.app, hostname, worker)
            out.write("==> worker ready\n")
            run_demo(queue, out, timeout=args.timeout)
            _print_next_steps(args, out)
            if args.exit_after_demo:
                return EXIT_OK
            out.write("\nRunning. Press Ctrl-C (or send SIGTERM) to stop everything this command started.\n")
            out.flush()
            while all(child.alive() for child in children):
                time.sleep(1)
            dead = [c for c in children if not c.alive()]
            out.write(f"{dead[0].name} exited; its log:\n{dead[0].tail()}\n")
            return EXIT_FAILED
        except (KeyboardInterrupt, StopRequested) as stop:
            reason = "Ctrl-C" if isinstance(stop, KeyboardInterrupt) else str(stop)
            with contextlib.suppress(OSError):  # a hung-up terminal (SIGHUP) may refuse the line
                out.write(f"\n==> {reason}: stopping everything this command started\n")
                out.flush()
            return EXIT_OK
        finally:
            stop_all(children, grace=get_settings().task_time_limit + 30)


def _start_services(args: argparse.Namespace, children: list[Any], out: Any) -> tuple[str, Any]:
    """Start what ``run`` needs, appending each process to ``children`` as soon as it exists."""
    from cli.processes import Child, celery_argv, flower_argv, redis_answers, start_redis

    settings = get_settings()
    log_dir = settings.data_dir / "logs"
    out.write(f"==> data in {settings.data_dir}, logs in {log_dir}\n")
    if redis_answers(settings.redis_url):
        out.write(f"==> Redis answers at {settings.redis_url}\n")
    else:
        out.write(
            f"==> no Redis at {settings.redis_url}: starting redis-server, AOF in {settings.data_dir}\n"
        )
        start_redis(settings.redis_url, settings.data_dir / "redis", log_dir, children)
    hostname = f"wft-{os.getpid()}@localhost"
    worker_args = ["worker", "-Q", ",".join(QUEUES), "-n", hostname, "-E", "-l", "INFO",
                   "--without-gossip", "--without-mingle"]  # fmt: skip
    if args.concurrency:
        worker_args += ["-c", str(args.concurrency)]

    def start(child: Child) -> Child:
        # Listed before it starts, so a stop signal that arrives meanwhile still finds it.
        children.append(child)
        return child.start()

    out.write(f"==> starting a Celery worker for all queues ({', '.join(QUEUES)})\n")
    worker = start(Child("worker", celery_argv(*worker_args), log_dir))
    # The schedule and its last run times live in Redis (celery-redbeat, see fabric.celery_config.beat),
    # shared with any other beat on the same Redis: one of them sends at a time.
    out.write("==> starting Celery beat (periodic maintenance)\n")
    start(Child("beat", celery_argv("beat", "-l", "INFO"), log_dir))
    if not args.no_api:
        out.write(f"==> starting the HTTP API at http://localhost:{settings.api_port}\n")
        start(Child("api", [sys.executable, "-m", "api"], log_dir))
    if not args.no_flower:
        # deploy/flower/flowerconfig.py: basic auth from FLOWER_USER/FLOWER_PASSWORD (never on a command
        # line that `ps` shows), state in DATA_DIR/flower.db saved every FLOWER_STATE_SAVE_INTERVAL ms.
        start(Child("flower", flower_argv(), log_dir))
        out.write(f"==> starting Flower at http://localhost:{settings.flower_port}\n")
    return hostname, worker


def _print_next_steps(args: argparse.Namespace, out: Any) -> None:
    settings = get_settings()
    development = settings.environment == "development"
    out.write("\n== Where to look next\n")
    if not args.no_api:
        key = settings.api_keys.get_secret_value().split(",")[0].split(":")[0]
        shown_key = key if development else "(a key from API_KEYS)"
        out.write(f"  API:     http://localhost:{settings.api_port}/docs  (send X-API-Key: {shown_key})\n")
    if not args.no_flower:
        password = (
            settings.flower_password.get_secret_value() if development else "(the FLOWER_PASSWORD you set)"
        )
        out.write(f"  Flower:  http://localhost:{settings.flower_port}  user {settings.flower_user}, "
                  f"password {password}\n")  # fmt: skip
    out.write(f"  Logs:    {settings.data_dir / 'logs'}\n")
    out.write("  Operate: wft status ID | wft dlq list | wft health | wft reindex | wft --help\n")


def _wait_for_worker(app: Celery, hostname: str, worker: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.alive():
            raise ConfigurationError(f"the worker exited at start:\n{worker.tail()}")
        if app.control.ping(destination=[hostname], timeout=0.5):
            return
    raise BackendUnavailable(f"the worker did not answer within {timeout:.0f}s:\n{worker.tail()}")


def cmd_demo(args: argparse.Namespace) -> int:
    from cli.demo import run_demo
    from fabric.producer import get_message_queue

    run_demo(get_message_queue(), sys.stdout, timeout=args.timeout)
    return EXIT_OK


def cmd_enqueue(args: argparse.Namespace) -> int:
    from fabric.producer import get_message_queue

    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"PAYLOAD is not valid JSON: {exc}") from None
    message_id = get_message_queue().enqueue(
        args.queue, payload, priority=args.priority, delay_seconds=args.delay, ttl_seconds=args.ttl
    )
    print(message_id)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from fabric.producer import get_message_queue

    _print_json(get_message_queue().get_status(args.message_id))
    return EXIT_OK


def cmd_dlq(args: argparse.Namespace) -> int:
    from fabric.producer import get_message_queue

    queue = get_message_queue()
    if args.dlq_command == "list":
        _print_json(queue.list_dead_letters(queue=args.queue, limit=args.limit))
    elif args.dlq_command == "replay":
        for message_id in args.ids:
            print(f"{message_id} -> {queue.replay_dead_letter(message_id)}")
    else:
        for message_id in args.ids:
            queue.purge_dead_letter(message_id)
            print(f"{message_id} purged")
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    from fabric.producer import get_message_queue

    queue = get_message_queue()
    health = queue.health_check()
    _print_json({"message_queue": health, "queues": {q: queue.queue_stats(q) for q in QUEUES}})
    return EXIT_OK if health["status"] == "healthy" else EXIT_UNAVAILABLE


def cmd_stats(args: argparse.Namespace) -> int:
    from services.analytics import get_workflow_stats

    _print_json(get_workflow_stats(args.workflow_id))
    return EXIT_OK


def cmd_reindex(args: argparse.Namespace) -> int:
    """Rebuild the search and vector indexes from the object store, through the queues.

    A vector collection built with another embedding model than the configured one is dropped first, so
    the workers rebuild it with the current model (restart them with the new settings before this).
    """
    from services.embeddings import get_embedder
    from services.vectors import drop_if_model_changed
    from workflows.documents import VECTOR_COLLECTION
    from workflows.pipelines import Pipelines

    dropped = drop_if_model_changed(VECTOR_COLLECTION)
    if dropped is not None:
        print(
            f"vector collection {VECTOR_COLLECTION!r} held vectors of {dropped.model!r}; the embedder is now "
            f"{get_embedder().model_name!r}: dropped it, the workers rebuild it as they drain"
        )

    def progress(phase: str, done: int, total: int) -> None:
        width = 30
        filled = width if not total else width * done // total
        sys.stdout.write(f"\r  {phase:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            sys.stdout.write("\n")
        sys.stdout.flush()

    sent = Pipelines().reindex(progress=progress, batch=args.batch, resume=not args.restart)
    print(
        f"sent {sent['workflows']} workflows and {sent['executions']} executions to be indexed again; "
        "the workers rebuild the indexes as they drain (watch `wft health`)"
    )
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    """A preset around ``celery worker``: our app, the named queues, events on for Flower."""
    from cli.processes import celery_argv

    queues = args.queues or ",".join(QUEUES)
    unknown = [q for q in queues.split(",") if q not in QUEUES]
    if unknown:
        raise InvalidInput(f"unknown queue(s) {', '.join(unknown)}; expected some of: {', '.join(QUEUES)}")
    extra = [a for a in args.celery_args if a != "--"]
    concurrency = ["-c", str(args.concurrency)] if args.concurrency else []
    argv = celery_argv(
        "worker", "-Q", queues, "-P", args.pool, "-E", "-l", args.loglevel, *concurrency, *extra
    )
    os.execv(argv[0], argv)  # noqa: S606 - replaces this process with the worker, as a preset should


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wft", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"wft {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="start Redis if needed, workers, beat, the API and Flower, run the demo, serve until Ctrl-C "
        "or SIGTERM/SIGHUP (which stop everything it started)",
    )
    run.add_argument("--no-flower", action="store_true", help="do not start Flower")
    run.add_argument("--no-api", action="store_true", help="do not start the HTTP API")
    run.add_argument("--exit-after-demo", action="store_true", help="stop everything once the demo has run")
    run.add_argument("--concurrency", type=int, default=None, help="worker processes (default: CPU count)")
    run.add_argument("--timeout", type=float, default=300, help="seconds the demo may take (default 300)")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="run the demo against workers that already run")
    demo.add_argument("--timeout", type=float, default=300)
    demo.set_defaults(func=cmd_demo)

    enqueue = sub.add_parser("enqueue", help="validate and enqueue one message; prints its id")
    enqueue.add_argument("queue", choices=[q for q in QUEUES if q != "dead_letter"])
    enqueue.add_argument(
        "payload", metavar="PAYLOAD", help='the payload as JSON, e.g. \'{"workflow_id": "wf"}\''
    )
    enqueue.add_argument("--priority", type=int, default=None, help="0 (default) to 9; higher runs first")
    enqueue.add_argument("--delay", type=float, default=0, help="seconds before it may run")
    enqueue.add_argument("--ttl", type=float, default=None, help="seconds after which it is never run")
    enqueue.set_defaults(func=cmd_enqueue)

    status = sub.add_parser("status", help="a message's state, result or error, and attempts")
    status.add_argument("message_id")
    status.set_defaults(func=cmd_status)

    dlq = sub.add_parser("dlq", help="list, replay or purge dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dlq_list = dlq_sub.add_parser("list", help="dead letters, newest first")
    dlq_list.add_argument("--queue", default=None, help="only those from this queue")
    dlq_list.add_argument("--limit", type=int, default=50)
    for name, text in (("replay", "send again to the original queue"), ("purge", "drop for good")):
        action = dlq_sub.add_parser(name, help=text)
        action.add_argument("ids", nargs="+", metavar="ID")
    dlq.set_defaults(func=cmd_dlq)

    health = sub.add_parser("health", help="broker health and queue depths (exit 69 when unhealthy)")
    health.set_defaults(func=cmd_health)

    stats = sub.add_parser("stats", help="a workflow's statistics")
    stats.add_argument("workflow_id")
    stats.set_defaults(func=cmd_stats)

    reindex = sub.add_parser(
        "reindex", help="rebuild search and vector indexes from the object store (resumes where it stopped)"
    )
    reindex.add_argument(
        "--restart", action="store_true", help="start from the beginning, not the saved cursor"
    )
    reindex.add_argument("--batch", type=int, default=200, help="items sent per batch (default 200)")
    reindex.set_defaults(func=cmd_reindex)

    worker = sub.add_parser("worker", help="a Celery worker for some or all queues")
    worker.add_argument(
        "--queues", "-Q", default=None, help=f"comma-separated (default all: {','.join(QUEUES)})"
    )
    worker.add_argument("--concurrency", "-c", type=int, default=None)
    worker.add_argument(
        "--pool", "-P", choices=["prefork", "threads", "solo"], default="prefork",
        help="prefork (default; time limits enforced) or threads (index and vector messages are then written "
        "in bulk across the threads of a process, see tasks/batching.py)",
    )  # fmt: skip
    worker.add_argument("--loglevel", "-l", default="INFO")
    worker.add_argument("celery_args", nargs=argparse.REMAINDER, help="passed on to `celery worker` after --")
    worker.set_defaults(func=cmd_worker)
    return parser


def failure(exc: AppError | ValidationError) -> tuple[int, str]:
    """The exit code and the message for an error that ends a command."""
    if isinstance(exc, ValidationError):  # the settings (environment, .env) are refused
        problems = "; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())
        return EXIT_CONFIG, f"error: the settings are invalid: {problems}"
    if isinstance(exc, InvalidInput):
        return EXIT_USAGE, f"error: {exc}"
    if isinstance(exc, BackendUnavailable):
        return EXIT_UNAVAILABLE, f"error: {exc}\nhint: is Redis running at REDIS_URL? `wft health` tells."
    if isinstance(exc, ConfigurationError):
        return EXIT_CONFIG, f"error: {exc}"
    return EXIT_FAILED, f"error: {exc}"  # NotFound and any other AppError


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (AppError, ValidationError) as exc:
        code, message = failure(exc)
        print(message, file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
