"""Lost-worker recovery: the time from kill -9 of a whole worker (main process and pool, as when a host, VM
or container dies) in the middle of a task to that task finishing on another worker.

    python -m bench.recovery            # five kills each way, default WORKER_LOST_AFTER (60 s)
    python -m bench.recovery --smoke    # one kill each way, WORKER_LOST_AFTER=5

On Redis the workers' leases bring a lost worker's messages back (fabric/leases.py); on RabbitMQ the broker
requeues them when the dead worker's connection drops. Baseline, measured in the same run: Celery's own
recovery on Redis, kombu's visibility timeout, for which the project's settings give
``TASK_TIME_LIMIT + max(MAX_DELAY_SECONDS, RETRY_BACKOFF_MAX) + VISIBILITY_MARGIN`` (4,020 s) and Celery's
default one hour; it is printed, not waited for.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import sandbox
from tests.support.servers import RabbitMQServer, wait_until
from tests.support.workers import WorkerProcess

QUEUE = "indexing_tasks"


@dataclass
class Recovery:
    broker: str
    worker_lost_after: int
    #: Seconds the task had run on the doomed worker when it was killed.
    held: float
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def worst(self) -> float:
        return max(self.seconds)


def _kills(
    broker: str, broker_url: str | None, workdir: Path, kills: int, lost_after: int, held: float
) -> Recovery:
    import tests.support.tasks  # noqa: F401 - registers the probe action with the producer
    from config.settings import Settings
    from fabric.producer import MessageQueue
    from fabric.redis_clients import get_redis

    env = {"WORKER_LOST_AFTER": str(lost_after), **({"BROKER_URL": broker_url} if broker_url else {})}
    client = get_redis()
    result = Recovery(broker, lost_after, held)

    def worker(index: int) -> WorkerProcess:
        name = f"{broker}-{held:g}-{index}"
        process = WorkerProcess(workdir, [QUEUE], name=name, env=env, loglevel="WARNING")
        process.start()
        return process

    settings = Settings(**({"broker_url": broker_url} if broker_url else {}))
    mq = MessageQueue(settings=settings)
    workers = [worker(0), worker(1)]
    try:
        for process in workers:
            process.wait_ready(mq.app, timeout=60)
        for kill in range(kills):
            flag = f"bench:hold:{uuid.uuid4()}"
            client.set(flag, 1)
            tag = f"recovery-{broker}-{held:g}-{kill}"
            message_id = mq.enqueue(QUEUE, {"action": "probe", "tag": tag, "block_while": flag})
            wait_until(lambda t=tag: client.llen(f"test:runs:{t}") == 1, timeout=60, what="the task to start")
            holder = client.lindex(f"test:runs:{tag}", 0).decode().split("|")[1]
            doomed = next(p for p in workers if p.nodename == holder)
            time.sleep(held)
            doomed.kill9()
            killed_at = time.monotonic()
            client.delete(flag)  # the next delivery finishes at once
            finished = lambda m=message_id: mq.get_status(m)["state"] == "SUCCESS"  # noqa: E731
            wait_until(finished, timeout=lost_after + 120, interval=0.02, what="the task to finish elsewhere")
            result.seconds.append(time.monotonic() - killed_at)
            print(f"  {broker}, held {held:g} s: kill {kill + 1}/{kills}: finished elsewhere "
                  f"{result.seconds[-1]:.2f} s later")  # fmt: skip
            workers.remove(doomed)
            replacement = worker(len(result.seconds) + 1)
            replacement.wait_ready(mq.app, timeout=60)
            workers.append(replacement)
    finally:
        for process in workers:
            process.stop()
        mq.close()
    return result


def run(kills: int, lost_after: int, held: float) -> list[Recovery]:
    """Kill a worker right after its task started, and after it had run for ``held`` seconds (by then
    its lease claims the message: on Redis the two take different paths back)."""
    with sandbox("bench-recovery-") as box:
        results = [_kills("redis", None, box.workdir, kills, lost_after, wait) for wait in (0, held)]
        rabbit = RabbitMQServer(box.workdir / "rabbitmq")
        rabbit.start()
        try:
            results.append(_kills("rabbitmq", rabbit.url, box.workdir, kills, lost_after, 0))
        finally:
            rabbit.stop()
            rabbit.remove()
    return results


def report(results: list[Recovery]) -> str:
    from config import get_settings

    settings = get_settings()
    kills = len(results[0].seconds)
    lines = [
        f"### Lost-worker recovery ({kills} kill -9 of a whole worker mid-task each way, one run)",
        "",
        "Seconds from the kill to the task finishing on another worker.",
        "",
        "| broker | how it comes back | task ran before the kill | WORKER_LOST_AFTER | median s | worst s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        if result.broker == "redis":
            how = (
                "lease claim: restored when the lease ran out"
                if result.held
                else ("not claimed yet: restored a lease after it was taken")
            )
        else:
            how = "the broker requeues when the connection drops"
        figures = f"{result.held:g} s | {result.worker_lost_after} | {result.median:.2f} | {result.worst:.2f}"
        lines.append(f"| {result.broker} | {how} | {figures} |")
    lines.append(
        f"| redis | kombu's visibility timeout alone (the last resort, not waited for) | | | "
        f"{settings.visibility_timeout:,} | {settings.visibility_timeout:,} |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="one kill per broker, WORKER_LOST_AFTER=5")
    parser.add_argument("--kills", type=int, default=None, help="kills per broker (default 5, smoke 1)")
    args = parser.parse_args(argv)
    kills = args.kills or (1 if args.smoke else 5)
    from config.settings import Settings

    lost_after = 5 if args.smoke else int(Settings.model_fields["worker_lost_after"].default)
    # Long enough for a renewal (every WORKER_LOST_AFTER / 5 s) to claim the message.
    text = report(run(kills, lost_after, held=lost_after / 5 + 3))
    print(text)
    if not args.smoke:
        out = Path(__file__).parent / "results" / "recovery.md"
        out.write_text(text + "\n")
        print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
