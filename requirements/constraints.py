"""Turn a lock file into the pip constraints for one venv (standard library only: it runs
before the project is installed).

    python requirements/constraints.py requirements/lock.txt > .venv/constraints.txt

Every locked version is kept, except when the venv already holds a torch of another version
(a CUDA build that a GPU server came with, or one the user installed first): then torch and
every package it depends on are left out, so installing the kit never replaces that torch.
With --freeze, it normalises `pip freeze` output into a lock file instead.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

HEADER = ("# The exact versions the test suite last passed with (`make lock` writes this file;\n"
          "# `make venv` installs them; `make upgrade` tries the newest allowed ones).\n")


def _name(line: str) -> str:
    return re.split(r"[=<>!~ \[;]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def torch_closure() -> set[str]:
    """torch and everything it requires, as installed."""
    seen: set[str] = set()
    todo = ["torch"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def constraints(lock_lines: list[str]) -> list[str]:
    pins = [ln.strip() for ln in lock_lines if ln.strip() and not ln.startswith("#")]
    locked_torch = next((p.split("==", 1)[1] for p in pins if _name(p) == "torch"), None)
    try:
        installed = metadata.version("torch").split("+")[0]
    except metadata.PackageNotFoundError:
        installed = None
    if installed and locked_torch and installed != locked_torch:
        drop = torch_closure()
        print(f"constraints: keeping the installed torch {installed} (the lock has {locked_torch}); "
              f"its {len(drop) - 1} dependencies are not pinned either", file=sys.stderr)
        pins = [p for p in pins if _name(p) not in drop]
    return pins


def freeze_to_lock(freeze_lines: list[str]) -> list[str]:
    """`pip freeze` output -> lock lines: no editable project, no local labels (+cpu)."""
    out = []
    for line in freeze_lines:
        line = line.strip()
        if not line or line.startswith(("#", "-e ")) or " @ " in line or _name(line) == "qwen-kit":
            continue
        out.append(re.sub(r"\+[A-Za-z0-9.]+$", "", line))
    return sorted(out, key=str.lower)


if __name__ == "__main__":
    if sys.argv[1] == "--freeze":
        lines = freeze_to_lock(sys.stdin.read().splitlines())
        sys.stdout.write(HEADER + "".join(f"{ln}\n" for ln in lines))
    else:
        with open(sys.argv[1], encoding="utf-8") as f:
            sys.stdout.write("".join(f"{ln}\n" for ln in constraints(f.read().splitlines())))
