"""The `random-diffusion` console script: Ctrl-C at any moment ends in one line, with no traceback.

`cli.main` handles Ctrl-C while a command works. This module imports nothing heavy, so it also covers the second
or so in which the command's modules (Dagster among them) import, and the interpreter's shutdown after the command
has finished.
"""

import sys


def main() -> int:
    try:
        from .cli import main as run_command
    except KeyboardInterrupt:
        print("\nrandom-diffusion: interrupted", file=sys.stderr)
        return 130
    code = run_command()
    _ignore_ctrl_c_from_now()
    return code


def _ignore_ctrl_c_from_now() -> None:
    """The command is done and its exit code decided: a Ctrl-C while the interpreter shuts down (worker threads
    joining, large libraries unloading) is ignored, so the process ends with that code and no traceback. Ignoring
    is a setting of the process itself: Python resets its own handlers before the end of shutdown, this one not."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
