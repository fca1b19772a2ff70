"""How long `random-diffusion ui` takes to stop with a run in flight, and what it leaves behind.

    python benchmarks/ui_stop.py --repeats 2 --out benchmarks/results/ui-stop-cpu.json

For each signal (Ctrl-C to the terminal's process group, SIGTERM to `ui`) and repeat: a fresh project (12 images,
the shipped tiny-sd15 made slow: 200 steps at 128 px) and instance, `ui` started, new_images_sensor's run waited for
until it has written a first result, then the signal. Reported: seconds from the signal to `ui`'s exit, processes
still running with its DAGSTER_HOME 2 s later, ERROR/Traceback lines on its console, and the run's recorded status.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_services import project_env, shipped_instance_config, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
IMAGES = 12
PROBLEM_LINE = re.compile(r"\bERROR\b|Traceback")
SIGNALS = {
    "ctrl-c": lambda process: os.killpg(process.pid, signal.SIGINT),
    "sigterm": lambda process: process.send_signal(signal.SIGTERM),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _running_with_home(home: Path) -> int:
    marker = f"\0DAGSTER_HOME={home}\0".encode()
    count = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            alive = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            count += alive and marker in b"\0" + (proc / "environ").read_bytes()
        except (OSError, IndexError):
            continue
    return count


def _project(root: Path) -> Path:
    for index in range(IMAGES):
        path = root / "images" / f"img{index:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (96, 64), (20 * index, 120, 200 - 10 * index)).save(path)
        past = time.time() - 120
        os.utime(path, (past, past))  # settled: the sensor takes it on its first look
    (root / "prompts.txt").write_text("a lighthouse\n")
    catalog = {
        "defaults": {"resolution": 128, "num_inference_steps": 200, "strength": 0.5},
        "models": [{"name": "tiny-sd15", "path": str(ROOT / "data" / "models" / "tiny-sd15")}],
    }
    (root / "models.yaml").write_text(yaml.safe_dump(catalog))
    home = (root / "home").resolve()
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(shipped_instance_config(ROOT, home)))
    return home


def measure(how: str) -> dict:
    root = Path(tempfile.mkdtemp(prefix="ui-stop-"))
    try:
        home = _project(root)
        log = root / "ui.log"
        with open(log, "w") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "random_diffusion_dagster.runtime.cli", "ui", "-p", str(_free_port())],
                cwd=ROOT,
                env={**os.environ, **project_env(root, home)},
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        outputs = root / "outputs"
        wait_for(lambda: any(outputs.glob("*.png")), 300, "a first result", interval=0.2)
        written = len(list(outputs.glob("*.png")))
        sent = time.monotonic()
        SIGNALS[how](process)
        process.wait(timeout=120)
        seconds = time.monotonic() - sent
        time.sleep(2)
        console = log.read_text()
        from dagster import DagsterInstance
        from dagster._core.instance.ref import InstanceRef

        with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
            statuses = sorted(r.dagster_run.status.value for r in instance.get_run_records())
        return {
            "signal": how,
            "stop_seconds": round(seconds, 2),
            "exit_code": process.returncode,
            "left_running_after_2s": _running_with_home(home),
            "error_or_traceback_lines": sum(bool(PROBLEM_LINE.search(line)) for line in console.splitlines()),
            "results_written_before_signal": written,
            "run_statuses": statuses,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ui-stop-cpu.json")
    args = parser.parse_args()
    readings = [measure(how) for _ in range(args.repeats) for how in SIGNALS]
    result = {"machine": f"{os.cpu_count()} CPUs, {platform.machine()}", "images": IMAGES, "readings": readings}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
