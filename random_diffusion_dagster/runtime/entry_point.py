"""The `random-diffusion` console script: Ctrl-C at any moment ends in one line, with no traceback.

`cli.main` handles Ctrl-C while a command works. This module imports nothing heavy, so it also covers the second
or so in which the command's modules (Dagster among them) import, and the interpreter's shutdown after the command
has finished.
"""

import os
import sys


def main() -> int:
    try:
        from .cli import main as run_command
    except KeyboardInterrupt:
        print("\nrandom-diffusion: interrupted", file=sys.stderr)
        return 130
    code = run_command()
    _exit_at_once_on_ctrl_c(code)
    return code


def _exit_at_once_on_ctrl_c(code: int) -> None:
    """The command is done: a Ctrl-C during shutdown (worker threads joining, storages closing) ends the process with
    the command's own exit code instead of a KeyboardInterrupt from inside the interpreter's cleanup."""
    import signal

    def exit_now(signum, frame):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    signal.signal(signal.SIGINT, exit_now)
