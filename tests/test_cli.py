"""`random-diffusion run`, the command behind `make run`, end to end in a subprocess."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from dagster._core.instance.ref import InstanceRef
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test

from random_diffusion_dagster.engine.results import output_file_name, read_record
from random_diffusion_dagster.runtime.cli import main
from random_diffusion_dagster.runtime.dead_runs import PROCESS_TAG, fail_runs_whose_process_is_gone
from random_diffusion_dagster.runtime.terminal_log import (
    quiet_interrupted_database_closes,
    redeliver_swallowed_interrupts,
)

from helpers import make_image, result_file, write_catalog

BIN = Path(sys.executable).parent


def _env(project: dict, home: Path) -> dict[str, str]:
    """The command's environment for the `project` fixture, with a new, empty instance folder at `home`."""
    home.mkdir()
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RANDOM_DIFFUSION_IMAGES_DIR": project["images_dir"],
        "RANDOM_DIFFUSION_OUTPUT_DIR": project["output_dir"],
        "RANDOM_DIFFUSION_PROMPTS_FILE": project["prompts_file"],
        "RANDOM_DIFFUSION_MODELS_FILE": project["models_file"],
        "OMP_NUM_THREADS": "1",
    }


def test_run_diffuses_every_image_and_writes_the_report(project, tmp_path):
    env = _env(project, tmp_path / "home")
    completed = subprocess.run(
        [str(BIN / "random-diffusion"), "run", "--seed", "3", "--prompt", "a red kite"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    outputs = Path(project["output_dir"])
    assert "over 3 images: succeeded" in completed.stdout
    first = f"{outputs}/blue.webp.png for {Path(project['images_dir']) / 'blue.webp'}"  # the first image's result
    assert f"Outputs: {outputs} ({first})" in completed.stdout
    assert " - dagster - " not in completed.stdout + completed.stderr  # the batch lines are in the run's log, not here
    assert len(list(outputs.glob("*.png"))) == 3
    summary = pd.read_csv(outputs / "report" / "summary.csv")
    assert summary["images"].sum() == 3 and (outputs / "report" / "contact_sheet.png").is_file()
    assert "diffusing: 100%" in completed.stderr  # the progress bar
    _assert_each_run_shows_its_target(tmp_path / "home")
    _assert_plan_prices_a_new_seed_and_nothing_for_the_current_one(env)

    again = subprocess.run(
        [str(BIN / "random-diffusion"), "run", "--seed", "3", "--prompt", "a red kite"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0 and "over 3 images: succeeded" in again.stdout, again.stderr[-3000:]
    assert "diffusing" not in again.stderr  # every result reused: no empty progress bar


def _assert_plan_prices_a_new_seed_and_nothing_for_the_current_one(env: dict) -> None:
    """`plan` reads the instance and the results and runs nothing: the seed of the last run redoes nothing, another
    redoes all three, priced at the inference time the records measured."""
    plan = [str(BIN / "random-diffusion"), "plan"]
    current = subprocess.run([*plan, "--seed", "3"], env=env, capture_output=True, text=True, timeout=120)
    assert current.returncode == 0 and "All 3 registered images are up to date" in current.stdout, current.stderr[
        -2000:
    ]
    other = subprocess.run([*plan, "--seed", "4"], env=env, capture_output=True, text=True, timeout=120)
    assert other.returncode == 0, other.stderr[-2000:]
    lines = other.stdout.splitlines()
    assert lines[0] == "3 of 3 images are out of date (run seed changed: 3)."
    assert re.fullmatch(
        r"Redoing them: (about \d+\.\d s|under 0\.1 s) of GPU time for 3 results( \(.* not measured yet.*\))?\.",
        lines[1],
    )
    assert "  red.png: run seed changed" in lines
    # Another seed and a second variant: the stale first results and the missing second ones, six in all.
    both = subprocess.run([*plan, "--seed", "4", "--variants", "2"], env=env, capture_output=True, text=True)
    assert re.search(r"GPU time for 6 results", both.stdout), both.stdout
    assert both.stdout.rstrip().endswith(
        "`random-diffusion run --seed 4 --variants 2` makes these (current results are reused)."
    )
    # Read by a pipe that closes early (`plan | head -1`): no traceback.
    piped = subprocess.Popen([*plan, "--seed", "4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    piped.stdout.close()
    assert piped.wait(timeout=120) == 0 and b"Traceback" not in piped.stderr.read()
    # An image the folder has and the instance does not yet: said, since a run makes it too; a file that is no image
    # is never registered, so it is not counted.
    late = make_image(Path(env["RANDOM_DIFFUSION_IMAGES_DIR"]) / "late.png", color=(9, 9, 9))
    notes = Path(env["RANDOM_DIFFUSION_IMAGES_DIR"]) / "notes.txt"
    notes.write_text("shot on a Tuesday\n")
    try:
        seen = subprocess.run([*plan, "--seed", "3"], env=env, capture_output=True, text=True, timeout=120)
    finally:
        late.unlink()
        notes.unlink()
    assert seen.stdout.startswith("Not registered yet: 1 image in the folder; a run makes them too"), seen.stdout
    # A catalog entry whose images would fail, as far as the files here tell: named once, before the images.
    models = Path(env["RANDOM_DIFFUSION_MODELS_FILE"])
    catalog = models.read_text()
    document = yaml.safe_load(catalog)
    document["models"].append({"name": "gone", "path": str(models.parent / "tiny-sd99")})
    models.write_text(yaml.safe_dump(document))
    try:
        named = subprocess.run([*plan, "--seed", "3"], env=env, capture_output=True, text=True, timeout=120)
    finally:
        models.write_text(catalog)
    lines = named.stdout.splitlines()
    assert (
        named.returncode == 0
        and lines[0] == "Models whose images would fail: 1 (a run fails those images, each naming this):"
    )
    assert lines[1].startswith("  Model 'gone' (path: ") and "the path does not exist" in lines[1], named.stdout
    # A prompts file no run could use is one line naming its line, not a reason given for every image.
    prompts = Path(env["RANDOM_DIFFUSION_PROMPTS_FILE"])
    kept = prompts.read_text()
    prompts.write_text(kept + "a {red\n")
    try:
        broken = subprocess.run([*plan, "--seed", "3"], env=env, capture_output=True, text=True, timeout=120)
    finally:
        prompts.write_text(kept)
    assert broken.returncode == 2 and broken.stdout == "", broken.stdout
    (message,) = [line for line in broken.stderr.splitlines() if line.startswith("error: ")]
    assert f"{prompts}, line " in message and "a {red" in message, broken.stderr
    # A prompt naming a caption no image has: each image is counted once as one that cannot be planned, and said.
    prompts.write_text("a photo of {caption}\n")
    try:
        captionless = subprocess.run([*plan, "--seed", "3"], env=env, capture_output=True, text=True, timeout=120)
    finally:
        prompts.write_text(kept)
    lines = captionless.stdout.splitlines()
    assert lines[0] == "3 of 3 images are out of date (cannot be planned: 3).", captionless.stdout
    assert lines[2] == "Of these, 3 images cannot be planned as is: a run fails them, naming the fix."


def _assert_each_run_shows_its_target(home: Path) -> None:
    """The UI's run list shows a run's job as its target, or for a run of Dagster's implicit asset job ("Jobless asset
    materializations") the assets it recorded: the diffusion runs are `diffuse_images` runs, as the sensor's are,
    and the scan and the report name their asset, as the UI's own Materialize runs do."""
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        runs = [record.dagster_run for record in instance.get_run_records(ascending=True)]
    targets = [(run.job_name, sorted(key.to_user_string() for key in run.asset_selection or ())) for run in runs]
    assert targets == [
        ("__ASSET_JOB", ["source_images"]),
        ("diffuse_images", []),
        ("__ASSET_JOB", ["diffusion_report"]),
    ], targets
    assert all(run.tags.get(PROCESS_TAG) for run in runs)


def test_run_without_images_says_where_to_put_them_and_names_the_setting_that_hid_some(project, tmp_path):
    empty = tmp_path / "empty"
    make_image(empty / "cat" / "001.png")  # in a subfolder, which RANDOM_DIFFUSION_RECURSIVE=0 leaves out
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "RANDOM_DIFFUSION_RECURSIVE": "0",
        "RANDOM_DIFFUSION_IMAGES_DIR": str(empty),
        "RANDOM_DIFFUSION_MODELS_FILE": project["models_file"],
        "RANDOM_DIFFUSION_PROMPTS_FILE": project["prompts_file"],
    }
    completed = subprocess.run(
        [str(BIN / "random-diffusion"), "run"], env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 1 and "No images found" in completed.stderr
    assert f"No images in {empty} itself, and its subfolders (cat/) are not scanned" in completed.stderr
    assert "RANDOM_DIFFUSION_RECURSIVE=0 (the dataset resource's `recursive`) leaves them out" in completed.stderr


@pytest.mark.parametrize(
    ("args", "setting", "message"),
    [
        (["run"], {"RANDOM_DIFFUSION_MAX_PARTITIONS_PER_RUN": "0"}, "MAX_PARTITIONS_PER_RUN=0 is below 1"),
        (["run"], {"RANDOM_DIFFUSION_OUTPUT_DIR": "{file}"}, "a file, not a folder: point RANDOM_DIFFUSION_OUTPUT_DIR"),
        (["run"], {"RANDOM_DIFFUSION_IMAGES_DIR": "{file}"}, "a file, not a folder: point RANDOM_DIFFUSION_IMAGES_DIR"),
        (["compare", "red.png", "--strength", "0.01", "--steps", "5"], {}, "runs no denoising step"),
        (["run"], {"RANDOM_DIFFUSION_OUTPUT_DIR": "{images}"}, "is the images folder"),
        (["run"], {"RANDOM_DIFFUSION_OUTPUT_DIR": "{images}/results"}, "is inside the images folder"),
        (["compare", "red.png"], {"RANDOM_DIFFUSION_OUTPUT_DIR": "{parent}"}, "holds the images folder"),
        (["run"], {"RANDOM_DIFFUSION_OUTPUT_DIR": "{failures_file}"}, ".failures is a file, but the project keeps"),
        (["run"], {"RANDOM_DIFFUSION_TORCH_THREADS": "100000"}, "RANDOM_DIFFUSION_TORCH_THREADS=100000 is above"),
        (["run"], {"RANDOM_DIFFUSION_MAX_PARTITIONS_PER_RUN": "1000000"}, "PER_RUN=1000000 is above 100000"),
        (["run"], {"RANDOM_DIFFUSION_SEED": str(2**64)}, f"RANDOM_DIFFUSION_SEED={2**64} is above"),
        (["run"], {"RANDOM_DIFFUSION_PROMPTS_FILE": "/dev/zero"}, "/dev/zero is a device, not a file: point"),
        (["run"], {"RANDOM_DIFFUSION_MODELS_FILE": "/dev/urandom"}, "/dev/urandom is a device, not a file"),
        (["run"], {"RANDOM_DIFFUSION_MODELS_FILE": "{images}"}, "a folder, not a file: point RANDOM_DIFFUSION_MODELS"),
        (["run"], {"RANDOM_DIFFUSION_OUTPUT_DIR": "foo://x/out"}, "'foo' is not a storage protocol fsspec knows"),
        (
            ["run"],
            {"RANDOM_DIFFUSION_STEP_STORAGE": "foo://x/values"},
            "RANDOM_DIFFUSION_STEP_STORAGE='foo://x/values'",
        ),
    ],
)
def test_a_setup_no_run_can_use_is_refused_in_one_line_before_anything_starts(
    project, tmp_path, args, setting, message
):
    home = tmp_path / "home"
    env = _env(project, home)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    (tmp_path / "with-failures-file").mkdir()
    (tmp_path / "with-failures-file" / ".failures").write_text("")
    folders = {
        "file": a_file,
        "images": project["images_dir"],
        "parent": tmp_path,
        "failures_file": tmp_path / "with-failures-file",
    }
    env |= {variable: value.format(**folders) for variable, value in setting.items()}
    sources = {path: path.read_bytes() for path in Path(project["images_dir"]).iterdir()}
    completed = subprocess.run(
        [str(BIN / "random-diffusion"), *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 2 and message in completed.stderr, completed.stderr[-3000:]
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr[-3000:]  # no traceback, no run's log
    assert list(home.iterdir()) == []  # no instance, so no run
    assert {path: path.read_bytes() for path in Path(project["images_dir"]).iterdir()} == sources


def test_a_file_the_project_did_not_write_is_never_overwritten_and_only_its_image_fails(project, tmp_path):
    """A user's own file at a result's name (no result record in it) stays as it was; the other images are made, and
    the example result the run prints is the first of theirs (it was the user's file)."""
    env = _env(project, tmp_path / "home")
    outputs = Path(project["output_dir"])
    theirs = outputs / output_file_name("blue.webp")  # the first image
    make_image(theirs, color=(1, 2, 3))
    before = theirs.read_bytes()
    completed = subprocess.run(
        [str(BIN / "random-diffusion"), "run"], env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 1, completed.stdout[-2000:] + completed.stderr[-3000:]
    assert f"a file not made by this project is at {theirs}: move it" in completed.stderr
    assert theirs.read_bytes() == before
    made = sorted(path.name for path in outputs.glob("*.png") if read_record(path) is not None)
    assert len(made) == 2 and theirs.name not in made  # the other two images have their results
    green = Path(project["images_dir"]) / "green photo.jpg"
    assert f"Outputs: {outputs} ({outputs}/{output_file_name(green.name)} for {green})" in completed.stdout


def test_build_demo_models_prints_one_line_and_no_library_output(tmp_path):
    completed = subprocess.run(
        [str(BIN / "random-diffusion"), "build-demo-models", "--models-dir", str(tmp_path / "models")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    # The five SD ones, tiny-sdxl, tiny-sd3, tiny-flux and the single-file SDXL checkpoint.
    assert completed.stdout.splitlines() == [f"Built 9 demo models in {tmp_path / 'models'}"]
    assert completed.stderr == ""  # no progress bars ("Writing model shards"), no torchvision or float32 notices
    assert (tmp_path / "models" / "tiny-sd15" / "model_index.json").is_file()


def test_a_failing_run_shows_each_failure_as_its_own_message_without_stack_traces(project, tmp_path):
    """Dagster's console logger printed 80-250 lines of frames per failure; the terminal gets the message."""
    catalog = yaml.safe_load(Path(project["models_file"]).read_text())
    catalog["models"][1]["name"] = catalog["models"][0]["name"]
    Path(project["models_file"]).write_text(yaml.safe_dump(catalog))
    (Path(project["images_dir"]) / "notes.png").write_text("not an image")
    env = _env(project, tmp_path / "home")
    (tmp_path / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # no Dagster banner
    completed = subprocess.run(
        [str(BIN / "random-diffusion"), "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 1
    errors = completed.stderr.splitlines()
    assert f"error: model_catalog failed: {project['models_file']}: model names must be unique" in completed.stderr
    assert any(line.startswith("warning: Skipped notes.png: ") for line in errors)
    assert "Traceback" not in completed.stderr and "Stack Trace" not in completed.stderr and len(errors) <= 4
    assert " over 3 images: FAILED" in completed.stdout and "contact_sheet.png" not in completed.stdout


def test_ctrl_c_stops_the_run_in_one_line_and_keeps_finished_images(project, tmp_path, models_dir):
    """Dagster turns SIGINT into a failed step and returns; the command stops instead of going on to the report."""
    write_catalog(Path(project["models_file"]), models_dir, names=("tiny-sd15",), num_inference_steps=400, strength=1.0)
    outputs = Path(project["output_dir"])
    process = subprocess.Popen(
        [str(BIN / "random-diffusion"), "run", "--batch-size", "1"],
        env=_env(project, tmp_path / "home"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not list(outputs.glob("*.png")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert stderr.rstrip().endswith(
        "random-diffusion run: interrupted (finished images are saved; running it again reuses them)"
    )
    assert "Traceback" not in stderr and "Run " not in stdout  # stopped: no outcome line, no report
    written = {path.name for path in outputs.glob("*.png")}
    assert 1 <= len(written) < 3
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:  # the images on disk are recorded
        recorded = instance.get_materialized_partitions(dg.AssetKey("diffused_image"))
    assert {result_file(project["images_dir"], "", key).name for key in recorded} == written


def test_only_a_cli_processs_own_runs_are_failed_once_it_is_gone(instance):
    """The UI's Re-execute copies the parent run's tags: re-executing a CLI run gives a run the daemon launches from
    the code location, carrying the CLI process's tag. Once that process is gone only the run it executed (which has
    no code location) is failed; the launched one is Dagster's run monitoring's to watch."""
    script = "from random_diffusion_dagster.runtime.dead_runs import process_tags; print(*process_tags().values())"
    ended = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    gone_process = {PROCESS_TAG: ended.stdout.strip()}
    cli_run = create_run_for_test(instance, "diffuse_images", status=dg.DagsterRunStatus.STARTED, tags=gone_process)
    location = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("random_diffusion_dagster"), "__repository__")
    relaunched = create_run_for_test(
        instance,
        "diffuse_images",
        status=dg.DagsterRunStatus.STARTED,
        tags={**gone_process, "dagster/parent_run_id": cli_run.run_id},
        remote_job_origin=RemoteJobOrigin(location, "diffuse_images"),
    )
    assert fail_runs_whose_process_is_gone(instance) == [cli_run.run_id]
    assert instance.get_run_by_id(cli_run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(relaunched.run_id).status == dg.DagsterRunStatus.STARTED


def test_compare_on_a_file_the_scan_skipped_says_why_it_was_skipped(project, tmp_path):
    (Path(project["images_dir"]) / "zero.jpg").write_bytes(b"")
    completed = subprocess.run(
        [str(BIN / "random-diffusion"), "compare", "zero.jpg"],
        env=_env(project, tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 2
    assert completed.stderr.splitlines()[-1].startswith("error: zero.jpg: ")  # the scan's own reason follows
    assert "(skipped, so not comparable)." in completed.stderr and "no image" not in completed.stderr


def test_an_interrupt_python_swallowed_in_a_garbage_collection_callback_is_sent_again():
    """Seen once in the suite: the SIGINT landed in SQLAlchemy's weakref callback, Python printed "Exception
    ignored in ..." and the run finished as if Ctrl-C had not been pressed."""
    received = []
    previous = signal.signal(signal.SIGINT, lambda signo, frame: received.append(signo))
    try:

        class Collected:
            def __del__(self):
                raise dg.DagsterExecutionInterruptedError()  # what Dagster's handler raises, here where it is lost

        hook, sys.unraisablehook = sys.unraisablehook, redeliver_swallowed_interrupts
        try:
            Collected()  # dropped at once: __del__ raises, Python hands the exception to the hook
            deadline = time.monotonic() + 5
            while not received and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            sys.unraisablehook = hook
    finally:
        signal.signal(signal.SIGINT, previous)
    assert received == [signal.SIGINT]


def test_an_interrupt_while_sqlalchemy_closes_a_connection_prints_no_traceback(monkeypatch):
    """Seen once in CI: Ctrl-C landed in SQLAlchemy's pool while it closed a connection; the pool logged it with its
    traceback (then raised it, and the command said it was interrupted). Its other errors still reach stderr."""
    import io
    import logging

    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    handler = quiet_interrupted_database_closes()
    pool = logging.getLogger("sqlalchemy.pool.impl.QueuePool")
    try:
        for error in (dg.DagsterExecutionInterruptedError(), KeyboardInterrupt(), ValueError("disk full")):
            try:
                raise error
            except BaseException:  # noqa: BLE001 - what the pool catches and logs
                pool.error("Exception closing connection %r", "<connection>", exc_info=True)
    finally:
        logging.getLogger("sqlalchemy").removeHandler(handler)
    assert stderr.getvalue().count("Traceback") == 1 and "ValueError: disk full" in stderr.getvalue()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--batch-size", "100000"], "100000 is not from 1 to 256"),
        (["compare", "x.png", "--steps", "5000"], "5000 is not from 1 to 1000"),
        (["submit", "--max-partitions-per-run", "0"], "0 is not from 1 to 100000"),
    ],
)
def test_counts_beyond_their_bounds_are_refused_before_anything_starts(capsys, args, message):
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_ctrl_c_while_the_command_imports_ends_in_one_line_without_a_traceback():
    """The console script's first second is spent importing Dagster: Ctrl-C there (here raised exactly as the first
    `import dagster` starts) ends like Ctrl-C in a run, not in an import traceback."""
    code = (
        "import sys\n"
        "class InterruptDagster:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'dagster':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, InterruptDagster())\n"
        "sys.argv = ['random-diffusion', 'run']\n"
        "from random_diffusion_dagster.runtime.entry_point import main\n"
        "sys.exit(main())\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 130, completed.stderr[-3000:]
    assert completed.stderr.strip() == "random-diffusion: interrupted"


def test_a_redelivered_interrupt_is_raised_in_the_run_not_inside_the_hook():
    """Dagster's handler raises at once: a signal sent from inside the hook raised there and was swallowed a second
    time (seen as "Exception ignored in sys.unraisablehook" and a run that went on). It must reach the code."""

    def dagster_like(signo, frame):
        raise dg.DagsterExecutionInterruptedError()

    class Collected:
        def __del__(self):
            raise dg.DagsterExecutionInterruptedError()

    previous = signal.signal(signal.SIGINT, dagster_like)
    hook, sys.unraisablehook = sys.unraisablehook, redeliver_swallowed_interrupts
    try:
        with pytest.raises(dg.DagsterExecutionInterruptedError):
            Collected()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        sys.unraisablehook = hook
        signal.signal(signal.SIGINT, previous)
