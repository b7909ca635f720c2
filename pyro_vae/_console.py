"""The ``pyro-vae`` console script and ``python -m pyro_vae``: Ctrl-C and SIGTERM get their message from the first
moment (while :mod:`pyro_vae.cli` is still being imported), then :func:`pyro_vae.cli.main` runs; one that arrives
after its work, while the interpreter shuts down, ends the process at once and quietly."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

_MESSAGES = {130: "pyro-vae: interrupted", 143: "pyro-vae: terminated by SIGTERM"}


class _Stopped(BaseException):
    def __init__(self, status: int) -> None:
        self.status = status


def _stop(signum: int, frame: Any) -> None:
    raise _Stopped(143)


def run() -> int:
    """Import the command line and run it; a Ctrl-C or SIGTERM during the import ends with a message, not a
    traceback.

    :returns: the exit status of :func:`pyro_vae.cli.main`, 130 or 143 when stopped while starting.
    """
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        try:
            from .cli import main
        finally:
            signal.signal(signal.SIGTERM, previous)
    except KeyboardInterrupt:
        status = 130
    except _Stopped as e:
        status = e.status
    else:
        status = main()
        _end_quietly_on_a_late_stop(status)
        return status
    print(_MESSAGES[status], file=sys.stderr)
    return status


def _end_quietly_on_a_late_stop(status: int) -> None:
    """The work is done and its files are written: a Ctrl-C or SIGTERM during the interpreter's shutdown (which
    printed "Exception ignored ... KeyboardInterrupt") now flushes the output and exits at once with ``status``,
    so a shutdown that hangs can still be stopped."""

    def leave(signum: int, frame: Any) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)

    signal.signal(signal.SIGINT, leave)
    signal.signal(signal.SIGTERM, leave)
