"""How every script runs its job: platform environment defaults first, then the job; a
:class:`~qwen_kit.errors.UserError` becomes one line on stderr and exit code 2, Ctrl-C exit 130."""

from __future__ import annotations

import sys
from typing import Callable

from qwen_kit.errors import EXIT_USER_ERROR, UserError


# bitsandbytes logs, at import, that its optional fast CPU kernel for 4-bit matmuls (the
# `kernels` package, fetched from the hub) is missing. It is imported whenever it is installed:
# sentence-transformers imports transformers.trainer_utils, which imports peft, which imports
# bitsandbytes. So `make demo` printed it before the first prompt though nothing asked for
# 4-bit. The message says nothing about a model the kit loads in 16 or 32 bits, and 4-bit on
# CPU works without that kernel (tests/model/test_load.py), so the kit's scripts hide it.
QUIET_LOGGERS = ("bitsandbytes.backends.cpu.ops",)


def quiet_optional_kernel_notes() -> None:
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def run_cli(main: Callable[[], int | None], prog: str = "qwen_kit") -> None:
    """Run ``main`` and turn :class:`UserError` / Ctrl-C into a clean exit."""
    quiet_optional_kernel_notes()
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
