"""Screenshots of optuna-dashboard showing an autotune study, taken with headless Chromium.

    python benchmarks/dashboard_screenshot.py --storage sqlite:///studies/autotune.db --output screenshots/

Needs Debian's ``chromium`` (``apt-get install chromium``). It serves the storage with ``autotune dashboard`` on a
free loopback port, opens the study's pages and writes one PNG per page; look at them to check that the study, its
trials and their metrics show.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# Page, and window height: a trial's page is tall, with its note, parameters and user attributes.
PAGES = {"overview": ("", 1100), "trials": ("/trials", 2600), "note": ("/note", 1100)}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=15000"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite:///studies/autotune.db")
    parser.add_argument("--study", help="study name (default: the first in the storage)")
    parser.add_argument("--output", type=Path, default=Path("screenshots"))
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs Debian's chromium: apt-get install chromium")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dashboard = subprocess.Popen([sys.executable, "-m", "autotune", "dashboard", "--storage", args.storage,
                                  "--port", str(port)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    try:
        studies = _wait_for_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        study = next(s for s in studies if args.study in (None, s["study_name"]))
        args.output.mkdir(parents=True, exist_ok=True)
        for name, (suffix, height) in PAGES.items():
            url = f"http://127.0.0.1:{port}/dashboard/studies/{study['study_id']}{suffix}"
            target = args.output / f"dashboard-{name}.png"
            with tempfile.TemporaryDirectory() as profile:
                subprocess.run([chromium, *CHROMIUM_FLAGS, f"--window-size=1500,{height}", f"--user-data-dir={profile}",
                                f"--screenshot={target.resolve()}", url], check=True, capture_output=True, timeout=120)
            print(f"{name}: {url} -> {target}")
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
    return 0


def _wait_for_json(url: str, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return json.load(reply)
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
