"""CPU time an idle `random-diffusion daemon` uses, by how often it looks for new backfills.

    python benchmarks/idle_daemon.py --interval 1 --interval 5 --out benchmarks/results/idle-daemon-cpu.json

For each interval (RANDOM_DIFFUSION_BACKFILL_INTERVAL_SECONDS) in the order given: a fresh instance with the
project's dagster.yaml and an empty images folder, `random-diffusion daemon` started, --settle seconds left for
its start-up, then the CPU seconds it and all its children (Dagster's daemon, its code servers) use in --window.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    import psutil

    process = psutil.Process(pid)
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass  # ended while we looked
    return total


def measure(interval: int, settle: float, window: float) -> float:
    home = Path(tempfile.mkdtemp(prefix="idle-daemon-"))
    try:
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        (home / "images").mkdir()
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "RANDOM_DIFFUSION_BACKFILL_INTERVAL_SECONDS": str(interval),
            "RANDOM_DIFFUSION_IMAGES_DIR": str(home / "images"),
            "RANDOM_DIFFUSION_OUTPUT_DIR": str(home / "outputs"),
        }
        command = [str(Path(sys.executable).parent / "random-diffusion"), "daemon", "-w", str(ROOT / "workspace.yaml")]
        daemon = subprocess.Popen(
            command, cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            time.sleep(settle)
            before = cpu_seconds(daemon.pid)
            time.sleep(window)
            return round(cpu_seconds(daemon.pid) - before, 2)
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=60)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=int, action="append", required=True, help="seconds; repeatable")
    parser.add_argument("--settle", type=float, default=40.0)
    parser.add_argument("--window", type=float, default=90.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    readings = [{"interval_seconds": s, "cpu_seconds": measure(s, args.settle, args.window)} for s in args.interval]
    result = {
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}",
        "window_seconds": args.window,
        "settle_seconds": args.settle,
        "readings": readings,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
