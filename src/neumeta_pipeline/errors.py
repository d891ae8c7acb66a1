"""Errors a user can fix, and how the command line shows them.

A ``UserError`` is a problem with what the user gave the project (a parameter, a data folder, a
resume file, a run that collides with another one); its message says what is wrong and how to fix
it. On the command line it prints as that message alone: the traceback would only bury the one
line that matters. Any other exception is a crash and keeps its full traceback, as does a user
error when ``NEUMETA_TRACEBACK=1`` is set.
"""

from __future__ import annotations

import os
import sys


class UserError(ValueError):
    """Something the user can fix; the message says what and how."""


def user_error(exc: BaseException | None) -> UserError | None:
    """``exc`` or the first ``UserError`` in its chain of causes (a dataset may wrap one)."""
    while exc is not None:
        if isinstance(exc, UserError):
            return exc
        exc = exc.__cause__
    return None


def install_excepthook() -> None:
    """Print uncaught ``UserError``s as their message alone; leave every other error to the
    previous hook (Kedro's rich traceback). Installing it twice wraps once."""
    previous = sys.excepthook
    if getattr(previous, "_neumeta", False):
        return

    def hook(kind, exc, tb):
        found = user_error(exc)
        if found is not None and os.environ.get("NEUMETA_TRACEBACK") != "1":
            print(f"\nError: {found}\n(set NEUMETA_TRACEBACK=1 to see the traceback)", file=sys.stderr)
            return
        previous(kind, exc, tb)

    hook._neumeta = True  # type: ignore[attr-defined]
    sys.excepthook = hook
