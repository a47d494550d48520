"""PyBullet's C code prints its build time to stderr on import and ``argv[0]=`` to stdout on every
connection, which would interleave with a CLI's table or a node's log: silence it there."""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def quiet_fds(*fds: int):
    """Send the file descriptors ``fds`` (1: stdout, 2: stderr) to /dev/null for the block, C-level
    prints included; a process without real descriptors (captured streams) is left alone."""
    saved: dict[int, int] = {}
    try:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd in fds:
            saved[fd] = os.dup(fd)
    except (OSError, ValueError, AttributeError):
        for copy in saved.values():
            os.close(copy)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            for fd in fds:
                os.dup2(devnull.fileno(), fd)
            yield
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
