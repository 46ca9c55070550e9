"""User-facing errors: one line, exit code 2, never a traceback.

Library code raises :class:`UserError` for anything the *user* can fix (a wrong path,
a malformed file, an impossible setting). Entry points wrap their body in
``qwen_kit.entry.run_cli``, which prints the message on one line and exits with code 2.
Bugs still raise ordinary exceptions, so they keep their tracebacks.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix. The message says what is wrong and what to do."""
