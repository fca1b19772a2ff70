"""The Dagster logger of `random-diffusion run` and `compare`: warnings and failures as one readable line each.

The terminal shows the progress bar; the runs' info lines (loads, a line per batch) stay in their event logs,
where the UI shows them.

Dagster's console logger prints a failed step as its exception chain with every stack frame, twice (the step's
failure, then the run's): 80-250 lines in which the project's own message ("models.yaml: model names must be
unique ...") is hard to find. On a terminal the message is what a person acts on; the stack traces stay in the
run's page in the UI, which the CLI points to.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import dagster as dg

# Dagster's log records carry their event and original message here (dagster._core.log_manager, no public name).
_RECORD_METADATA = "dagster_meta"
# pydantic's last line under each invalid Config or resource field: a link to its docs, not about this value.
_PYDANTIC_LINK = "For further information visit https://errors.pydantic.dev"
# Dagster's own line for each step left out after a failure: the failure itself was already shown.
_LEFT_OUT_STEP = ("Dependencies for step ", "Not executing.")


def redeliver_swallowed_interrupts(unraisable) -> None:
    """A `sys.unraisablehook`. Dagster raises Ctrl-C as an exception from its signal handler; when the signal lands
    while a garbage-collection callback runs (SQLAlchemy has some), Python swallows the exception ("Exception
    ignored in ...", a traceback) and the run goes on as if nothing was pressed. This sends the signal again, so
    it is raised in the run's own code."""
    if isinstance(unraisable.exc_value, (KeyboardInterrupt, dg.DagsterExecutionInterruptedError)):
        # From another thread, a moment later: sent while this hook runs, the handler would raise inside it and be
        # swallowed again.
        timer = threading.Timer(0.05, os.kill, args=(os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()
    else:
        sys.__unraisablehook__(unraisable)


class _NotAnInterrupt(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, (KeyboardInterrupt, dg.DagsterExecutionInterruptedError))


def quiet_interrupted_database_closes() -> logging.Handler:
    """SQLAlchemy's pool logs an interrupt that lands while it closes a connection, with its traceback, and then
    raises it; the command then says it was interrupted, in one line. Its warnings and errors reach stderr as
    before (through this handler instead of logging's last resort), less those interrupts. Returns the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.addFilter(_NotAnInterrupt())
    logging.getLogger("sqlalchemy").addHandler(handler)
    return handler


INTERRUPTIONS = ("DagsterExecutionInterruptedError", "KeyboardInterrupt")


def is_interruption(event: dg.DagsterEvent) -> bool:
    """A step or run failed because the process was interrupted (Ctrl-C): Dagster fails it and returns. The
    interrupt may land in the step or after it, while Dagster records the step's results."""
    if event.is_step_failure and event.step_failure_data.error_source.name == "INTERRUPT":
        return True
    error = getattr(event.event_specific_data, "error", None)
    while error is not None:
        if error.cls_name in INTERRUPTIONS:
            return True
        error = error.cause
    return False


def error_text(error) -> str:
    """A step failure's own message, without its stack: the user code's exception (not Dagster's wrapper around
    it), named by its class unless it is the project's own or a `dg.Failure`, whose messages say what to do."""
    while error.cause is not None and error.cls_name.startswith("Dagster"):  # Dagster's wrappers around it
        error = error.cause
    qualified, _, text = error.message.strip().partition(": ")
    text = "\n".join(line for line in text.splitlines() if not line.strip().startswith(_PYDANTIC_LINK))
    own = qualified.startswith("random_diffusion_dagster.") or qualified.endswith(".Failure")
    return text if own else f"{error.cls_name}: {text}" if text else error.cls_name


class _TerminalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        metadata = getattr(record, _RECORD_METADATA, {})
        event = metadata.get("dagster_event")
        error = getattr(getattr(event, "event_specific_data", None), "error", None)  # a failure's exception
        if event is not None and event.is_step_failure:
            return f"error: {metadata['step_key']} failed: {error_text(error)}"
        message = metadata.get("orig_message", record.getMessage())
        if error is not None:  # e.g. a resource that could not start: "Initialization of resources [...] failed."
            return f"error: {message.rstrip('.')}: {error_text(error)}"
        return f"{record.levelname.lower()}: {message}"


class _WithoutRepeats(logging.Filter):
    """Drops what the terminal already shows another way: the run's failure (the CLI prints each run's outcome)
    and the steps left out after a failed one."""

    def filter(self, record: logging.LogRecord) -> bool:
        metadata = getattr(record, _RECORD_METADATA, {})
        event = metadata.get("dagster_event")
        if event is not None and (event.is_run_failure or is_interruption(event)):
            return False  # an interrupted command says so itself
        message = metadata.get("orig_message", "")
        return not (message.startswith(_LEFT_OUT_STEP[0]) and message.endswith(_LEFT_OUT_STEP[1]))


class _BesideTheProgressBar(logging.Handler):
    """Writes each line above the progress bar (tqdm clears and redraws it), not onto the bar's own line."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise into the run
            self.handleError(record)


@dg.logger(description="Warnings and errors, one line each, on stderr; stack traces stay in the run's UI page.")
def terminal_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("random-diffusion", level=logging.WARNING)
    handler = _BesideTheProgressBar()
    handler.setFormatter(_TerminalFormatter())
    handler.addFilter(_WithoutRepeats())
    logger.addHandler(handler)
    return logger


# The run config that turns it on (a job runs only the loggers its run config names, else Dagster's console one).
TERMINAL_LOGGING = {"loggers": {"terminal": {}}}


def with_terminal_logger(job: dg.JobDefinition) -> dg.JobDefinition:
    """The job with the terminal logger in place of Dagster's console logger; run it with TERMINAL_LOGGING."""
    return job.with_logger_defs({"terminal": terminal_logger})
