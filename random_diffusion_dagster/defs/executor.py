"""Where steps run, chosen by RANDOM_DIFFUSION_EXECUTOR."""

import dagster as dg

from ..settings import CELERY_POLL_SECONDS, celery_settings, celery_urls, executor_choice


def project_executor() -> dg.ExecutorDefinition:
    """Where steps run (RANDOM_DIFFUSION_EXECUTOR): inside the run's own process by default, a process per
    step (`multiprocess`), `celery` workers, or `k8s` Jobs, one per step, so only the diffusion step asks for a GPU.

    In process by default: on one box a step process per step repeats the imports and definition loading
    (docs/speed.md) and runs nothing in parallel that matters, as the
    diffusion step is the run. A killed run still loses nothing (results are written atomically, one by one).
    """
    choice = executor_choice()
    if choice in ("", "in_process"):
        return dg.in_process_executor
    if choice == "multiprocess":
        return dg.multiprocess_executor
    if choice == "celery":
        import dagster_celery.core_execution_loop
        from dagster_celery import celery_executor

        # The run's loop sleeps TICK_SECONDS between looks at its steps' results; dagster-celery has no setting.
        dagster_celery.core_execution_loop.TICK_SECONDS = CELERY_POLL_SECONDS
        broker, backend = celery_urls()
        return celery_executor.configured(
            {
                "broker": broker,
                "backend": backend,
                "config_source": celery_settings(),
            }
        )
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise AssertionError(f"unhandled executor {choice!r}")  # executor_choice() admits only the names above
