"""Screenshots of the Dagster UI pages a user looks at, taken by headless Chromium on a throwaway project.

    # once: a browser and playwright (never `playwright install`: the system Chromium is used)
    apt-get install -y chromium                     # Debian/Ubuntu; or pass --chromium PATH
    .venv/bin/pip install -e '.[screenshots]'
    # or a separate venv: python3 -m venv /tmp/shots && /tmp/shots/bin/pip install playwright

    .venv/bin/python scripts/ui_screenshots.py                       # writes docs/screenshots/*.png
    /tmp/shots/bin/python scripts/ui_screenshots.py --python .venv/bin/python --out /tmp/shots-out

What it does, in about two minutes on a 2-core CPU:
1. makes a throwaway project folder: copies of data/images, data/prompts.txt and the demo catalog
   data/models.yaml (its `models` folder linked, not copied), and a DAGSTER_HOME whose dagster.yaml is
   the project's with storage left at the defaults (under that home);
2. materializes everything with `random-diffusion run` (prompts from the file), then once more with
   `random-diffusion run --prompt ...` so `prompt_list` shows a submitted list;
3. starts the guarded UI (`python -m random_diffusion_dagster.runtime.cli ui`) on 127.0.0.1 and waits until it
   serves the code location;
4. saves PNGs (1400 px wide, each kept under 300 KB) of: the asset graph, one `diffused_image`
   partition's metadata and its preview (source beside result), the run's tags, the `diffusion_report`
   summary table and contact sheet, and `prompt_list`;
5. stops the UI and deletes the folder (`--keep` keeps it, with the UI's log).

`--python` is the interpreter that has the project installed (default: this one if it can import
random_diffusion_dagster, else .venv/bin/python); the script itself only needs playwright. It exits
with status 2 and says what to install when playwright or Chromium is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))

from local_services import project_env  # noqa: E402  (standard library only: runs under the screenshot venv)

VIEWPORT = {"width": 1400, "height": 900}
MAX_BYTES = 300_000
PARTITION = "coffee.jpg"
GRAPH_ZOOM_STEPS = 2
GRAPH_HEIGHT = 1100  # the zoomed-in graph, all three groups, is about 900 px tall
GRAPH_ASSETS = (
    "prompts_file",
    "models_file",
    "image_file",
    "prompt_list",
    "model_catalog",
    "source_images",
    "diffused_image",
    "diffusion_report",
    "model_comparison",
    "comparison_report",
)
SUBMITTED_PROMPTS = ["a watercolor of a quiet harbour at dawn", "a linocut print, bold black lines"]
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class Missing(Exception):
    """A prerequisite is not installed; the message says how to get it."""


def find_chromium(explicit: str | None) -> str:
    candidates = [explicit] if explicit else [os.environ.get("CHROMIUM_PATH"), *CHROMIUM_CANDIDATES]
    for candidate in filter(None, candidates):
        path = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if path and os.access(path, os.X_OK):
            return path
    raise Missing(
        (
            f"Chromium not found at {explicit!r}."
            if explicit
            else "No Chromium found (looked for " + ", ".join(CHROMIUM_CANDIDATES) + " on PATH and $CHROMIUM_PATH)."
        )
        + " Install it (Debian/Ubuntu: `apt-get install -y chromium`) or pass --chromium PATH."
    )


def import_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise Missing(
            f"playwright is not importable by {sys.executable} ({exc}). Install it: "
            "`pip install -e '.[screenshots]'` in the project venv, or a separate venv "
            "(`python3 -m venv /tmp/shots && /tmp/shots/bin/pip install playwright`) and run this script "
            "with that Python and --python .venv/bin/python. No `playwright install` is needed: "
            "the system Chromium is used."
        ) from None
    return sync_playwright


def default_python() -> str:
    try:
        import random_diffusion_dagster  # noqa: F401

        return sys.executable
    except ImportError:
        return str(PROJECT_ROOT / ".venv" / "bin" / "python")


def check_python(python: str) -> None:
    probe = subprocess.run(
        [python, "-c", "import random_diffusion_dagster, PIL"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        raise Missing(
            f"{python} cannot import the project ({probe.stderr.strip().splitlines()[-1:]}). "
            "Pass --python with the project's interpreter (make setup creates .venv)."
        )


def make_project(root: Path) -> dict[str, str]:
    """A throwaway project under `root` and the environment that points the project at it."""
    data = PROJECT_ROOT / "data"
    shutil.copytree(data / "images", root / "images")  # copy2 keeps mtimes: the images count as settled
    shutil.copy2(data / "prompts.txt", root / "prompts.txt")
    shutil.copy2(data / "models.yaml", root / "models.yaml")
    (root / "models").symlink_to(data / "models", target_is_directory=True)  # catalog paths are relative
    home = root / "home"
    home.mkdir()
    # this checkout's code, whichever venv runs it
    return {**project_env(root, home), "PYTHONPATH": str(PROJECT_ROOT)}


# The project's dagster.yaml with storage at the defaults, i.e. under the throwaway DAGSTER_HOME (run by --python,
# which has PyYAML; this script's own interpreter needs only playwright).
WRITE_HOME_CONFIG = r"""
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
for key in ("storage", "local_artifact_storage", "compute_logs"):
    config.pop(key, None)
open(sys.argv[2], "w").write(yaml.safe_dump(config))
"""


def run_cli(python: str, env: dict[str, str], *args: str) -> None:
    command = [python, "-m", "random_diffusion_dagster.runtime.cli", *args]
    print("$", " ".join(["random-diffusion", *args]), flush=True)
    result = subprocess.run(command, cwd=PROJECT_ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    if result.returncode:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-5000:])
        raise SystemExit(f"error: `random-diffusion {' '.join(args)}` failed (exit code {result.returncode})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["data"]


def ui_ready(url: str) -> bool:
    try:
        node = graphql(url, '{ assetNodeOrError(assetKey: {path: ["diffused_image"]}) { __typename } }')
        return node["assetNodeOrError"]["__typename"] == "AssetNode"
    except (OSError, urllib.error.URLError, KeyError, TypeError, ValueError):
        return False


def latest_run_id(url: str) -> str:
    runs = graphql(url, "{ runsOrError(limit: 20) { ... on Runs { results { runId jobName } } } }")
    return next(run["runId"] for run in runs["runsOrError"]["results"] if run["jobName"] == "diffuse_images")


def start_ui(python: str, env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")
    return subprocess.Popen(
        [python, "-m", "random_diffusion_dagster.runtime.cli", "ui", "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_ui(process: subprocess.Popen) -> None:
    """SIGTERM: `random-diffusion ui` stops its webserver and daemon; then make sure the group is gone."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers (code servers) in the session it started
    except ProcessLookupError:
        pass


class Shooter:
    """One headless Chromium page on the UI; `shot` saves the viewport under `out`."""

    def __init__(self, page, base_url: str, out: Path):
        self.page, self.base_url, self.out = page, base_url, out
        self.saved: list[Path] = []

    def open(self, path: str, height: int = VIEWPORT["height"]) -> None:
        self.page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
        self.page.goto(self.base_url + path)
        self.page.wait_for_load_state("networkidle")
        self.page.wait_for_timeout(1500)  # graph layout and late queries
        skip = self.page.get_by_role("button", name="Skip")  # the first-visit "Join the Dagster community" dialog
        if skip.count() and skip.first.is_visible():
            skip.first.click()
            self.page.wait_for_timeout(500)

    def shot(self, name: str) -> None:
        path = self.out / f"{name}.png"
        self.page.screenshot(path=str(path))
        self.saved.append(path)
        print(f"saved {path}", flush=True)

    def show_markdown(self, row_label: str) -> None:
        """Open a markdown metadata entry's dialog: the '[Show Markdown]' link in the row labelled `row_label`."""
        row = self.page.locator("tr", has=self.page.get_by_text(row_label, exact=True))
        row.get_by_text("[Show Markdown]").first.click()
        dialog = self.page.get_by_role("dialog")
        dialog.locator("img").first.wait_for()
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('[role=dialog] img')].every(i => i.complete && i.naturalWidth)"
        )
        self.page.wait_for_timeout(300)

    def close_dialog(self) -> None:
        self.page.keyboard.press("Escape")
        self.page.wait_for_timeout(300)


def take_screenshots(sync_playwright, chromium: str, base_url: str, run_id: str, out: Path) -> list[Path]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            context = browser.new_context(viewport=VIEWPORT, timezone_id="UTC", locale="en-US")
            shooter = Shooter(context.new_page(), base_url, out)
            page = shooter.page

            # 1. The global asset graph, every group expanded, the asset tree folded away for room.
            shooter.open(
                "/asset-groups?expanded=global%40global%3Adiffusion%2Cglobal%40global%3Ainputs"
                "%2Cglobal%40global%3Acomparison",
                height=GRAPH_HEIGHT,
            )
            page.get_by_role("button", name="Hide navigation").click()
            page.locator("button:has([aria-label='panel_show_right'])").first.click()  # fold the asset tree
            page.wait_for_timeout(1500)

            def graph_box() -> tuple[float, float, float, float]:
                """Left, top, right, bottom of the asset names: the whole graph is around them."""
                boxes = [page.get_by_text(name, exact=True).first.bounding_box() for name in GRAPH_ASSETS]
                return (
                    min(box["x"] for box in boxes),
                    min(box["y"] for box in boxes),
                    max(box["x"] + box["width"] for box in boxes),
                    max(box["y"] + box["height"] for box in boxes),
                )

            # Zoom in around the graph's middle until the nodes show their details (status, partitions).
            left, top, right, bottom = graph_box()
            page.mouse.move((left + right) / 2, (top + bottom) / 2)
            for _ in range(GRAPH_ZOOM_STEPS):
                page.keyboard.down("Control")
                page.mouse.wheel(0, -100)
                page.keyboard.up("Control")
                page.wait_for_timeout(300)
            page.wait_for_timeout(1000)
            # Then drag the canvas so the whole graph sits in the middle of the view. Zoomed in, a name is at
            # its node's top left: the groups reach about 30 px left, 80 up, 215 right and 135 down of them.
            left, top, right, bottom = graph_box()
            graph_middle = ((left - 30 + right + 215) / 2, (top - 80 + bottom + 135) / 2)
            view_middle = ((68 + VIEWPORT["width"] - 60) / 2, (110 + GRAPH_HEIGHT) / 2)  # less the side and top bars
            page.mouse.move(1250, 200)
            page.mouse.down()
            page.mouse.move(1250 + view_middle[0] - graph_middle[0], 200 + view_middle[1] - graph_middle[1], steps=10)
            page.mouse.up()
            page.wait_for_timeout(1000)
            shooter.shot("01_asset_graph")

            # 2. One partition's latest materialization: the metadata table, then its preview dialog.
            shooter.open(f"/assets/diffused_image?view=partitions&partition={PARTITION}", height=1500)
            page.get_by_text("output_path", exact=True).wait_for()
            shooter.shot("02_partition_metadata")
            shooter.open(f"/assets/diffused_image?view=partitions&partition={PARTITION}")
            shooter.show_markdown("preview")
            shooter.shot("03_partition_preview")
            shooter.close_dialog()

            # 3. The run: its totals are run tags, not per-image metadata.
            shooter.open(f"/runs/{run_id}")
            page.get_by_role("button", name="View tags and config").click()
            page.get_by_role("dialog").wait_for()
            page.wait_for_timeout(500)
            shooter.shot("04_run_tags")
            shooter.close_dialog()

            # 4. The report's latest materialization: summary table, then the contact sheet.
            shooter.open("/assets/diffusion_report?view=events", height=1000)
            page.get_by_text("contact_sheet", exact=True).wait_for()
            shooter.shot("05_report_summary")
            shooter.show_markdown("contact_sheet")
            shooter.shot("06_report_contact_sheet")
            shooter.close_dialog()

            # 5. prompt_list: where the current list came from (a submitted one here).
            shooter.open("/assets/prompt_list?view=events", height=1200)
            page.get_by_text("submitted_by", exact=True).first.wait_for()
            shooter.shot("07_prompt_list")
            return shooter.saved
        finally:
            browser.close()


SHRINK = r"""
import sys
from pathlib import Path
from PIL import Image
limit = int(sys.argv[1])
for name in sys.argv[2:]:
    path = Path(name)
    image = Image.open(path).convert("RGB")
    image.save(path, optimize=True)
    scale = 1.0
    while path.stat().st_size > limit:
        size = (round(image.width * scale), round(image.height * scale))
        small = image if scale == 1.0 else image.resize(size, Image.LANCZOS)
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
        scale *= 0.85
    print(f"{path.name}: {Image.open(path).size[0]}x{Image.open(path).size[1]}, {path.stat().st_size // 1024} KB")
"""


def shrink(python: str, paths: list[Path]) -> None:
    """PNG-optimize each screenshot; palette-reduce (and if need be downscale) those over MAX_BYTES."""
    subprocess.run([python, "-c", SHRINK, str(MAX_BYTES), *map(str, paths)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=PROJECT_ROOT / "docs" / "screenshots",
        help="folder for the PNGs (default: docs/screenshots)",
    )
    parser.add_argument(
        "--python",
        default=None,
        help="interpreter with the project installed "
        "(default: this one if it imports random_diffusion_dagster, else .venv/bin/python)",
    )
    parser.add_argument("--chromium", default=None, help="Chromium executable (default: chromium on PATH)")
    parser.add_argument("--port", type=int, default=None, help="UI port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway project and the UI's log")
    args = parser.parse_args(argv)

    python = args.python or default_python()
    try:
        sync_playwright = import_playwright()
        chromium = find_chromium(args.chromium)
        check_python(python)
    except Missing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="rdd-screenshots-"))
    env = make_project(root)
    subprocess.run(
        [
            python,
            "-c",
            WRITE_HOME_CONFIG,
            str(PROJECT_ROOT / "dagster.yaml"),
            str(Path(env["DAGSTER_HOME"]) / "dagster.yaml"),
        ],
        check=True,
    )
    process = None
    try:
        run_cli(python, env, "run")
        run_cli(python, env, "run", *(arg for prompt in SUBMITTED_PROMPTS for arg in ("--prompt", prompt)))
        port = args.port or free_port()
        base_url = f"http://127.0.0.1:{port}"
        process = start_ui(python, env, port, root / "ui.log")
        deadline = time.monotonic() + 180
        while not ui_ready(base_url):
            if process.poll() is not None or time.monotonic() > deadline:
                sys.stderr.write((root / "ui.log").read_text()[-5000:])
                raise SystemExit("error: the UI did not come up (its log is above)")
            time.sleep(1)
        print(f"UI up at {base_url}", flush=True)
        saved = take_screenshots(sync_playwright, chromium, base_url, latest_run_id(base_url), args.out)
        shrink(python, saved)
    finally:
        if process is not None:
            stop_ui(process)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
