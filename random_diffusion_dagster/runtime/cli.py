"""`random-diffusion`: diffuse a folder of images with prompts and models drawn at random, from a terminal.

`run` does the whole job on this machine; `plan` says what a run would redo now and what it costs; `compare`
shows what every catalog model makes of chosen images; `submit` sends it to a running deployment; `ui` starts
the Dagster UI with its daemon, `daemon` the daemon alone, `worker` a Celery GPU worker; `build-demo-models`
writes the tiny offline models the tests use.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import sys
from importlib.metadata import version
from pathlib import Path

import dagster as dg

from ..defs.prompt_sets import submission_tags
from ..defs.resources import MAX_BATCH_SIZE
from ..defs.run_ranges import partition_range_tags, partition_ranges
from ..engine.catalog import SETTINGS
from ..settings import (
    DEFAULT_MAX_PARTITIONS_PER_RUN,
    MAX_PARTITIONS_PER_RUN,
    MAX_VARIANTS,
    PROJECT_ROOT,
    SettingError,
    webserver_url,
)
from .dead_runs import fail_runs_whose_process_is_gone, process_tags
from .instance import diffusing_alone, project_instance
from .terminal_log import (
    TERMINAL_LOGGING,
    is_interruption,
    quiet_interrupted_database_closes,
    redeliver_swallowed_interrupts,
    with_terminal_logger,
)


def add_build_demo_models_parser(commands) -> None:
    build = commands.add_parser(
        "build-demo-models", help="build random-weight stand-ins of the demo models (smallest, fastest; for tests)"
    )
    build.add_argument(
        "--models-dir",
        default=str(PROJECT_ROOT / "data" / "models-random"),
        help="where to write them (default: %(default)s)",
    )
    build.add_argument("--force", action="store_true", help="rebuild even if present")
    build.set_defaults(handler=build_demo_models_command)


def build_demo_models_command(args: argparse.Namespace) -> int:
    from ..demo.models import build_demo_models

    built = build_demo_models(args.models_dir, force=args.force)
    print(
        f"Built {len(built)} demo models in {args.models_dir}" if built else f"Demo models already in {args.models_dir}"
    )
    return 0


def _folder_problem(defs: dg.Definitions, dataset: bool = False) -> str | None:
    """What stops the images or output folder (or, for a run that exports one, the dataset folder) from being used,
    found before any run starts: one line on the terminal instead of a failed run's traceback after the images are
    made (the messages are the scan's and the folder checks' own)."""
    try:
        defs.resources["dataset"].check_folders(dataset)
    except OSError as error:
        return str(error)
    return None


def add_run_parser(commands) -> None:
    run = commands.add_parser("run", help="diffuse every image in the images folder, then write the report")
    run.add_argument("--seed", type=int, help="run seed (default: RANDOM_DIFFUSION_SEED or 0); a new seed re-rolls")
    prompts = run.add_mutually_exclusive_group()
    prompts.add_argument(
        "--prompt",
        action="append",
        help="submit these prompts (repeatable): they stay current until the prompts file changes",
    )
    prompts.add_argument(
        "--use-prompts-file",
        action="store_true",
        help="go back to the prompts file now, even if a submitted prompt list is current",
    )
    run.add_argument(
        "--batch-size", type=_batch_size, help="images per pipeline call (default: 16 on CUDA, 4 elsewhere)"
    )
    run.add_argument(
        "--max-partitions-per-run",
        type=_images_per_run,
        help=f"images per run (default: RANDOM_DIFFUSION_MAX_PARTITIONS_PER_RUN or {DEFAULT_MAX_PARTITIONS_PER_RUN})",
    )
    run.add_argument(
        "--variants",
        type=_variants,
        help="results per image, each its own draw (default: RANDOM_DIFFUSION_VARIANTS, else the catalog's "
        "`defaults: {variants: K}`, else 1); raising it keeps the existing ones",
    )
    run.add_argument(
        "--reroll",
        action="append",
        metavar="KEY[~vN]",
        help="draw this image's results anew (repeatable): its partition key or its path under the images folder, "
        "with ~vN for one variant; kept after",
    )
    run.add_argument(
        "--dataset",
        action="store_true",
        help="then write the results as a Hugging Face ImageFolder dataset (RANDOM_DIFFUSION_DATASET_DIR)",
    )
    run.add_argument(
        "--with-sources", action="store_true", help="with --dataset: put each source image beside its results"
    )
    run.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    if args.with_sources and not args.dataset:
        print("error: --with-sources puts sources into the dataset: add --dataset.", file=sys.stderr)
        return 2
    from ..definitions import defs

    if problem := _folder_problem(defs, dataset=args.dataset):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    resources_config = {"engine": {"config": _engine_config(args)}}
    chosen = {"seed": args.seed, "variants": args.variants}
    if any(value is not None for value in chosen.values()):
        resources_config["dataset"] = {"config": {k: v for k, v in chosen.items() if v is not None}}
    prompt_config = {"prompt_list": args.prompt} if args.prompt else {"use_prompts_file": args.use_prompts_file}
    ops_config = {"prompt_list": {"config": prompt_config}, "diffused_image": {"config": {"reroll": args.reroll or []}}}
    dataset_config = {k: v for k, v in resources_config.items() if k == "dataset"}
    with (
        project_instance() as instance,
        diffusing_alone("Another `random-diffusion run` is diffusing; waiting for it..."),
    ):
        fail_runs_whose_process_is_gone(instance)
        if not _materialize(defs, "source_images", instance, dataset_config).success:
            return 1
        keys = instance.get_dynamic_partitions("images")
        if not keys:
            print("No images found: put some in the images folder (RANDOM_DIFFUSION_IMAGES_DIR).", file=sys.stderr)
            return 1
        job = with_terminal_logger(defs.resolve_job_def("diffuse_images"))
        failed_runs, unit = 0, defs.resources["dataset"].granularity.unit
        for partition_range in partition_ranges(keys, keys, args.max_partitions_per_run):
            result = _execute(
                job,
                instance,
                {"resources": resources_config, "ops": ops_config, **TERMINAL_LOGGING},
                partition_range.tags | (submission_tags() if args.prompt else {}),
            )
            failed_runs += not result.success
            print(f"Run {result.run_id} over {_count(len(partition_range.keys), unit)}: {_outcome(result)}")
        _materialize(defs, "diffusion_report", instance, dataset_config)
        exported = False
        if args.dataset:
            ops = {"augmented_dataset": {"config": {"include_sources": args.with_sources}}}
            exported = _materialize(defs, "augmented_dataset", instance, dataset_config, ops).success
            failed_runs += not exported
    output_dir = Path(defs.resources["dataset"].output_dir)
    example = _example_result(defs.resources["dataset"])
    print(f"Outputs: {output_dir}" + (f" ({example})" if example else ""))
    report = [path for path in ("summary.csv", "contact_sheet.png") if (output_dir / "report" / path).is_file()]
    if report:
        print(f"Report:  {' and '.join(str(output_dir / 'report' / path) for path in report)}")
    if exported:
        print(f"Dataset: {defs.resources['dataset'].dataset_dir} (datasets.load_dataset('imagefolder', data_dir=...))")
    return _said_where_the_traces_are() if failed_runs else 0


def add_plan_parser(commands) -> None:
    plan = commands.add_parser(
        "plan",
        help="say which images a run would redo now and why, and the GPU time that takes; runs nothing",
        description="What the prompts file, the catalog and the seed as they are now put out of date: the count, "
        "why, and the GPU time redoing them takes at the rates measured on the results made so far (what "
        "`results_up_to_date` and the edited file show in the UI).",
    )
    plan.add_argument("--seed", type=int, help="price this run seed instead (default: RANDOM_DIFFUSION_SEED or 0)")
    plan.add_argument("--variants", type=_variants, help="price this many results per image instead")
    plan.add_argument("--shown", type=_shown, default=20, metavar="N", help="list the first N images (default 20)")
    plan.set_defaults(handler=plan_command)


def plan_command(args: argparse.Namespace) -> int:
    from ..defs.out_of_date import current_planner, out_of_date, summary
    from ..defs.resources import DatasetResource
    from ..engine.freshness import UNPLANNABLE
    from ..engine.images import is_image_file

    chosen = {"seed": args.seed, "variants": args.variants}
    dataset = DatasetResource(**{key: value for key, value in chosen.items() if value is not None})
    with project_instance() as instance:
        try:
            registered, partition_of = set(instance.get_dynamic_partitions("images")), dataset.granularity.partition_of
            unregistered = sum(  # a file that is no image is never registered: not counted
                partition_of(f.partition_key) not in registered and is_image_file(f.path)
                for f in dataset.source_files()
            )
            planner = current_planner(instance, dataset)
            found = out_of_date(instance, dataset, planner)
        except (ValueError, OSError) as error:  # the prompts file, catalog or folders: each message names the fix
            print(f"error: {error}", file=sys.stderr)
            return 2
    _print_model_problems(planner.catalog)
    if unregistered:  # a run registers them first (the UI's sensor too): their results are all still to make
        print(f"Not registered yet: {_count(unregistered, 'image')} in the folder; a run makes them too (not priced).")
    _print_gate_failures(found.gate_failures, args.shown)
    if not found.reasons:
        if found.images:
            print(f"All {_count(found.images, 'registered image')} are up to date: a run would remake none.")
        return 0
    print(f"{summary(found.reasons, found.images)}.")
    print(f"Redoing them: {found.estimate().words()}.")
    if unplannable := sum(why.startswith(UNPLANNABLE) for why in found.reasons.values()):
        them = "it" if unplannable == 1 else "them"
        print(f"Of these, {_count(unplannable, 'image')} cannot be planned as is: a run fails {them}, naming the fix.")
    _print_keys(found.reasons, args.shown)
    options = "".join(f" --{name} {value}" for name, value in chosen.items() if value is not None)
    if options:
        print(f"`random-diffusion run{options}` makes these (current results are reused).")
    else:
        print(
            "`random-diffusion run` redoes exactly these (current results are reused); in the UI: Automation > "
            "catch_up_schedule > Preview tick result > Launch all & commit tick result."
        )
    return 0


def _print_model_problems(catalog) -> None:
    """The catalog entries whose images would fail, as far as the files here tell: a run fails those images."""
    from ..engine.pipelines import problem_before_loading

    problems = {spec.name: problem for spec in catalog if (problem := problem_before_loading(spec))}
    if problems:
        print(f"Models whose images would fail: {len(problems)} (a run fails those images, each naming this):")
        for problem in problems.values():
            print(f"  {problem}")


def _print_gate_failures(failures: dict[str, str], shown: int) -> None:
    """The images whose results were kept although they fail their quality gates: a plain run keeps them."""
    if not failures:
        return
    print(
        f"Kept although they fail their quality gates: {_count(len(failures), 'image')} "
        "(`random-diffusion run --reroll KEY` draws one anew; a plain run keeps them)."
    )
    _print_keys(failures, shown)


def _print_keys(reasons: dict[str, str], shown: int) -> None:
    """The first `shown` images (--shown) with their reason, and how many more."""
    for key, why in list(reasons.items())[: max(shown, 0)]:
        print(f"  {key}: {why}")
    if len(reasons) > shown > 0:
        print(f"  ...and {len(reasons) - shown} more")


def _shown(text: str) -> int:
    """--shown: 0 or more."""
    number = int(text) if text.strip().lstrip("-").isdigit() else -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not 0 or a whole number above it")
    return number


EXAMPLE_SEARCH = 100  # an example to show, not a census: a folder of a million failed images is not walked


def _example_result(dataset) -> str | None:
    """`data/outputs/astronaut.png for data/images/astronaut.jpg`: the first image's result, as configured; past
    images that have none (a file that is no image, one that failed or a user's own file at its result's name),
    among the first EXAMPLE_SEARCH."""
    from ..engine.results import output_file_name, read_record, result_path

    for file in dataset.source_files()[:EXAMPLE_SEARCH]:
        if read_record(result_path(dataset.output_dir, file.relative_path)) is not None:
            result = f"{str(dataset.output_dir).rstrip('/')}/{output_file_name(file.relative_path)}"
            return f"{result} for {Path(dataset.images_dir) / file.relative_path}"
    return None


def add_compare_parser(commands) -> None:
    compare = commands.add_parser(
        "compare", help="run every catalog model on chosen images with their own prompts and seeds; draw grids"
    )
    compare.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="images by key (cat/001.jpg), by path under the images folder (at the top: its file name) or to the file",
    )
    compare.add_argument(
        "--strength",
        type=float,
        action="append",
        help="a denoising strength to compare, above 0 and at most 1 (repeatable: one grid row "
        "each; default: each model's own)",
    )
    compare.add_argument(
        "--steps",
        type=_steps,
        action="append",
        help="an inference step count to compare (repeatable: one grid row each, times the "
        "strengths; default: each model's own)",
    )
    compare.add_argument(
        "--seed",
        type=int,
        help="run seed whose draws (prompt, diffusion seed) are compared (default: RANDOM_DIFFUSION_SEED or 0)",
    )
    compare.add_argument(
        "--batch-size", type=_batch_size, help="images per pipeline call (default: 16 on CUDA, 4 elsewhere)"
    )
    compare.add_argument(
        "--max-partitions-per-run",
        type=_images_per_run,
        help="images per run, each with all models (default: RANDOM_DIFFUSION_MAX_PARTITIONS_PER_RUN or "
        f"{DEFAULT_MAX_PARTITIONS_PER_RUN})",
    )
    compare.set_defaults(handler=compare_command)


def compare_command(args: argparse.Namespace) -> int:
    """Every catalog model on the chosen images (their own prompts and seeds), then their grids."""
    from ..definitions import defs
    from ..engine.catalog import CatalogError
    from ..engine.comparison import ComparisonError, comparison_variants, grid_path

    try:  # a bad value, or one no catalog model can denoise with, fails here, before any run starts or model loads
        variants = comparison_variants(args.strength or [], args.steps or [])
        for spec in defs.resources["dataset"].catalog():
            for variant in variants:
                variant.apply(spec)
    except (ComparisonError, CatalogError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if problem := _folder_problem(defs):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    dataset_config = {"dataset": {"config": {"seed": args.seed}}} if args.seed is not None else {}
    resources_config = {"engine": {"config": _engine_config(args)}, **dataset_config}
    dataset = defs.resources["dataset"]
    comparison_config = {"strengths": args.strength or [], "steps": args.steps or []}
    waiting = "Another `random-diffusion` run is diffusing; waiting for it..."
    with project_instance() as instance, diffusing_alone(waiting):
        fail_runs_whose_process_is_gone(instance)
        scan = _materialize(defs, "source_images", instance, dataset_config)  # registers the images partitions
        if not (scan.success and _materialize(defs, "model_catalog", instance, dataset_config).success):
            return 1
        keys, models = instance.get_dynamic_partitions("images"), instance.get_dynamic_partitions("models")
        wanted, unknown = _compared_images(dataset, keys, args.images)
        if unknown or not models:
            problem = _not_comparable(scan, unknown) if unknown else "the model catalog has no usable model."
            print(f"error: {problem}", file=sys.stderr)
            return 2
        granularity = dataset.granularity
        if not granularity.per_image:  # cells are folders or shards x models: compare only the chosen images there
            comparison_config["images"] = wanted
        job = with_terminal_logger(defs.resolve_job_def("compare_models"))
        failed_runs = 0
        # One run per contiguous range of the chosen partitions, over all models: each model loads once per run.
        chosen = granularity.group(wanted)
        for image_range in partition_ranges(keys, chosen, args.max_partitions_per_run):
            result = _execute(
                job,
                instance,
                {
                    "resources": resources_config,
                    "ops": {"model_comparison": {"config": comparison_config}},
                    **TERMINAL_LOGGING,
                },
                partition_range_tags(_cell_key(image_range.first, models[0]), _cell_key(image_range.last, models[-1])),
            )
            failed_runs += not result.success
            images = sum(len(chosen.get(key, [])) for key in image_range.keys)
            within = "" if granularity.per_image else f" in {_count(len(image_range.keys), granularity.unit)}"
            cells = f"{_count(images, 'image')}{within} x {_count(len(models), 'model')}"
            print(f"Run {result.run_id} over {cells}: {_outcome(result)}")
        _materialize(defs, "comparison_report", instance, dataset_config)
    for key in dict.fromkeys(wanted):
        if grid_path(dataset.output_dir, key).is_file():
            print(f"Grid: {grid_path(dataset.output_dir, key)}")
    return _said_where_the_traces_are() if failed_runs else 0


def _compared_images(dataset, partitions: list[str], names: list[str]) -> tuple[list[str], list[str]]:
    """(the image keys of the named images, the names that are no image's): a name is an image's key, its path under
    the images folder (a file at the top: its name) or a path to the file."""
    from ..engine.images import partition_key_for

    candidates = [(name, partition_key_for(*_folder_and_name(dataset.images_dir, name))) for name in names]
    if dataset.granularity.per_image:
        known = set(partitions)
    else:  # the image keys of the named images' folders (or shards)
        partition_of = dataset.granularity.partition_of
        wanted_partitions = {partition_of(key) for keys in candidates for key in keys} & set(partitions)
        known = {file.partition_key for file in dataset.files_for(sorted(wanted_partitions))[0]}
    wanted = [next((key for key in keys if key in known), None) for keys in candidates]
    return [key for key in wanted if key], [name for name, key in zip(names, wanted, strict=True) if key is None]


def _folder_and_name(images_dir: str, name: str) -> tuple[str, str]:
    """(`file name`, `folder`) of an image named by its path under the images folder, or by a path to it."""
    path = Path(name)
    if path.is_file() and path.resolve().is_relative_to(Path(images_dir).resolve()):
        name = path.resolve().relative_to(Path(images_dir).resolve()).as_posix()
    folder, _, file_name = posixpath.normpath(name).rpartition("/")
    return file_name, folder


def _not_comparable(scan: dg.ExecuteInProcessResult, names: list[str]) -> str:
    """Why these images cannot be compared: `source_images` (the `scan` run) skipped them, saying why, or they are
    not in the folder."""
    metadata = scan.asset_materializations_for_node("source_images")[0].metadata
    records = metadata["skipped_files"].value.records if "skipped_files" in metadata else []
    skipped = {record.data["name"]: record.data["reason"] for record in records}
    absent = [name for name in names if name not in skipped]
    reasons = [f"{name}: {skipped[name]} (skipped, so not comparable)." for name in names if name in skipped]
    if absent:
        reasons.append(
            f"no image {absent} in the images folder (RANDOM_DIFFUSION_IMAGES_DIR); give file names or partition "
            "keys of images there."
        )
    return " ".join(reasons)


def _cell_key(image: str, model: str) -> str:
    return str(dg.MultiPartitionKey({"image": image, "model": model}))


def add_submit_parser(commands) -> None:
    submit = commands.add_parser("submit", help="launch runs on a running deployment over its GraphQL API")
    submit.add_argument(
        "--url",
        default=webserver_url(),
        help="the webserver, with credentials and path prefix if any (default: %(default)s, DAGSTER_WEBSERVER_URL)",
    )
    submit.add_argument(
        "--prompt",
        action="append",
        help="submit these prompts (repeatable): they stay current until the prompts file changes; "
        "default: the current prompt list",
    )
    submit.add_argument("--seed", type=int, help="run seed; a new seed re-rolls")
    submit.add_argument("--images", nargs="+", metavar="KEY", help="partition keys (default: all images)")
    submit.add_argument(
        "--max-partitions-per-run",
        type=_images_per_run,
        help=f"images per run (default: RANDOM_DIFFUSION_MAX_PARTITIONS_PER_RUN or {DEFAULT_MAX_PARTITIONS_PER_RUN})",
    )
    submit.add_argument("--wait", action="store_true", help="wait for the runs and print outcomes and output paths")
    submit.set_defaults(handler=submit_command)


def submit_command(args: argparse.Namespace) -> int:
    from ..engine.prompts import PromptListError
    from .remote import Deployment, SubmitError

    try:
        deployment = Deployment(args.url)
        run_ids = deployment.submit(args.prompt, args.seed, args.images, args.max_partitions_per_run)
        for run_id in run_ids:
            print(f"Submitted run {run_id}: {deployment.base_url}/runs/{run_id}")  # no credentials in links
        if not args.wait:
            return 0
        failed = 0
        for run_id in run_ids:
            status = deployment.wait(run_id, still_queued=_say_still_queued)
            failed += status != "SUCCESS"
            print(f"Run {run_id}: {status}")
            for key, path in sorted(deployment.outputs(run_id).items()):
                print(f"  {key}: {path}")
    except (SubmitError, PromptListError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0


def _say_still_queued(run_id: str) -> None:
    print(
        f"Run {run_id} is still queued: it starts once the deployment's daemon (`random-diffusion daemon` or `ui`) "
        "is running and the gpu pool has room; still waiting...",
        file=sys.stderr,
        flush=True,
    )


def add_ui_parser(commands) -> None:
    ui = commands.add_parser(
        "ui", add_help=False, help="start the Dagster UI, guarded against requests from other web pages, and the daemon"
    )
    ui.add_argument("--help", action="help", help="show this help message and exit")
    ui.add_argument(
        "-h",
        "--host",
        default="127.0.0.1",
        help="address to serve on; bind wider only behind auth, and list the host names users reach it by in "
        "RANDOM_DIFFUSION_ALLOWED_HOSTS",
    )
    ui.add_argument("-p", "--port", type=int, default=3000, help="port to serve on (default 3000)")
    ui.add_argument("-w", "--workspace", default="workspace.yaml", help="Dagster workspace file (default: %(default)s)")
    ui.set_defaults(handler=ui_command)


def ui_command(args: argparse.Namespace) -> int:
    from .ui import serve_ui

    return serve_ui(args.host, args.port, args.workspace)


def add_daemon_parser(commands) -> None:
    daemon_help = (
        "run Dagster's daemon (sensors, schedules, the run queue, backfills) without the UI; it picks up new "
        "backfills every RANDOM_DIFFUSION_BACKFILL_INTERVAL_SECONDS (default 1; Dagster's own daemon: 30)"
    )
    daemon = commands.add_parser("daemon", help=daemon_help, description=daemon_help)
    daemon.add_argument(
        "-w", "--workspace", default="workspace.yaml", help="Dagster workspace file (default: %(default)s)"
    )
    daemon.set_defaults(handler=daemon_command)


def daemon_command(args: argparse.Namespace) -> int:
    import random_diffusion_dagster.definitions  # noqa: F401  (every setting read as definitions load, checked here)

    from .daemon import run_with_quiet_console

    return run_with_quiet_console(args.workspace)


def write_worker_config() -> Path:
    """The folder holding the `dagster_celery_config` module a worker's Celery app reads: this instance's broker and
    result store, and the settings runs use (celery_settings)."""
    from ..settings import CELERY_POLL_SECONDS, celery_settings, celery_urls, local_celery_folder

    broker, backend = celery_urls()
    config_dir = local_celery_folder() / "worker-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    # Steps log to Dagster (the UI); what they also print reaches this terminal at INFO, so only --loglevel INFO
    # shows it. The project's package holds the filter for dagster-celery's harmless duplicate-task warning.
    # kombu's SQL broker hands broker_transport_options to SQLAlchemy's create_engine, so its poll interval is
    # set on the transport class instead.
    # The worker's process imports torch and diffusers as it starts (worker_process_init), not in its first step;
    # Celery gives a starting process 4 s to report, less than those imports take on a slow disk.
    settings = {
        "broker_url": broker,
        "result_backend": backend,
        "worker_redirect_stdouts_level": "INFO",
        "worker_proc_alive_timeout": 120.0,
        **celery_settings(),
    }
    (config_dir / "dagster_celery_config.py").write_text(
        "import random_diffusion_dagster as _project  # its warning filters\n"
        "import kombu.transport.sqlalchemy as _sql_broker\n"
        "from celery.signals import worker_process_init as _process_init\n"
        "from random_diffusion_dagster.engine.pipelines import import_libraries as _import_libraries\n"
        f"_sql_broker.Transport.polling_interval = {CELERY_POLL_SECONDS!r}\n"
        "_process_init.connect(lambda **_: _import_libraries(), weak=False)\n"
        + "".join(f"{k} = {v!r}\n" for k, v in settings.items())
    )
    return config_dir


def add_worker_parser(commands) -> None:
    worker = commands.add_parser(
        "worker",
        help="run a GPU worker for RANDOM_DIFFUSION_EXECUTOR=celery; it keeps pipelines loaded between runs",
    )
    worker.add_argument("-n", "--name", default="gpu", help="worker name (default: %(default)s)")
    worker.add_argument(
        "-q",
        "--queues",
        type=lambda text: [q.strip() for q in text.split(",") if q.strip()],
        default=["gpu", "dagster"],
        help="comma-separated queues to take steps from (default: gpu,dagster: diffusion and every other step)",
    )
    worker.add_argument(
        "--loglevel", default="WARNING", help="Celery's log level (default: %(default)s; steps log to Dagster)"
    )
    worker.set_defaults(handler=worker_command)


def worker_command(args: argparse.Namespace) -> int:
    """A Celery worker for this machine's GPU: steps of RANDOM_DIFFUSION_EXECUTOR=celery runs execute in it, and it
    keeps their pipelines loaded from one run to the next. Celery's own CLI with dagster-celery's app, configured
    through the `dagster_celery_config` module that app reads (as `dagster-celery worker start` writes it)."""
    import socket

    from ..settings import EXECUTOR_VARIABLE, celery_urls, executor_choice, step_storage_location

    executor = executor_choice() or "celery"  # the worker's steps read it; an explicit choice stands
    broker, _ = celery_urls()
    step_storage_location(executor)  # on a broker other machines reach, refuse to start where every step would fail
    config_dir = write_worker_config()
    env = {**os.environ, EXECUTOR_VARIABLE: executor}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(config_dir), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "celery",
        "--app",
        "dagster_celery.app",
        "worker",
        "--queues",
        ",".join(args.queues),
        "--concurrency",
        "1",
        "--prefetch-multiplier",
        "1",
        "--hostname",
        f"{args.name}@{socket.gethostname()}",
        "--loglevel",
        args.loglevel,
    ]
    print(f"Worker {args.name!r}: queues {', '.join(args.queues)}, broker {broker}", flush=True)
    os.execve(sys.executable, command, env)


def _materialize(
    defs: dg.Definitions, asset: str, instance: dg.DagsterInstance, resources_config: dict, ops: dict | None = None
) -> dg.ExecuteInProcessResult:
    """One asset, in this process; a failure is shown as the terminal logger's one line (see the result's success).

    The run records the asset it materializes, as a run of the UI's Materialize button does: the UI's run list shows
    it as the run's target (a subset job made beforehand would record none, and the list would show no target)."""
    job = with_terminal_logger(defs.resolve_implicit_global_asset_job_def())
    run_config = {"resources": resources_config, **({"ops": ops} if ops else {}), **TERMINAL_LOGGING}
    return _execute(job, instance, run_config, asset_selection=[dg.AssetKey(asset)])


def _execute(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    run_config: dict,
    tags: dict[str, str] | None = None,
    asset_selection: list[dg.AssetKey] | None = None,
) -> dg.ExecuteInProcessResult:
    """A run in this process, tagged with it so it is failed if the process dies (dead_runs); Ctrl-C stops the
    command."""
    result = job.execute_in_process(
        instance=instance,
        run_config=run_config,
        tags={**(tags or {}), **process_tags()},
        raise_on_error=False,
        asset_selection=asset_selection,
    )
    _stop_if_interrupted(result)
    return result


def _stop_if_interrupted(result: dg.ExecuteInProcessResult) -> None:
    """Dagster turns Ctrl-C into a failed step and returns; the command stops there, as a terminal user expects."""
    if any(is_interruption(event) for event in result.all_events):
        raise KeyboardInterrupt


def _outcome(result: dg.ExecuteInProcessResult) -> str:
    return "succeeded" if result.success else "FAILED (the error lines above say what failed)"


def _said_where_the_traces_are() -> int:
    """After failed runs: where the stack traces the terminal left out are. The exit status for failed runs."""
    print("Each failure's stack trace is on its run's page in the UI (`random-diffusion ui`, Runs).", file=sys.stderr)
    return 1


def _engine_config(args: argparse.Namespace) -> dict:
    """The terminal's progress bar, and a batch size only when one was given (else the device's default)."""
    return {"progress_bar": True, **({"batch_size": args.batch_size} if args.batch_size else {})}


def _count(number: int, noun: str) -> str:
    """'1 image', '3 images'."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _count_up_to(maximum: int):
    """argparse type for counts: a whole number from 1 to `maximum`."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{value} is not from 1 to {maximum}; give a number in that range")
        return value

    return count


_batch_size = _count_up_to(MAX_BATCH_SIZE)
_images_per_run = _count_up_to(MAX_PARTITIONS_PER_RUN)
_steps = _count_up_to(int(SETTINGS["num_inference_steps"].high))
_variants = _count_up_to(MAX_VARIANTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="random-diffusion", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('random_diffusion_dagster')}")
    commands = parser.add_subparsers(dest="command", required=True)
    for add_parser in (
        add_build_demo_models_parser,
        add_run_parser,
        add_plan_parser,
        add_compare_parser,
        add_submit_parser,
        add_ui_parser,
        add_daemon_parser,
        add_worker_parser,
    ):
        add_parser(commands)
    args = parser.parse_args(argv)
    if args.command in ("run", "compare"):  # they execute runs in this process: Ctrl-C must stop them
        sys.unraisablehook = redeliver_swallowed_interrupts
        quiet_interrupted_database_closes()
    try:
        return args.handler(args)
    except SettingError as error:
        parser.exit(2, f"random-diffusion {args.command}: error: {error}\n")
    except BrokenPipeError:  # the reader went away (`random-diffusion plan | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return 0
    except KeyboardInterrupt:
        finished = " (finished images are saved; running it again reuses them)" if args.command == "run" else ""
        print(f"\nrandom-diffusion {args.command}: interrupted{finished}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
