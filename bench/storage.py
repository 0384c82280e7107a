"""Storage benchmark: what the local store's guarantees cost, and the MinIO adapter on nanio beside it.

    .venv/bin/python -m bench.storage            # full run, writes bench/results/storage.md
    .venv/bin/python -m bench.storage --smoke    # a seconds-long run with tiny counts

Baseline, measured in the same run: plain ``Path.write_bytes`` / ``read_bytes`` into the same directory layout
(no temporary file, no rename, no lock, no fsync, no content type). Every row is a rate and its ratio to that
baseline. Rows: the local store without fsync (temp file, content type in an extended attribute, rename), the
local store as shipped (plus fsync of file and directory), and the MinIO adapter against a nanio server on
loopback (S3 signatures, HTTP, nanio's own disk writes).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "storage.md"
MIB = 1024 * 1024


class PatternStream(io.RawIOBase):
    """``size`` bytes produced on demand (an upload that is never in memory whole)."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self._block = os.urandom(MIB)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        size = min(len(buffer), self.remaining, len(self._block))
        buffer[:size] = self._block[:size]
        self.remaining -= size
        return size


def _rate(count: float, action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return count / (time.perf_counter() - start)


def run(smoke: bool) -> dict[str, Any]:
    from services.storage.local import LocalStorage
    from services.storage.minio_backend import MinioStorage
    from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, NanioServer

    small_count, small_size, large_size = (40, 4096, 8 * MIB) if smoke else (2000, 4096, 256 * MIB)
    payload = os.urandom(small_size)
    names = [f"runs/{i % 50}/object-{i}.json" for i in range(small_count)]
    results: dict[str, Any] = {"smoke": smoke, "small_count": small_count, "small_size": small_size,
                               "large_mib": large_size // MIB, "rows": {}}  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="bench-storage-") as workdir:
        root = Path(workdir)
        nanio = NanioServer(root / "nanio")
        nanio.start()
        try:
            stores: dict[str, Any] = {
                "local store, fsync off": LocalStorage(
                    root / "nofsync", "bench-key", "http://x", fsync=False
                ),
                "local store (default: fsync on)": LocalStorage(root / "local", "bench-key", "http://x"),
                "MinIO adapter on nanio (loopback)": MinioStorage(
                    nanio.endpoint, ACCESS_KEY, SECRET_KEY, region=REGION
                ),
            }

            plain = root / "plain" / "bench"

            def plain_writes() -> None:
                for name in names:
                    path = plain / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(payload)

            def plain_reads() -> None:
                for name in names:
                    (plain / name).read_bytes()

            def plain_large() -> None:
                with (plain / "large.bin").open("wb") as out:
                    shutil.copyfileobj(io.BufferedReader(PatternStream(large_size)), out, MIB)

            baseline = {
                "writes": _rate(small_count, plain_writes),
                "reads": _rate(small_count, plain_reads),
                "large": _rate(large_size / MIB, plain_large),
            }
            results["rows"]["baseline: plain write_bytes / read_bytes"] = {
                key: {"rate": value, "ratio": 1.0} for key, value in baseline.items()
            }
            for label, store in stores.items():

                def writes(store: Any = store) -> None:
                    for name in names:
                        store.upload_file("bench", name, payload, "application/json")

                def reads(store: Any = store) -> None:
                    for name in names:
                        store.download_file("bench", name)

                def large(store: Any = store) -> None:
                    store.upload_file("bench", "large.bin", io.BufferedReader(PatternStream(large_size)))

                rates = {"writes": _rate(small_count, writes), "reads": _rate(small_count, reads),
                         "large": _rate(large_size / MIB, large)}  # fmt: skip
                assert store.stat("bench", "large.bin").size == large_size
                results["rows"][label] = {
                    key: {"rate": value, "ratio": value / baseline[key]} for key, value in rates.items()
                }
        finally:
            nanio.stop()
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Storage benchmark",
        "",
        f"{results['small_count']} objects of {results['small_size']} bytes written then read one call each; "
        f"one {results['large_mib']} MiB upload streamed from a file object. Ratios are to the plain-file "
        "baseline measured in the same run (2 shared cores, one run).",
        "",
        "| store | small writes/s | ratio | small reads/s | ratio | large upload MiB/s | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, row in results["rows"].items():
        cells = []
        for key in ("writes", "reads", "large"):
            cells += [f"{row[key]['rate']:,.0f}", f"{row[key]['ratio']:.3f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="storage benchmark")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run with tiny counts")
    args = parser.parse_args(argv)
    report = markdown(run(smoke=args.smoke))
    print(report)
    if not args.smoke:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(report)


if __name__ == "__main__":
    main()
