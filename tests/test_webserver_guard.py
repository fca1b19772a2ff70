"""The documented way to start the UI (`random-diffusion ui`) refuses what a foreign web page could send.

One real `random-diffusion ui` (guarded dagster-webserver + `dagster-daemon run`) on loopback serves most tests
here, and one bound to 0.0.0.0 and reached at this machine's LAN address the rest: the guard holds whatever the
bind. The mutation is a real `addDynamicPartition`, and whether it took effect is read from the instance itself.
The guard also answers the UI's own "Add a partition" mutation, for a key that names no image, with the one line the
dialog shows. Its terminal shows where the UI and the history are, and not a line per sensor tick.
"""

import base64
import functools
import ipaddress
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import dagster as dg
import dagster_webserver
import pytest
import requests
from dagster._core.instance.ref import InstanceRef
from PIL import Image

from random_diffusion_dagster.engine.images import partition_key_for
from random_diffusion_dagster.runtime.daemon import DaemonOutput
from random_diffusion_dagster.runtime.remote import Deployment
from random_diffusion_dagster.settings import sensor_interval_seconds

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from test_deployment import _free_port, _reachable  # noqa: E402

from local_services import (  # noqa: E402
    descendants,  # noqa: E402
    project_env,
    stop_process_groups,
    wait_for,  # noqa: E402
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EVIL = "http://evil.example"

pytestmark = pytest.mark.timeout(300)

REPOSITORIES_QUERY = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
ADD_PARTITION = """
mutation Add($key: String!, $repo: RepositorySelector!) {
  addDynamicPartition(partitionsDefName: "images", partitionKey: $key, repositorySelector: $repo) {
    __typename
  }
}"""
DAEMONS_QUERY = "query { instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }"


def _serve_ui(root: Path, bind: str, address: str, extra_env: dict[str, str] | None = None):
    """Start `random-diffusion ui -h bind` on a free port, wait until its code location loads at `address`, and yield
    what the tests need; stop its whole process group after."""
    (root / "images").mkdir()  # empty: the daemon's sensor has nothing to run
    (root / "prompts.txt").write_text("a lighthouse\n")
    home = root / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = _free_port()
    url = f"http://{address}:{port}"
    with open(root / "ui.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "random_diffusion_dagster.runtime.cli", "ui", "-h", bind, "-p", str(port)],
            cwd=PROJECT_ROOT,
            env={**os.environ, **project_env(root, home), **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: _reachable(url), 180, "the guarded webserver")
        repositories = wait_for(lambda: _repositories(url), 120, "the code location to load")
        (repo,) = repositories
        instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
        yield {
            "url": url,
            "port": port,
            "address": address,
            "instance": instance,
            "repo": {"repositoryName": repo["name"], "repositoryLocationName": repo["location"]["name"]},
            "log": root / "ui.log",
            "home": home,
            "images": root / "images",
            "pid": process.pid,
        }
        instance.dispose()
    finally:
        stop_process_groups([process])


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    yield from _serve_ui(tmp_path_factory.mktemp("guarded-ui"), "127.0.0.1", "127.0.0.1")


def _lan_address() -> str:
    """This machine's non-loopback IPv4 address: the one its route to a TEST-NET address leaves from, else the first
    global address `ip` lists."""
    address = ""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # UDP: picks the route, sends nothing
            address = sock.getsockname()[0]
        except OSError:
            pass
    if not address or ipaddress.ip_address(address).is_loopback:
        listing = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True)
        address = next((line.split()[3].split("/")[0] for line in listing.stdout.splitlines()), "")
    if not address:
        pytest.fail("this machine has no non-loopback IPv4 address; the 0.0.0.0-bind guard tests need one")
    return address


LISTED_HOST = "ui-box.example"


@pytest.fixture(scope="module")
def lan_ui(tmp_path_factory):
    """`random-diffusion ui -h 0.0.0.0`, reached at this machine's LAN address; one name listed as allowed."""
    extra_env = {"RANDOM_DIFFUSION_ALLOWED_HOSTS": f" {LISTED_HOST.upper()} ,other.example"}
    yield from _serve_ui(tmp_path_factory.mktemp("lan-ui"), "0.0.0.0", _lan_address(), extra_env)


@pytest.fixture(params=["loopback", "lan"])
def any_ui(request):
    """Each guard check below, against the UI bound to 127.0.0.1 and the one bound to 0.0.0.0 (at its LAN address)."""
    return request.getfixturevalue({"loopback": "ui", "lan": "lan_ui"}[request.param])


def _repositories(url):
    return Deployment(url).query(REPOSITORIES_QUERY, {})["repositoriesOrError"].get("nodes")


def _images(ui) -> list[str]:
    return ui["instance"].get_dynamic_partitions("images")


def _post_add(ui, key, **headers):
    body = {"query": ADD_PARTITION, "variables": {"key": key, "repo": ui["repo"]}}
    return requests.post(f"{ui['url']}/graphql", json=body, headers=headers, timeout=60)


def _put_image(ui, name: str) -> None:
    """An image in the UI's images folder, so a partition may be added for it. Added right after, it is never the
    sensor's to register: a new file waits a tick to settle, and by then its partition was added by someone else."""
    path = ui["images"] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), (30, 90, 160)).save(path)


def test_mutation_sent_as_get_is_refused_and_changes_nothing(any_ui):
    # What `<img src="http://127.0.0.1:3000/graphql?query=mutation{...}">` on any web page sends.
    ui = any_ui
    repo = ui["repo"]
    mutation = (
        '# a comment first\nmutation { addDynamicPartition(partitionsDefName: "images", partitionKey: "evil-get.png", '
        f'repositorySelector: {{repositoryLocationName: "{repo["repositoryLocationName"]}", '
        f'repositoryName: "{repo["repositoryName"]}"}}) {{ __typename }} }}'
    )
    response = requests.get(f"{ui['url']}/graphql", params={"query": mutation}, timeout=60)
    assert response.status_code == 405 and "send mutations as POST" in response.text
    # A query and a mutation in one document, the mutation picked by operationName: refused too.
    sneaky = "query Harmless { version }\n" + mutation.replace("mutation {", "mutation Evil {")
    response = requests.get(f"{ui['url']}/graphql", params={"query": sneaky, "operationName": "Evil"}, timeout=60)
    assert response.status_code == 405
    assert "evil-get.png" not in _images(ui)


def test_mutation_posted_from_a_foreign_origin_is_refused_and_changes_nothing(any_ui):
    ui = any_ui
    response = _post_add(ui, "evil-post.png", Origin=EVIL)
    assert response.status_code == 403 and "origin http://evil.example" in response.text
    # An HTML form can POST text/plain with the query in the URL, which Dagster also executes.
    response = requests.post(
        f"{ui['url']}/graphql",
        params={"query": ADD_PARTITION},
        data="x",
        headers={"Origin": EVIL, "Content-Type": "text/plain"},
        timeout=60,
    )
    assert response.status_code == 403
    assert "evil-post.png" not in _images(ui)
    # Dagster's other state-changing endpoints are plain POSTs a form can send too.
    report = requests.post(
        f"{ui['url']}/report_asset_materialization/diffused_image",
        data="x",
        headers={"Origin": EVIL, "Content-Type": "text/plain"},
        timeout=60,
    )
    assert report.status_code == 403


def test_same_origin_and_originless_posts_change_state(ui):
    _put_image(ui, "same-origin.png")
    _put_image(ui, "no-origin.png")
    same_origin = _post_add(ui, "same-origin.png", Origin=ui["url"])
    assert same_origin.status_code == 200, same_origin.text
    assert same_origin.json()["data"]["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess"
    no_origin = _post_add(ui, "no-origin.png")  # curl, scripts, `random-diffusion submit`
    assert no_origin.status_code == 200 and "errors" not in no_origin.json(), no_origin.text
    assert {"same-origin.png", "no-origin.png"} <= set(_images(ui))
    assert {"same-origin.png", "no-origin.png"} <= set(Deployment(ui["url"]).partition_keys())


def test_read_only_query_over_get_and_the_ui_page_still_work(ui):
    response = requests.get(f"{ui['url']}/graphql", params={"query": "{ version }"}, timeout=60)
    assert response.status_code == 200 and response.json()["data"]["version"]
    page = requests.get(f"{ui['url']}/assets", headers={"Accept": "text/html"}, timeout=60)
    assert page.status_code == 200 and "<html" in page.text.lower()
    localhost = requests.get(f"http://localhost:{ui['port']}/server_info", timeout=60)
    assert localhost.status_code == 200


def test_foreign_host_name_on_loopback_is_refused(ui):
    # DNS rebinding: evil.example resolves to 127.0.0.1, so the page's requests look same-origin.
    rebound = f"evil.example:{ui['port']}"
    response = requests.post(
        f"{ui['url']}/graphql",
        json={"query": "{ version }"},
        headers={"Host": rebound, "Origin": f"http://{rebound}"},
        timeout=60,
    )
    assert response.status_code == 403 and "DNS-rebinding" in response.text


def test_rebinding_to_the_lan_address_is_refused_and_changes_nothing(lan_ui):
    # DNS rebinding to a LAN address: evil.example now resolves to this machine, so the page's requests carry
    # Host evil.example and a matching Origin, and reach the UI bound to 0.0.0.0.
    for rebound in (f"evil.example:{lan_ui['port']}", "evil.example"):
        response = _post_add(lan_ui, "rebound.png", Host=rebound, Origin=f"http://evil.example:{lan_ui['port']}")
        assert response.status_code == 403, response.text
        assert "DNS-rebinding" in response.text and "RANDOM_DIFFUSION_ALLOWED_HOSTS" in response.text
        assert response.text.count("\n") == 1 and f"{rebound}'" in response.text  # one line, naming the Host
    # localhost is a name only this machine's own connections may use.
    response = _post_add(lan_ui, "rebound.png", Host=f"localhost:{lan_ui['port']}")
    assert response.status_code == 403, response.text
    assert "rebound.png" not in _images(lan_ui)


def test_the_lan_address_as_host_is_allowed_with_or_without_its_origin(lan_ui):
    assert lan_ui["address"] != "127.0.0.1"
    _put_image(lan_ui, "lan-no-origin.png")
    _put_image(lan_ui, "lan-same-origin.png")
    no_origin = _post_add(lan_ui, "lan-no-origin.png")  # Host is the address:port the URL names
    assert no_origin.status_code == 200 and "errors" not in no_origin.json(), no_origin.text
    same_origin = _post_add(lan_ui, "lan-same-origin.png", Origin=lan_ui["url"])
    assert same_origin.status_code == 200 and "errors" not in same_origin.json(), same_origin.text
    assert {"lan-no-origin.png", "lan-same-origin.png"} <= set(_images(lan_ui))


def test_listed_host_names_and_the_machines_own_name_are_allowed_on_every_connection(lan_ui):
    listed = f"{LISTED_HOST}:{lan_ui['port']}"
    for address in (lan_ui["address"], "127.0.0.1"):
        url = f"http://{address}:{lan_ui['port']}"
        key = f"listed-{address}.png"
        _put_image(lan_ui, key)
        body = {"query": ADD_PARTITION, "variables": {"key": key, "repo": lan_ui["repo"]}}
        response = requests.post(
            f"{url}/graphql", json=body, headers={"Host": listed, "Origin": f"http://{listed}"}, timeout=60
        )
        assert response.status_code == 200 and "errors" not in response.json(), (address, response.text)
        assert key in _images(lan_ui)
    own = f"{socket.gethostname()}:{lan_ui['port']}"
    _put_image(lan_ui, "own-name.png")
    response = _post_add(lan_ui, "own-name.png", Host=own, Origin=f"http://{own}")
    assert response.status_code == 200 and "errors" not in response.json(), response.text
    assert "own-name.png" in _images(lan_ui)


@functools.cache
def _ui_add_partition_mutation() -> str:
    """The mutation the UI's "Add a partition" dialog sends, as this dagster-webserver's bundle holds it."""
    start = "mutation AddDynamicPartitionMutation("
    chunks = Path(dagster_webserver.__file__).parent / "webapp" / "build" / "_next" / "static" / "chunks"
    for chunk in sorted(chunks.glob("*.js")):
        text = chunk.read_text(errors="replace")
        at = text.find(start)
        if at >= 0:  # a JS string literal in a template call: (0,r._)(["\n  mutation AddDynamicPartitionMutation(...
            return json.loads('"' + text[text.rfind('["', 0, at) + 2 : text.find('"]', at)] + '"')
    pytest.fail(f"no chunk under {chunks} holds the UI's {start}...: has the webserver's UI changed?")


def _ui_add(ui, key: str) -> dict:
    """What the UI's dialog gets back for adding `key` to `images`: its answer's addDynamicPartition."""
    # Apollo asks for the __typename the dialog switches on: it adds the field to each selection set it sends.
    field = "      ... on AddDynamicPartitionSuccess {"
    query = _ui_add_partition_mutation().replace(field, "      __typename\n" + field, 1)
    assert "__typename" in query
    variables = {"partitionsDefName": "images", "partitionKey": key, "repositorySelector": ui["repo"]}
    body = {"operationName": "AddDynamicPartitionMutation", "query": query, "variables": variables}
    response = requests.post(f"{ui['url']}/graphql", json=body, headers={"Origin": ui["url"]}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["data"]["addDynamicPartition"]


def test_adding_a_partition_that_names_no_image_is_refused_in_one_line_the_dialog_shows(ui):
    # The dialog shows an UnauthorizedError's message as it is (a PythonError comes with its stack trace).
    assert "... on UnauthorizedError {\n        message\n      }" in _ui_add_partition_mutation()
    keys = ["holiday-photo.jpg", "holiday photo.jpg", "trips/holiday-photo.jpg"]  # one stat; a scan; in a folder
    for key in keys:
        answer = _ui_add(ui, key)
        assert answer["__typename"] == "UnauthorizedError", answer
        message = answer["message"]
        assert "\n" not in message and f"partition {key!r} names no image" in message, message
        assert f"Put the image file in {ui['images']}:" in message, message
        assert f"within about {2 * sensor_interval_seconds()} s." in message, message  # two ticks: found, settled
    # A file's name is not its key where the name is not a safe key: the answer names the key to use.
    _put_image(ui, "harbour at dusk.png")
    message = _ui_add(ui, "harbour at dusk.png")["message"]
    assert f"its partition is {partition_key_for('harbour at dusk.png')!r}" in message, message
    _put_image(ui, "dock.png")  # a path to a file, not its key: the answer names the key
    assert "its partition is 'dock.png'" in _ui_add(ui, "./dock.png")["message"]
    assert not set(keys + ["harbour at dusk.png", "./dock.png"]) & set(_images(ui))
    # A file that is there but no image (garbage named .jpg) is refused as the sensor would skip it.
    (Path(ui["images"]) / "fake.jpg").write_bytes(b"garbage")
    message = _ui_add(ui, "fake.jpg")["message"]
    assert message.startswith("Not added: partition 'fake.jpg': ") and "not an image Pillow can read" in message
    # A name no file system takes (a part over 255 bytes) is refused the same way, quoting only its start.
    answer = _ui_add(ui, "x" * 5000 + ".jpg")
    assert answer["__typename"] == "UnauthorizedError" and "... (5004 characters)" in answer["message"], answer
    assert len(answer["message"]) < 600


def test_adding_a_partition_for_an_image_in_the_folder_adds_it(ui):
    names = ["beach.png", "pets/kitten.png", "boat at dawn.png"]
    for name in names:
        _put_image(ui, name)
    keys = ["beach.png", "pets/kitten.png", partition_key_for("boat at dawn.png")]
    for key in keys:
        answer = _ui_add(ui, key)
        assert answer == {
            "__typename": "AddDynamicPartitionSuccess",
            "partitionsDefName": "images",
            "partitionKey": key,
        }
    assert set(keys) <= set(_images(ui))


def _websocket_handshake_status(ui, origin: str) -> int:
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /graphql HTTP/1.1\r\nHost: 127.0.0.1:{ui['port']}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-ws\r\n"
        f"Origin: {origin}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", ui["port"]), timeout=30) as sock:
        sock.sendall(request.encode())
        return int(sock.recv(1024).split(b" ", 2)[1])


def test_websocket_from_a_foreign_origin_is_refused(ui):
    assert _websocket_handshake_status(ui, EVIL) == 403
    assert _websocket_handshake_status(ui, ui["url"]) == 101  # the UI's own live updates


def test_ui_command_also_runs_the_daemon(ui):
    def sensor_daemon_healthy():
        statuses = Deployment(ui["url"]).query(DAEMONS_QUERY, {})["instance"]["daemonHealth"]["allDaemonStatuses"]
        return any(status["daemonType"] == "SENSOR" and status["healthy"] for status in statuses)

    assert wait_for(sensor_daemon_healthy, 120, "the sensor daemon's heartbeat", interval=2)


def test_submit_launches_a_run_through_the_guard(ui):
    _put_image(ui, "submitted.png")
    assert _post_add(ui, "submitted.png").status_code == 200
    deployment = Deployment(ui["url"])
    (run_id,) = deployment.submit(["a lighthouse"], 3, ["submitted.png"])
    assert deployment.run_status(run_id) in {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "SUCCESS", "FAILURE"}
    tags = ui["instance"].get_run_by_id(run_id).tags
    assert tags["dagster/asset_partition_range_start"] == tags["dagster/asset_partition_range_end"] == "submitted.png"


SENSOR_TICKS_QUERY = """
query($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) { ... on Sensor { sensorState { ticks(limit: 10) { status } } } }
}"""


def _descendant_commands(pid: int) -> list[str]:
    """The command lines of the processes `pid` started, and theirs (each child of `random-diffusion ui` leads a
    session of its own)."""
    commands = []
    for child in descendants(pid):
        try:
            commands.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue  # the process ended while we looked
    return commands


def test_ui_terminal_says_where_ui_and_history_are_and_not_each_tick(ui):
    selector = {**ui["repo"], "sensorName": "new_images_sensor"}

    def ticks():
        state = Deployment(ui["url"]).query(SENSOR_TICKS_QUERY, {"selector": selector})["sensorOrError"]
        return len(state["sensorState"]["ticks"]) >= 2

    wait_for(ticks, 150, "two ticks of new_images_sensor", interval=3)
    output = ui["log"].read_text()
    assert f"random-diffusion ui: the UI is at {ui['url']}; history is kept in {ui['home']}\n" in output
    assert f"Serving dagster-webserver on {ui['url']}" in output
    assert "Checking for new runs for sensor" not in output and "skipped: Sensor function returned" not in output
    assert "auto-materialization tick" not in output
    # The daemon is Dagster's daemon command with the shorter backfill loop, on the instance DAGSTER_HOME names.
    commands = _descendant_commands(ui["pid"])
    assert any("-m random_diffusion_dagster.runtime.daemon -w workspace.yaml" in command for command in commands), (
        commands
    )
    assert not any("-m dagster._daemon" in command for command in commands), commands


def _line(logger: str, level: str, message: str) -> str:
    """A line as `dagster-daemon run` prints it (colored format)."""
    return f"\x1b[32m2026-11-27 08:57:51 +0000\x1b[0m - {logger} - \x1b[34m{level}\x1b[0m - {message}\n"


def test_daemon_output_drops_routine_lines_and_keeps_events_and_problems():
    output = DaemonOutput()
    routine = [
        ("dagster.daemon.SensorDaemon", "INFO", "Checking for new runs for sensor: new_images_sensor"),
        ("dagster.daemon.SensorDaemon", "INFO", "Sensor new_images_sensor skipped: Sensor function returned an empty"),
        ("dagster.daemon.AssetDaemon", "INFO", "Checking 1 assets/checks and 0 observable source assets for x"),
        ("dagster.daemon.AssetDaemon", "INFO", "Tick produced 0 runs and 1 asset evaluation for evaluation ID 7"),
        ("dagster.daemon.AssetDaemon", "INFO", "Submitting 0 runs for evaluation 7 for report_automation_sensor"),
        ("dagster.daemon.AssetDaemon", "INFO", "Finished auto-materialization tick for report_automation_sensor"),
        ("dagster.daemon.QueuedRunCoordinatorDaemon", "INFO", "Priority sorting and checking tag concurrency limits"),
        ("dagster.daemon.MonitoringDaemon", "INFO", "Collected 1 runs for monitoring"),
        ("dagster.daemon.EventLogConsumerDaemon", "WARNING", "No cursor for event type X, ignoring older events"),
        ("dagster.code_server", "WARNING", "No heartbeat received in 20 seconds, shutting down"),
        ("dagster", "DEBUG", "diffuse_images - 9f1c - 4242 - diffused_image - STEP_START - Started execution"),
        ("dagster", "DEBUG", "diffuse_images - 9f1c - diffused_image - ASSET_MATERIALIZATION - Materialized value"),
        # Each second of a backfill, each run's monitoring pass, each automation evaluation, each run launch:
        ("dagster.daemon.BackfillDaemon", "INFO", "No relevant assets materialized since last tick."),
        ("dagster.daemon.MonitoringDaemon", "INFO", "Checking run 82698c91-0f4f-480a-9b11-8524b47b166a"),
        ("dagster.daemon.QueuedRunCoordinatorDaemon", "INFO", "Launched 1 runs."),
        ("dagster.daemon.AssetDaemon", "INFO", "Tick produced 1 run and 1 asset evaluation for evaluation ID 8"),
        ("dagster.daemon.AssetDaemon", "INFO", "Submitting 1 run for evaluation 8 for report_automation_sensor"),
        ("dagster.daemon.AssetDaemon", "INFO", "diffusion_report evaluation result: 1 requested ((no partition))"),
        ("dagster.daemon", "ERROR", "Thread for SENSOR did not shut down gracefully."),
    ]
    assert [fields[2] for fields in routine if output.shown(_line(*fields))] == []
    kept = [
        ("dagster.daemon.SensorDaemon", "INFO", "Completed launch of run 1234 for new_images_sensor"),
        ("dagster.daemon.SensorDaemon", "ERROR", "Sensor new_images_sensor skipped: the folder is gone"),
        ("dagster.daemon.SensorDaemon", "WARNING", "Checking for new runs for sensor: took 95 seconds"),
        ("dagster.code_server", "ERROR", "Error while loading code location"),
        ("dagster", "INFO", "diffuse_images - 9f1c - 4242 - diffused_image - tiny-sd15: 4 images in 1.2 s"),
        ("dagster", "ERROR", "diffuse_images - 9f1c - 4242 - diffused_image - STEP_FAILURE - Execution failed"),
    ]
    assert all(output.shown(_line(*fields)) == _line(*fields) for fields in kept)
    assert output.shown("Traceback (most recent call last):\n")
    blocked = _line(
        "dagster.daemon.QueuedRunCoordinatorDaemon", "INFO", "Run abc is blocked by global concurrency limits: gpu"
    )
    assert [output.shown(blocked) for _ in range(3)] == [blocked, None, None]  # once per run, not every second
    assert output.shown(blocked.replace("Run abc", "Run def"))


def test_daemon_output_drops_the_backfill_summaries_with_their_lines_and_keeps_what_follows():
    output = DaemonOutput()
    summary = [
        _line("dagster.daemon.BackfillDaemon", "INFO", "Backfill iteration summary:"),
        "**Assets materialized since last iteration:**\n",
        "None\n",
        "**Assets requested by this iteration:**\n",
        "- diffused_image: {coffee.jpg, astronaut.jpg}\n",
        "\n",
        _line("dagster.daemon.BackfillDaemon", "INFO", "Assets materialized since last tick:"),
        "- diffused_image: {coffee.jpg, astronaut.jpg}\n",
        _line("dagster.daemon.BackfillDaemon", "INFO", "Candidate subset is empty."),
    ]
    assert [line for line in summary if output.shown(line)] == []
    subsets = [
        _line("dagster.daemon.BackfillDaemon", "INFO", "Root assets that have not yet been requested:"),
        "- diffused_image: {[a.png...t.png]}\n",
        _line("dagster.daemon.BackfillDaemon", "INFO", "Considering the following candidate subset:"),
        "- diffused_image: {[a.png...t.png]}\n",
        "- diffusion_report\n",
        _line("dagster.daemon.BackfillDaemon", "INFO", "Asset partitions to request:"),
        "- diffused_image: {[a.png...t.png]}\n",
    ]
    assert [line for line in subsets if output.shown(line)] == []
    submitted = _line("dagster.daemon.BackfillDaemon", "INFO", "Submitted run f3a5 for assets/checks diffused_image")
    failed = _line(
        "dagster", "ERROR", "diffuse_images - 9f1c - 4242 - diffused_image - STEP_FAILURE - Execution failed"
    )
    kept = [submitted, failed, "Traceback (most recent call last):\n"]
    assert [output.shown(line) for line in kept] == kept


def test_daemon_output_names_sensors_without_the_repository_and_colours_only_a_terminal():
    output = DaemonOutput()
    line = _line("dagster", "INFO", "__repository__ - new_images_sensor - 3 new, 0 replaced, 0 removed images")
    assert output.shown(line) == line.replace(" - __repository__", "")
    plain = output.shown(line, colour=False)
    assert "\x1b" not in plain and plain.endswith(
        "- dagster - INFO - new_images_sensor - 3 new, 0 replaced, 0 removed images\n"
    )


def test_daemon_output_drops_the_stack_trace_of_a_failure_raised_on_purpose_and_keeps_other_tracebacks():
    """A step's dg.Failure names the images and why; its stack trace (some 30 lines of Dagster's frames) is dropped
    up to the next log line. Any other error keeps its trace: it is the only clue."""
    output = DaemonOutput()
    failure = [
        _line("dagster", "ERROR", "diffuse_images - 9f1c - 4242 - diffused_image - STEP_FAILURE - Execution failed"),
        "\n",
        "dagster._core.definitions.events.Failure: 1 of 1 images failed:\n",
        "- broken.png: /images/broken.png cannot be decoded (truncated or not an image): image file is truncated\n",
        "\n",
        "Stack Trace:\n",
        '  File "/venv/dagster/_core/execution/plan/execute_plan.py", line 243, in dagster_event_sequence_for_step\n',
        "    yield from check.generator(step_events)\n",
        "    raise dg.Failure(\n",
        "\n",
    ]
    after = _line("dagster", "ERROR", "diffuse_images - 9f1c - 4242 - RUN_FAILURE - Execution of run failed.")
    shown = [line for line in [*failure, after] if output.shown(line)]
    assert shown == [*failure[:5], after]
    unexpected = ["ZeroDivisionError: division by zero\n", "\n", "Stack Trace:\n", '  File "/x.py", line 1, in f\n']
    assert [line for line in unexpected if output.shown(line)] == unexpected
