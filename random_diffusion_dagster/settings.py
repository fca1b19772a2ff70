"""The project's environment variables, read in one place with errors that name the variable and the fix.

Read when definitions load, so a bad value fails the code location (UI, `dagster definitions
validate`, `make run`) with the message below instead of failing runs later.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .engine.catalog import MAX_VARIANTS  # results per image: the catalog's `defaults: {variants: K}` has it too
from .engine.granularity import Granularity
from .engine.local_files import kind_problem, write_problem

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SettingError(ValueError):
    """An environment variable holds a value the project cannot use."""


def env_path(variable: str, default: str, want: str, urls: bool = False) -> str:
    """A path knob: the variable if set, else the default under the project root. Checked as it is read: a `want`
    ("file" or "folder") where one is there, and with `urls`, a URL (s3://...) whose protocol fsspec knows."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return str(PROJECT_ROOT / default)
    if "://" in value:
        if not urls:
            raise SettingError(f"{variable}={value!r} is a URL; it must be a local {want}: point it at one.")
        return _known_protocol(variable, value)
    path = Path(value).expanduser().resolve()
    problem = kind_problem(path, want)
    if problem and problem != "does not exist":  # a missing one is named by its reader, which says what to create
        raise SettingError(f"{variable}={path} {problem}: point {variable} at a {want}.")
    return str(path)


def _known_protocol(variable: str, url: str) -> str:
    """The URL, if fsspec knows its protocol."""
    import fsspec

    protocol = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise SettingError(
            f"{variable}={url!r}: {protocol!r} is not a storage protocol fsspec knows; use a local folder or a URL "
            "such as s3://bucket/folder."
        ) from None
    except ImportError:
        pass  # a known protocol whose package this process lacks: the process that writes there says so
    return url


def env_int(
    variable: str, default: int | None, minimum: int | None = None, maximum: int | None = None, why: str = ""
) -> int | None:
    """An integer knob within [minimum, maximum]; unset or empty gives the default. `why` says why the maximum."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(f"{variable}={raw!r} is not a whole number: set it to one, or unset it.") from None
    if minimum is not None and value < minimum:
        raise SettingError(f"{variable}={value} is below {minimum}: set it to {minimum} or more, or unset it.")
    if maximum is not None and value > maximum:
        raise SettingError(
            f"{variable}={value} is above {maximum}{f' ({why})' if why else ''}: set it to {maximum} or less, "
            "or unset it."
        )
    return value


def env_choices(variable: str, allowed: tuple[str, ...]) -> set[str]:
    """A comma-separated subset of `allowed` (e.g. RANDOM_DIFFUSION_COMPILE=unet,vae)."""
    named = {part.strip().lower() for part in os.environ.get(variable, "").split(",") if part.strip()}
    unknown = sorted(named - set(allowed))
    if unknown:
        raise SettingError(
            f"{variable} names {unknown}; set it to a comma-separated list of {' and '.join(allowed)} "
            f"(e.g. {','.join(allowed)!r}), or unset it."
        )
    return named


MAX_SEED = 2**63 - 1
MAX_RESIDENT_MODELS = 64
MAX_PARTITIONS_PER_RUN = 100_000  # Dagster's advice for the partitions of one asset
DAY_SECONDS, HOUR_SECONDS = 86_400, 3_600


def library_default(variable: str, value: str) -> None:
    """Give a library setting that exists only as an environment variable (torch's compile cache folder, Dagster's
    event batch size) this project's value, unless the user set it: every process that loads the project gets it,
    including those Dagster starts for runs and code servers."""
    os.environ.setdefault(variable, value)


# The dataset resource's defaults (defs/resources.py): what a user points at their own files.
def images_dir() -> str:
    return env_path("RANDOM_DIFFUSION_IMAGES_DIR", "data/images", "folder")


def output_dir() -> str:
    return env_path("RANDOM_DIFFUSION_OUTPUT_DIR", "data/outputs", "folder", urls=True)


def prompts_file() -> str:
    return env_path("RANDOM_DIFFUSION_PROMPTS_FILE", "data/prompts.txt", "file")


def models_file() -> str:
    return env_path("RANDOM_DIFFUSION_MODELS_FILE", "data/models.yaml", "file")


def wildcards_dir() -> str:
    return env_path("RANDOM_DIFFUSION_WILDCARDS_DIR", "data/wildcards", "folder")


MASKS_DIR_VARIABLE = "RANDOM_DIFFUSION_MASKS_DIR"
CONTROLS_DIR_VARIABLE = "RANDOM_DIFFUSION_CONTROLS_DIR"


def masks_dir() -> str:
    """RANDOM_DIFFUSION_MASKS_DIR: inpainting masks, at the sources' paths under it (engine/pairs.py)."""
    return env_path(MASKS_DIR_VARIABLE, "data/masks", "folder")


def controls_dir() -> str:
    """RANDOM_DIFFUSION_CONTROLS_DIR: ControlNet control images, a folder per control type (engine/pairs.py)."""
    return env_path(CONTROLS_DIR_VARIABLE, "data/controls", "folder")


def recursive_scan() -> bool:
    """RANDOM_DIFFUSION_RECURSIVE (1/0): whether subfolders of the images folder are scanned too (default 1)."""
    return env_flag("RANDOM_DIFFUSION_RECURSIVE", True)


def dataset_dir() -> str:
    return env_path("RANDOM_DIFFUSION_DATASET_DIR", "data/augmented", "folder")


def variants() -> int | None:
    """RANDOM_DIFFUSION_VARIANTS: results per image; unset, None: the catalog's `defaults: {variants: K}`, else 1
    (DatasetResource.result_variants)."""
    return env_int("RANDOM_DIFFUSION_VARIANTS", None, minimum=1, maximum=MAX_VARIANTS, why="results per image")


def caption_fallback() -> str | None:
    """RANDOM_DIFFUSION_CAPTION_FALLBACK: what `{caption}` becomes for an image without a caption; unset or blank,
    None: such an image fails by name."""
    return " ".join(os.environ.get("RANDOM_DIFFUSION_CAPTION_FALLBACK", "").split()) or None


def run_seed() -> int:
    return env_int("RANDOM_DIFFUSION_SEED", 0, minimum=-MAX_SEED, maximum=MAX_SEED, why="a 64-bit seed")


# The engine resource's defaults.
def resident_models() -> int:
    return env_int(
        "RANDOM_DIFFUSION_RESIDENT_MODELS", 2, minimum=1, maximum=MAX_RESIDENT_MODELS, why="pipelines held at once"
    )


def torch_threads() -> int | None:
    cores = os.cpu_count() or 1
    return env_int(
        "RANDOM_DIFFUSION_TORCH_THREADS",
        None,
        minimum=1,
        maximum=4 * cores,
        why=f"4 per CPU core; this machine has {cores}",
    )


COMPILABLE_PARTS = ("unet", "vae")


def compile_part(part: str) -> bool | None:
    """Whether RANDOM_DIFFUSION_COMPILE ("unet", "vae", "unet,vae" or "none") names `part`; unset: None, decided
    per device (DiffusionEngineResource.speedups_on). How sensor and schedule runs get their setting."""
    if os.environ.get("RANDOM_DIFFUSION_COMPILE", "").strip().lower() == "none":
        return False
    named = env_choices("RANDOM_DIFFUSION_COMPILE", COMPILABLE_PARTS)
    return part in named if named else None


def compile_ahead_of_time() -> bool:
    """RANDOM_DIFFUSION_COMPILE_AHEAD_OF_TIME (1/0, default 1): whether compiled parts go through packages kept in the
    compile cache, which a fresh worker loads instead of tracing each graph again (docs/speed.md)."""
    return env_flag("RANDOM_DIFFUSION_COMPILE_AHEAD_OF_TIME", True)


DEFAULT_MAX_PARTITIONS_PER_RUN = 512
# Folders or shards per run: Dagster takes about 0.25 s to create a run (benchmarks/control_plane.py), so a backfill of
# 1,000 folders queues its 200 runs in about a minute; 5 ImageNet classes are ~6,500 images, 20 minutes on an H200.
DEFAULT_MAX_GROUPS_PER_RUN = 5
PARTITIONS_VARIABLE = "RANDOM_DIFFUSION_PARTITIONS"


def partition_granularity() -> str:
    """RANDOM_DIFFUSION_PARTITIONS: what one partition of `diffused_image` holds: `image` (the default), `folder` (a
    folder of the tree) or `shard:N` (N stable hash shards). Past Dagster's advice of 100,000 partitions per asset,
    a folder or shard partition keeps the partition count low (docs/million-images.md)."""
    raw = os.environ.get(PARTITIONS_VARIABLE, "").strip() or "image"
    try:
        return str(Granularity.parse(raw))
    except ValueError as exc:
        raise SettingError(f"{PARTITIONS_VARIABLE}={raw!r}: {exc} Or unset it.") from None


def max_partitions_per_run() -> int:
    """Partitions per run in backfills, sensor, schedule, CLI and `submit` runs.

    512 images: every run pays its process start, definitions and Dagster's bookkeeping (without a warm worker also
    imports and a load per model drawn) while the GPU waits, and splits its images across models; fewer, bigger
    runs keep the GPU busy (docs/speed.md). Lower it with several GPUs, so a backfill spreads over them. A folder or
    shard partition holds many images already: 5 to a run (DEFAULT_MAX_GROUPS_PER_RUN), never split across runs.
    """
    return env_int(
        "RANDOM_DIFFUSION_MAX_PARTITIONS_PER_RUN",
        DEFAULT_MAX_PARTITIONS_PER_RUN
        if Granularity.parse(partition_granularity()).per_image
        else DEFAULT_MAX_GROUPS_PER_RUN,
        minimum=1,
        maximum=MAX_PARTITIONS_PER_RUN,
        why="one run records each of its images in Dagster at its end",
    )


CATCH_UP_CHOICES = ("nightly", "on-change", "off")


def catch_up_setting() -> str:
    """RANDOM_DIFFUSION_CATCH_UP: when out-of-date images are redone without anyone asking. `nightly` (the default):
    `catch_up_schedule` at RANDOM_DIFFUSION_CATCH_UP_CRON; `on-change`: also as soon as input_files_sensor sees the
    prompts file or the catalog change; `off`: only when someone launches it. Nightly by default because a prompts
    edit may mean hours of GPU work: the `results_up_to_date` check shows what is out of date first."""
    choice = os.environ.get("RANDOM_DIFFUSION_CATCH_UP", "").strip().lower() or "nightly"
    if choice not in CATCH_UP_CHOICES:
        raise SettingError(
            f"RANDOM_DIFFUSION_CATCH_UP={choice!r}: set it to nightly (the default), on-change or off, or unset it."
        )
    return choice


def catch_up_cron() -> str:
    """When `catch_up_schedule` runs (cron syntax, the daemon's time zone): nightly at 03:00 unless set."""
    from dagster._utils.schedules import is_valid_cron_schedule  # Dagster's own rule; no public name

    cron = os.environ.get("RANDOM_DIFFUSION_CATCH_UP_CRON", "").strip() or "0 3 * * *"
    if not is_valid_cron_schedule(cron):
        raise SettingError(
            f"RANDOM_DIFFUSION_CATCH_UP_CRON={cron!r} is not a cron schedule: set it to five fields such as "
            "'0 3 * * *' (03:00 every day), or unset it."
        )
    return cron


def sensor_interval_seconds() -> int:
    """Seconds between new_images_sensor's looks at the images folder: how long a new image may wait before its run.
    Dagster's daemon evaluates sensors at most every 5 s; a tick stats every file, so huge folders want longer."""
    return env_int("RANDOM_DIFFUSION_SENSOR_INTERVAL_SECONDS", 30, minimum=5, maximum=DAY_SECONDS, why="a day")


def backfill_interval_seconds() -> int:
    """Seconds between `random-diffusion daemon`'s looks for requested backfills (Dagster's own daemon: 30).

    1: a backfill's first run starts about a second after the request, and a look with no backfill to work on is
    one query (docs/speed.md)."""
    return env_int("RANDOM_DIFFUSION_BACKFILL_INTERVAL_SECONDS", 1, minimum=1, maximum=HOUR_SECONDS, why="an hour")


EXECUTORS = ("in_process", "multiprocess", "celery", "k8s")
SEVERAL_MACHINES = ("celery", "k8s")  # executors whose steps may run on other machines or pods
STEP_STORAGE_VARIABLE = "RANDOM_DIFFUSION_STEP_STORAGE"


EXECUTOR_VARIABLE = "RANDOM_DIFFUSION_EXECUTOR"


def executor_choice() -> str:
    """RANDOM_DIFFUSION_EXECUTOR: "" or "in_process" (the default), "multiprocess", "celery" or "k8s"."""
    choice = os.environ.get(EXECUTOR_VARIABLE, "").strip().lower()
    if choice and choice not in EXECUTORS:
        raise SettingError(
            f"RANDOM_DIFFUSION_EXECUTOR={choice!r}: use in_process (the default), multiprocess, celery or k8s."
        )
    return choice


def env_flag(variable: str, default: bool) -> bool:
    """A 1/0 knob; unset or empty gives the default."""
    raw = os.environ.get(variable, "").strip().lower()
    if not raw:
        return default
    if raw not in ("1", "0", "true", "false", "yes", "no"):
        raise SettingError(f"{variable}={raw!r}: set it to 1 or 0, or unset it.")
    return raw in ("1", "true", "yes")


def keep_pipelines_loaded() -> bool:
    """RANDOM_DIFFUSION_KEEP_LOADED (1/0): whether steps leave their pipelines loaded for the process's next step.

    On by default with the celery executor, whose workers outlive steps; elsewhere each run is its own process
    and keeping would only hold memory (tests, the CLI's comparisons).
    """
    return env_flag("RANDOM_DIFFUSION_KEEP_LOADED", executor_choice() == "celery")


def dagster_home() -> Path | None:
    """DAGSTER_HOME, Dagster's own variable: the folder of the instance's dagster.yaml, if set."""
    value = os.environ.get("DAGSTER_HOME", "").strip()
    return Path(value) if value else None


def instance_folder() -> Path:
    """.dagster beside the instance's dagster.yaml (DAGSTER_HOME, else the project root, which `random-diffusion ui`
    hands its daemon as DAGSTER_HOME): what this box keeps besides Dagster's own storage."""
    return ((dagster_home() or PROJECT_ROOT) / ".dagster").resolve()


def webserver_url() -> str:
    """The deployment `random-diffusion submit` talks to (DAGSTER_WEBSERVER_URL, Dagster's own variable)."""
    return os.environ.get("DAGSTER_WEBSERVER_URL", "").strip() or "http://127.0.0.1:3000"


ALLOWED_ORIGINS_VARIABLE = "RANDOM_DIFFUSION_ALLOWED_ORIGINS"


def allowed_origins() -> list[str]:
    """Origins besides the UI's own whose pages may call its API (RANDOM_DIFFUSION_ALLOWED_ORIGINS, comma-separated);
    runtime/ui_guard.py checks each is an origin."""
    return [origin.strip() for origin in os.environ.get(ALLOWED_ORIGINS_VARIABLE, "").split(",") if origin.strip()]


def local_celery_folder() -> Path:
    """Where the one-box broker and result store live."""
    return instance_folder() / "celery"


COMPILE_CACHE_FOLDER = "torch-compile-cache"


def compile_cache_folder() -> Path:
    """torch.compile's on-disk cache (TORCHINDUCTOR_CACHE_DIR, unless set): a restarted worker or a new run process
    reads the kernels compiled before instead of compiling again. Under a step storage folder, which every worker
    mounts, a new worker on any machine reads them too (an fsspec URL cannot hold it: then beside the instance)."""
    step_storage = os.environ.get(STEP_STORAGE_VARIABLE, "").strip()
    if step_storage and "://" not in step_storage:
        return Path(env_path(STEP_STORAGE_VARIABLE, "", "folder")) / COMPILE_CACHE_FOLDER
    return instance_folder() / COMPILE_CACHE_FOLDER


def compile_cache_for_this_process() -> Path | None:
    """Point torch's compile cache (TORCHINDUCTOR_CACHE_DIR) at compile_cache_folder() unless the user set it. torch
    writes there even to load a package (a lock, the library unpacked), so where this process cannot write it (a
    volume mounted read-only, another user's folder) torch gets a folder of the process's own, and the shared one is
    returned: its packages are still read (engine Speedups.read_only_cache)."""
    library_default("TORCHINDUCTOR_CACHE_DIR", str(compile_cache_folder()))
    shared = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).absolute()
    own = Path(tempfile.gettempdir()) / f"random-diffusion-compile-cache-{os.getuid()}"
    if shared == own:  # swapped already (a warm worker whose engine settings changed makes a second cache)
        return _SWAPPED_COMPILE_CACHES.get(own)
    if not (write_problem(shared) or write_problem(shared / "packages")):
        return None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(own)
    _SWAPPED_COMPILE_CACHES[own] = shared
    return shared


_SWAPPED_COMPILE_CACHES: dict[Path, Path] = {}  # the process's own compile cache -> the shared one it stands for


def celery_urls() -> tuple[str, str]:
    """(broker, result backend) for the celery executor and `random-diffusion worker`.

    RANDOM_DIFFUSION_CELERY_BROKER / _BACKEND when set (Redis or RabbitMQ for several machines); unset, SQLite
    files in local_celery_folder(), so one GPU box gets a warm worker with no service to run.
    """
    broker = os.environ.get("RANDOM_DIFFUSION_CELERY_BROKER", "").strip()
    backend = os.environ.get("RANDOM_DIFFUSION_CELERY_BACKEND", "").strip()
    local = local_celery_folder()
    if not (broker and backend):
        local.mkdir(parents=True, exist_ok=True)
    return broker or f"sqla+sqlite:///{local}/broker.sqlite", backend or f"db+sqlite:///{local}/results.sqlite"


# How often a run looks for its steps' results, and a worker on the local SQLite broker for new steps: both
# poll once a second by default (dagster-celery's TICK_SECONDS, kombu's Transport.polling_interval), which cost a
# warm run about a second per trip through the broker.
CELERY_POLL_SECONDS = 0.1


def celery_settings() -> dict:
    """Celery settings for runs and workers alike: a busy worker holds its one task unacknowledged and reserves no
    other, so the next step goes to an idle GPU."""
    return {"task_acks_late": True, "worker_prefetch_multiplier": 1}


def one_box_celery(executor: str) -> bool:
    """Celery with the local SQLite broker: every worker is on this machine and shares its DAGSTER_HOME."""
    return executor == "celery" and not os.environ.get("RANDOM_DIFFUSION_CELERY_BROKER", "").strip()


def step_storage_location(executor: str | None = None) -> str | None:
    """Where steps leave values for later steps (RANDOM_DIFFUSION_STEP_STORAGE), or None for Dagster's local storage.

    Celery (with a broker other machines reach) and Kubernetes run steps on other machines or pods, so there a
    value written under one DAGSTER_HOME is not found by the next step: refuse to load without a location every
    worker reaches. Celery on its local SQLite broker runs on this machine alone: local storage is shared.
    """
    if os.environ.get(STEP_STORAGE_VARIABLE, "").strip():
        return env_path(STEP_STORAGE_VARIABLE, "", "folder", urls=True)
    executor = executor_choice() if executor is None else executor
    if executor in SEVERAL_MACHINES and not one_box_celery(executor):
        raise SettingError(
            f"RANDOM_DIFFUSION_EXECUTOR={executor} runs steps on several machines, and prompt_list and "
            f"model_catalog hand their values to diffused_image through step storage: set {STEP_STORAGE_VARIABLE} "
            "to a folder or fsspec URL every worker reaches (a shared mount such as /data/step-values, "
            "or s3://bucket/step-values)."
        )
    return None


ALLOWED_HOSTS_VARIABLE = "RANDOM_DIFFUSION_ALLOWED_HOSTS"


def allowed_hosts() -> list[str]:
    """Host names besides IP addresses, localhost and this machine's own names by which browsers may reach the UI
    (RANDOM_DIFFUSION_ALLOWED_HOSTS, comma-separated, e.g. dagster.lan): runtime/ui_guard.py refuses requests whose
    Host header names any other, as DNS rebinding sends them. Each must be a host name, without scheme or port."""
    import re

    label = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
    names = [name.strip().lower() for name in os.environ.get(ALLOWED_HOSTS_VARIABLE, "").split(",") if name.strip()]
    bad = [
        name
        for name in names
        if len(name.rstrip(".")) > 253 or not all(label.fullmatch(part) for part in name.rstrip(".").split("."))
    ]
    if bad:
        raise SettingError(
            f"{ALLOWED_HOSTS_VARIABLE} holds {bad}, which are not host names; list names only, without scheme, port "
            "or path, comma-separated (e.g. dagster.lan,gpu-box.example.com), or unset it."
        )
    return [name.rstrip(".") for name in names]
