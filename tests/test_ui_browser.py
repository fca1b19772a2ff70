"""What a user sees, in a real browser (the system Chromium, driven by Playwright) on `random-diffusion ui`: the
guarded webserver and the daemon, started as the README says, on a throwaway project. Issue 36's items:

1. out of date in plain sight: after a prompts-file edit, diffused_image's overview warns with the failed check
   results_up_to_date, whose page counts the out-of-date images;
2. progress as it happens: while a run over many images goes on, its finished images are already materialized;
4. no dead ends: "Add a partition" for a name that is no image is refused with the guard's one-line message.

Everything is read from what the page shows; GraphQL only cross-checks (the run's status, the partition list).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest
import requests
import yaml

from random_diffusion_dagster.runtime.remote import Deployment

from helpers import ROUTINE_DAEMON_LINES, make_image, write_catalog
from local_services import descendants

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from local_services import project_env, shipped_instance_config, stop_process_groups, wait_for  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# One model, batches of 4 (the CPU default), a few seconds per batch: a run over IMAGES images spends most of its time
# with some of them done and some not, however busy the machine.
SLOW_DEFAULTS = {"resolution": 128, "num_inference_steps": 250, "strength": 0.6}
IMAGES = [f"photo{index:02d}.png" for index in range(12)]
PROMPTS = "a lighthouse\na forest\n"
EDITED_PROMPTS = "a harbour at night\na snowy owl\n"  # no prompt in common: every image is drawn a new one
BOGUS = "holiday-photo.jpg"

pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reachable(url: str) -> bool:
    try:
        return requests.get(f"{url}/server_info", timeout=5).ok
    except requests.ConnectionError:
        return False


@pytest.fixture(scope="module")
def ui(tmp_path_factory, models_dir):
    """`random-diffusion ui` on an empty images folder, a prompts file and a slow one-model catalog."""
    root = tmp_path_factory.mktemp("ui-browser")
    (root / "images").mkdir()
    (root / "prompts.txt").write_text(PROMPTS)
    write_catalog(root / "models.yaml", models_dir, names=("tiny-sd15",), **SLOW_DEFAULTS)
    home = root / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(shipped_instance_config(PROJECT_ROOT, home)))
    env = {**os.environ, **project_env(root, home)}
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "ui.log", "w")
    process = subprocess.Popen(
        [str(BIN / "random-diffusion"), "ui", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: _reachable(url) or process.poll() is not None, 180, "the UI")
        assert process.poll() is None, (root / "ui.log").read_text()[-5000:]
        # Dagster's first-visit "Join the Dagster community" dialog, dismissed once for this instance, as Skip does.
        Deployment(url).query("mutation { setNuxSeen }", {})
        yield {"url": url, "root": root, "images": root / "images", "log": root / "ui.log"}
    finally:
        # The webserver and daemon lead sessions of their own: `ui` stops them on SIGTERM; any left are killed.
        groups = {os.getpgid(pid) for pid in descendants(process.pid) if _alive(pid)}
        stop_process_groups([process])
        for group in groups - {process.pid}:
            with suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        log.close()


def _alive(pid: int) -> bool:
    try:
        os.getpgid(pid)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium. Missing, the test fails and says how to install it (never skipped)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `.venv/bin/pip install -e '.[test]'` (or `pip install playwright`).")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"No Chromium at {CHROMIUM}: install it (Debian/Ubuntu: `apt-get install -y chromium`) or set "
            "CHROMIUM_PATH to a Chromium or Chrome executable. No `playwright install` is needed."
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, ui):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, timezone_id="UTC", locale="en-US")
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def _open(page, ui, path: str) -> None:
    page.goto(ui["url"] + path)
    page.wait_for_load_state("networkidle")


def _add_images(images: Path, names=IMAGES) -> None:
    for index, name in enumerate(names):
        make_image(images / name, size=(96, 64), color=(20 * index, 200 - 10 * index, 90))
        past = time.time() - 120
        os.utime(images / name, (past, past))  # settled: new_images_sensor takes it on its first look


RUNS_QUERY = "query { runsOrError { ... on Runs { results { runId jobName status } } } }"


def _runs(ui) -> list[dict]:
    return Deployment(ui["url"]).query(RUNS_QUERY, {})["runsOrError"]["results"]


def _ended(run: dict) -> bool:
    return run["status"] in ("SUCCESS", "FAILURE", "CANCELED")


def _all_finished(ui) -> bool:
    return all(_ended(run) for run in _runs(ui))


ERRORS_QUERY = """
query($runId: ID!) { logsForRun(runId: $runId) { ... on EventConnection { events {
  ... on MessageEvent { level message } ... on ErrorEvent { error { message stack } } } } } }"""


def _errors(ui, run_id: str) -> str:
    """A failed run's error lines and stack traces, for the assertion message."""
    events = Deployment(ui["url"]).query(ERRORS_QUERY, {"runId": run_id})["logsForRun"]["events"]
    lines = [event["message"] for event in events if event.get("level") == "ERROR"]
    lines += [event["error"]["message"] + "".join(event["error"]["stack"]) for event in events if event.get("error")]
    return "\n".join(lines)[-6000:] + "\n"


def _every_image_made(ui) -> None:
    """Every image of IMAGES has its result recorded and no run is going on (adding the images if a test before
    this one did not)."""
    if not any(ui["images"].iterdir()):
        _add_images(ui["images"])

    def made() -> bool:
        node = Deployment(ui["url"]).query(PARTITION_STATS_QUERY, {})["assetNodeOrError"]
        return node["partitionStats"]["numMaterialized"] == len(IMAGES) and _all_finished(ui)

    wait_for(made, 300, "every image to be made")


PARTITION_STATS_QUERY = """
query { assetNodeOrError(assetKey: {path: ["diffused_image"]}) {
  ... on AssetNode { partitionKeys partitionStats { numMaterialized numMaterializing } } } }"""
COUNTS = re.compile(r"^(Failed|Materialized|Materializing|Missing) \((\d+)\)$", re.MULTILINE)


def _shown_counts(page) -> dict[str, int]:
    """The partition counts diffused_image's Partitions tab shows (its filter: Materialized (n), ...)."""
    page.get_by_text(re.compile(r"^Materialized \(\d+\)$")).wait_for()
    return {state: int(count) for state, count in COUNTS.findall(page.inner_text("body"))}


def test_a_long_run_shows_its_finished_images_as_materialized_while_it_goes_on(page, ui):
    """Item 2. Twelve images dropped in the folder: new_images_sensor starts one run over them. While that run is
    STARTED the Partitions tab already counts some of them materialized (green) and the rest materializing."""
    _add_images(ui["images"])
    _open(page, ui, "/assets/diffused_image?view=partitions")
    seen, midway = [], None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        counts = _shown_counts(page)
        runs = [run for run in _runs(ui) if run["jobName"] == "diffuse_images"]
        status = runs[0]["status"] if runs else None  # read after the page: the run was this far along, or further
        seen.append((counts.get("Materialized"), counts.get("Materializing"), status))
        if 0 < counts.get("Materialized", 0) < len(IMAGES) and counts.get("Materializing") and status == "STARTED":
            midway = counts
            break
        if runs and _ended(runs[0]):
            break
        page.wait_for_timeout(500)
        page.reload(wait_until="networkidle")
    assert midway, f"no page showed some but not all images materialized during the run; (shown, status): {seen}"
    assert midway["Materialized"] + midway["Materializing"] == len(IMAGES), midway

    (run,) = wait_for(lambda: [r for r in _runs(ui) if r["jobName"] == "diffuse_images" and _ended(r)], 300, "its end")
    assert run["status"] == "SUCCESS", _errors(ui, run["runId"]) + ui["log"].read_text()[-3000:]
    page.reload(wait_until="networkidle")
    assert _shown_counts(page) == {"Failed": 0, "Materialized": len(IMAGES), "Materializing": 0, "Missing": 0}


def _check_badges(page):
    """The overview's "Latest check results": a badge per outcome (warning, passed), each with its count."""
    return page.get_by_text("Latest check results", exact=True).locator("xpath=..")


def test_a_prompts_edit_shows_as_a_failed_check_on_the_assets_overview(page, ui):
    """Item 1. Every image made, then the prompts file edited: within about two minutes (input_files_sensor looks every
    30 s and launches refresh_inputs) diffused_image's overview, no partition opened, shows a warning badge whose
    popover names results_up_to_date; its link opens the check, which counts every image out of date and says why."""
    _every_image_made(ui)
    _open(page, ui, "/assets/diffused_image")
    badges = _check_badges(page)
    badges.get_by_role("img", name="check_circle").wait_for()  # the checks ran in the image run, and passed
    assert badges.get_by_role("img", name="warning_outline").count() == 0

    (ui["root"] / "prompts.txt").write_text(EDITED_PROMPTS)
    deadline = time.monotonic() + 180
    warning = badges.get_by_role("img", name="warning_outline")
    while not warning.count() and time.monotonic() < deadline:
        page.wait_for_timeout(3000)
        page.reload(wait_until="networkidle")
        badges.wait_for()
    assert warning.count(), "the overview showed no warning within 3 minutes of the prompts edit"

    warning.first.hover()
    popover = page.locator(".bp5-popover-content").filter(has_text="Failed checks")
    popover.get_by_text("results_up_to_date").wait_for()
    popover.get_by_text("results_up_to_date").click()
    page.wait_for_url(re.compile(r"view=checks.*checkDetail=results_up_to_date"))
    page.get_by_text("out_of_date", exact=True).first.wait_for()
    shown = page.inner_text("body")
    assert re.search(r"Evaluation result\s+Failed", shown), shown
    count = re.search(r"^out_of_date\s+(\d+)$", shown, re.MULTILINE)
    assert count and int(count.group(1)) == len(IMAGES), shown

    row = page.locator("tr", has=page.get_by_text("why", exact=True))
    row.get_by_text("[Show Markdown]").click()
    why = page.get_by_role("dialog").inner_text()
    assert re.search(rf"prompt changed\s+{len(IMAGES)}", why), why


def test_adding_a_partition_that_names_no_image_is_refused_in_the_ui(page, ui):
    """Item 4. Materialize... > Add a partition > holiday-photo.jpg > Save: the dialog shows the guard's one line
    (the key, the images folder and the fix) and the partition is not added."""
    _open(page, ui, "/assets/diffused_image?view=partitions")
    page.get_by_role("button", name="Materialize…").first.click()
    # Its draw is made in the same step: Dagster's own dialog says image_draw comes along.
    together = page.get_by_role("dialog").filter(has_text="Additional assets will be materialized")
    assert "image_draw" in together.inner_text()
    together.get_by_role("button", name="Confirm").click()
    page.get_by_text("Add a partition", exact=True).click()
    adding = page.get_by_role("dialog").filter(has_text="Add a partition for images")
    adding.locator("input").fill(BOGUS)
    adding.get_by_role("button", name="Save", exact=True).click()

    refusal = page.get_by_role("dialog").filter(has_text="Could not add partition")
    refusal.wait_for()
    lines = [line.strip() for line in refusal.inner_text().splitlines() if line.strip()]
    assert lines[0] == "Could not add partition" and lines[-2:] == ["Copy", "OK"], lines
    (message,) = lines[1:-2]  # one line
    folder = str(ui["images"])
    assert message.startswith("Not added:") and f"'{BOGUS}'" in message, message
    assert f"no image in the images folder {folder}" in message and f"Put the image file in {folder}" in message
    refusal.get_by_role("button", name="OK").click()
    refusal.wait_for(state="hidden")

    node = Deployment(ui["url"]).query(PARTITION_STATS_QUERY, {})["assetNodeOrError"]
    assert BOGUS not in node["partitionKeys"]


def test_the_ui_terminal_held_only_the_projects_lines(ui):
    """After the sensor's run, the prompts edit's refresh run, its check and the automation ticks above: none of the
    routine daemon lines issue 36 counted in the `random-diffusion ui` terminal, and no error."""
    console = ui["log"].read_text()
    assert [line for line in ROUTINE_DAEMON_LINES if line in console] == [], console[-5000:]
    assert "Traceback" not in console and " - ERROR - " not in console, console[-5000:]
    assert "images are out of date (prompt changed" in console  # the check's one warning line reaches it
