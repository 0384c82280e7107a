"""Pages rendered by Debian's headless Chromium, for the browser checks of the API docs and Flower.

Chromium runs with a fresh profile and the flags that work on these machines (root, no GPU, no background
traffic), and resolves no host but 127.0.0.1: a page that needs anything from the internet (a CDN's script)
renders without it, here and on a machine that has internet alike. ``--dump-dom`` prints the DOM once the
page's scripts, and the requests they make, have run (a virtual time budget).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]  # fmt: skip


def chromium() -> str:
    """The chromium executable. Fails (never skips) when it is missing: CI must run the browser checks."""
    found = shutil.which("chromium")
    assert found, "chromium is not installed: scripts/bootstrap.sh dev installs it (Debian package chromium)"
    return found


def rendered_dom(url: str, workdir: Path, budget_ms: int = 15_000, *, must_load: bool = True) -> str:
    """The DOM of ``url`` after its scripts ran for ``budget_ms`` of virtual time, in a fresh profile under
    ``workdir``. Raises AssertionError when Chromium fails, or prints nothing (a page that did not load, such
    as a refused login) while ``must_load``."""
    profile = workdir / f"chromium-{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    shutil.rmtree(profile, ignore_errors=True)
    assert result.returncode == 0 and (result.stdout.strip() or not must_load), (
        f"chromium failed on {url} (exit {result.returncode}):\n{result.stderr[-3000:]}"
    )
    return result.stdout
