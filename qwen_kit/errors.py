"""User-facing errors: one line, exit code 2, never a traceback.

Library code raises :class:`UserError` for anything the *user* can fix (a wrong path,
a malformed file, an impossible setting). Entry points wrap their body in
:func:`run_cli`, which prints the message on one line and exits with code 2.
Bugs still raise ordinary exceptions, so they keep their tracebacks.
"""

from __future__ import annotations

import sys
from typing import Callable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix. The message says what is wrong and what to do."""


def run_cli(main: Callable[[], int | None], prog: str = "qwen_kit") -> None:
    """Run ``main`` and turn :class:`UserError` / Ctrl-C into a clean exit."""
    try:
        from platforms import apply_env_defaults

        apply_env_defaults()  # before any hub library reads its cache location
        code = main()
    except UserError as err:
        message = " ".join(str(err).split("\n"))
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
