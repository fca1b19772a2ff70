"""Screenshots of the Dagster UI pages a user looks at, taken by headless Chromium on a throwaway project.

    # once: a browser and playwright (never `playwright install`: the system Chromium is used)
    apt-get install -y chromium                     # Debian/Ubuntu; or pass --chromium PATH
    .venv/bin/pip install -e '.[screenshots]'
    # or a separate venv: python3 -m venv /tmp/shots && /tmp/shots/bin/pip install playwright

    .venv/bin/python scripts/ui_screenshots.py                       # writes docs/screenshots/*.png
    /tmp/shots/bin/python scripts/ui_screenshots.py --python .venv/bin/python --out /tmp/shots-out

What it does, in about two and a half minutes on a 2-core CPU:
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
5. edits the prompts file as a user would and, once the daemon's input_files_sensor has refreshed `prompt_list`
   (within a minute), saves `diffused_image`'s overview warning about the failed check `results_up_to_date`,
   the check's page (how many images are out of date) and its table of why;
6. raises the catalog's steps (so that a run lasts long enough to be caught part way), then saves
   `catch_up_schedule`'s Preview tick result, launches it as a user would (Launch all) and saves the
   Partitions tab while that run goes on: some images already materialized, the rest materializing;
7. saves the refusal of "Add a partition" for `holiday-photo.jpg`, a name that is no image in the folder;
8. stops the UI and deletes the folder (`--keep` keeps it, with the UI's log).

`--python` is the interpreter that has the project installed (default: this one if it can import
random_diffusion_dagster, else .venv/bin/python); the script itself only needs playwright. It exits
with status 2 and says what to install when playwright or Chromium is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
GRAPH_HEIGHT = 1200  # the zoomed-in graph, all three groups, is about 1,000 px tall
GRAPH_ASSETS = (
    "prompts_file",
    "models_file",
    "image_file",
    "prompt_list",
    "model_catalog",
    "source_images",
    "image_draw",
    "diffused_image",
    "diffusion_report",
    "augmented_dataset",
    "model_comparison",
    "comparison_report",
)
SUBMITTED_PROMPTS = ["a watercolor of a quiet harbour at dawn", "a linocut print, bold black lines"]
EDITED_PROMPT = "a paper cut-out diorama of a harbour town"  # the line the prompts edit adds
SLOW_STEPS = 200  # the catalog's default steps raised from 10: a run over the sample images lasts ~20 s, not ~5
BOGUS_PARTITION = "holiday-photo.jpg"
WAIT_SECONDS = 240  # input_files_sensor looks every 30 s, then its run starts a process
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


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


def wait_until(predicate, what: str, timeout: float = WAIT_SECONDS):
    """Poll until `predicate()` is truthy and return its value; exit naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise SystemExit(f"error: timed out after {timeout:.0f} s waiting for {what}")


UP_TO_DATE_QUERY = """
{ assetNodeOrError(assetKey: {path: ["diffused_image"]}) { ... on AssetNode { assetChecksOrError {
  ... on AssetChecks { checks { name executionForLatestMaterialization { status } } } } } } }"""


def up_to_date_failed(url: str) -> bool:
    checks = graphql(url, UP_TO_DATE_QUERY)["assetNodeOrError"]["assetChecksOrError"]["checks"]
    (execution,) = [c["executionForLatestMaterialization"] for c in checks if c["name"] == "results_up_to_date"]
    return bool(execution) and execution["status"] == "FAILED"


def runs_settled(url: str) -> bool:
    runs = graphql(url, "{ runsOrError(limit: 50) { ... on Runs { results { status } } } }")
    return all(run["status"] in ("SUCCESS", "FAILURE", "CANCELED") for run in runs["runsOrError"]["results"])


def last_materialized(url: str, asset: str) -> float:
    """When `asset` was last materialized (ms since the epoch), 0 if never."""
    query = (
        '{ assetNodeOrError(assetKey: {path: ["%s"]}) '
        "{ ... on AssetNode { assetMaterializations(limit: 1) { timestamp } } } }"
    )
    events = graphql(url, query % asset)["assetNodeOrError"]["assetMaterializations"]
    return float(events[0]["timestamp"]) if events else 0.0


def edit_prompts(root: Path) -> None:
    """What a user does: add a line to the prompts file. Every image's prompt is drawn again."""
    path = root / "prompts.txt"
    path.write_text(path.read_text().rstrip("\n") + f"\n{EDITED_PROMPT}\n")


def slow_catalog(root: Path) -> None:
    """Raise the catalog's default steps, so that a run lasts long enough to be seen part way."""
    path = root / "models.yaml"
    text = path.read_text()
    slow = re.sub(r"(?m)^(  num_inference_steps: )\d+$", rf"\g<1>{SLOW_STEPS}", text, count=1)
    if slow == text:
        raise SystemExit(f"error: {path} has no `  num_inference_steps:` in its defaults to raise")
    path.write_text(slow)


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
        self.missed: list[str] = []  # shots the UI could not be caught in the state they show

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


def take_screenshots(sync_playwright, chromium: str, base_url: str, run_id: str, out: Path, root: Path) -> Shooter:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
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

            shoot_out_of_date(shooter, root)
            shoot_progress(shooter, root)
            shoot_refused_partition(shooter)
            return shooter
        finally:
            browser.close()


def shoot_out_of_date(shooter: Shooter, root: Path) -> None:
    """After a prompts edit: the overview's warning (its popover names the check), the check's page, its why."""
    page = shooter.page
    edit_prompts(root)
    print("edited prompts.txt; waiting for the daemon to refresh prompt_list and run results_up_to_date", flush=True)
    wait_until(lambda: up_to_date_failed(shooter.base_url), "results_up_to_date to fail after the prompts edit")
    shooter.open("/assets/diffused_image")
    badges = page.get_by_text("Latest check results", exact=True).locator("xpath=..")
    badges.get_by_role("img", name="warning_outline").first.hover()
    popover = page.locator(".bp5-popover-content").filter(has_text="Failed checks")
    popover.get_by_text("results_up_to_date").wait_for()
    page.wait_for_timeout(300)
    shooter.shot("08_out_of_date_overview")

    shooter.open("/assets/diffused_image?view=checks&checkDetail=results_up_to_date")
    page.get_by_text("out_of_date", exact=True).first.wait_for()
    shooter.shot("09_out_of_date_check")
    page.locator("tr", has=page.get_by_text("why", exact=True)).get_by_text("[Show Markdown]").click()
    page.get_by_role("dialog").locator("table").wait_for()
    page.wait_for_timeout(300)
    shooter.shot("10_out_of_date_why")
    shooter.close_dialog()


def shoot_progress(shooter: Shooter, root: Path) -> None:
    """The redo, launched as the check says (catch_up_schedule > Preview tick result > Launch all), on a slower
    catalog; then the Partitions tab while its run goes on, one of its finished images opened."""
    page, url = shooter.page, shooter.base_url
    before = last_materialized(url, "model_catalog")
    slow_catalog(root)
    print(f"raised the catalog's steps to {SLOW_STEPS}; waiting for the daemon to refresh model_catalog", flush=True)
    wait_until(
        lambda: last_materialized(url, "model_catalog") > before and runs_settled(url),
        "model_catalog to be refreshed after the catalog edit",
    )
    shooter.open("/locations/random_diffusion_dagster/schedules/catch_up_schedule")
    page.get_by_role("button", name="Preview tick result").click()
    page.get_by_role("button", name="Continue").click()
    launch = page.get_by_role("button").filter(has_text="Launch all")
    launch.wait_for()
    page.get_by_text("Requested runs", exact=False).wait_for()
    page.wait_for_timeout(300)
    shooter.shot("11_catch_up_preview")
    launch.click()
    page.wait_for_url(lambda address: "/runs" in address)

    shooter.open("/assets/diffused_image?view=partitions")
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        page.get_by_text(re.compile(r"^Materialized \(\d+\)$")).wait_for()
        counts = dict(re.findall(r"(Materialized|Materializing) \((\d+)\)", page.inner_text("body")))
        if int(counts.get("Materialized", 0)) and int(counts.get("Materializing", 0)):
            done = page.locator("div[style*='border-radius: 100%'][style*='accent-green']").first.locator("xpath=..")
            done.click()  # one finished image: its new materialization, while the run goes on
            page.get_by_text("Latest materialization", exact=True).first.wait_for()
            page.get_by_text("num_inference_steps", exact=True).first.wait_for()
            page.wait_for_timeout(500)
            shooter.shot("12_progress_mid_run")
            break
        if runs_settled(url) and not int(counts.get("Materializing", 0)):
            shooter.missed.append("12_progress_mid_run: the run ended before a page showed it part way")
            break
        page.wait_for_timeout(500)
        page.reload(wait_until="networkidle")
    else:
        shooter.missed.append("12_progress_mid_run: no run went on within the wait")
    wait_until(lambda: runs_settled(url), "the catch-up run to end")


def shoot_refused_partition(shooter: Shooter) -> None:
    """Materialize... > Add a partition > a name that is no image > Save: the guard's refusal, as the UI shows it."""
    page = shooter.page
    shooter.open("/assets/diffused_image?view=partitions")
    page.get_by_role("button", name="Materialize…").first.click()
    # Its draw is made in the same step: Dagster's own dialog says image_draw comes along.
    page.get_by_role("dialog").filter(has_text="Additional assets will be materialized").get_by_role(
        "button", name="Confirm"
    ).click()
    page.get_by_text("Add a partition", exact=True).click()
    adding = page.get_by_role("dialog").filter(has_text="Add a partition for images")
    adding.locator("input").fill(BOGUS_PARTITION)
    adding.get_by_role("button", name="Save", exact=True).click()
    page.get_by_role("dialog").filter(has_text="Could not add partition").wait_for()
    page.wait_for_timeout(300)
    shooter.shot("13_add_partition_refused")


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
    missed: list[str] = []
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
        graphql(base_url, "mutation { setNuxSeen }")  # no first-visit "Join the Dagster community" dialog
        shooter = take_screenshots(sync_playwright, chromium, base_url, latest_run_id(base_url), args.out, root)
        shrink(python, shooter.saved)
        missed = shooter.missed
        for shot in missed:
            print(f"warning: not retaken: {shot}", file=sys.stderr)
    finally:
        if process is not None:
            stop_ui(process)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
