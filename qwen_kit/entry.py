"""How every script runs its job: platform environment defaults first, then the job; a
:class:`~qwen_kit.errors.UserError` becomes one line on stderr and exit code 2, Ctrl-C exit 130."""

from __future__ import annotations

import sys
from typing import Callable

from qwen_kit.errors import EXIT_USER_ERROR, UserError


def run_cli(main: Callable[[], int | None], prog: str = "qwen_kit") -> None:
    """Run ``main`` and turn :class:`UserError` / Ctrl-C into a clean exit."""
    try:
        import platforms

        if not getattr(platforms, "QWEN_KIT_ADAPTERS", False):
            raise UserError(f"the module 'platforms' found at {getattr(platforms, '__file__', '?')} is not qwen_kit's "
                            "adapters (another package uses that name); uninstall it from this venv, or run the "
                            "scripts from the qwen_kit checkout")
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
