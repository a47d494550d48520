"""`BagError`: the one error type the bag tools raise for a problem with a bag or an argument.

The CLI turns it (and ``ValueError``) into one line on stderr and exit code 1, never a traceback:
a user who points the tool at a truncated bag must read what is wrong, not where it failed.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable


class BagError(Exception):
    """A bag that cannot be used as asked; the message names the bag, topic or field at fault."""


def cli_errors(command: str) -> Callable:
    """Decorate a subcommand's ``run(args)``: ``BagError``/``ValueError``/``OSError`` -> one line
    ``kv-vla <command>: error: ...`` on stderr and exit code 1 (2 for an interrupted run)."""

    def wrap(run: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(run)
        def guarded(*args, **kwargs) -> int:
            try:
                return run(*args, **kwargs)
            except (BagError, ValueError, OSError) as exc:
                print(f"kv-vla {command}: error: {exc}", file=sys.stderr, flush=True)
                return 1
            except KeyboardInterrupt:
                print(f"kv-vla {command}: interrupted; nothing was written", file=sys.stderr, flush=True)
                return 130

        return guarded

    return wrap


__all__ = ["BagError", "cli_errors"]
