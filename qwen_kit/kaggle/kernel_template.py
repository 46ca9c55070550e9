"""A qwen_kit job for Kaggle, written by `make kaggle-push` (qwen_kit/kaggle/publish.py).

It runs unattended: unpacks the kit it carries, installs what the Kaggle image lacks, finds its
inputs under /kaggle/input, runs the job and writes everything to /kaggle/working (see
qwen_kit_job.json there). Edit CONFIG and push again to change the job.
"""

import base64
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile

CONFIG = json.loads(__CONFIG__)
KIT = "__SOURCE__"  # the kit's code and the files this job reads, as a base64 zip
# modules the kit imports -> the pinned pip requirement that provides them (the tested versions)
NEEDS = __NEEDS__


def unpack_kit() -> str:
    # a fresh folder of its own: a fixed name could hold a stale or planted copy that would
    # then come first on sys.path
    target = tempfile.mkdtemp(prefix="qwen_kit_src_")
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(KIT))) as z:
        z.extractall(target)
    sys.path.insert(0, target)
    return target


def install_missing() -> None:
    missing = [pkg for module, pkg in NEEDS if importlib.util.find_spec(module) is None]
    if missing:
        print("installing: " + " ".join(missing), flush=True)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *missing])


if __name__ == "__main__":
    kit = unpack_kit()
    install_missing()
    from qwen_kit.kaggle.job import run_job

    sys.exit(run_job(CONFIG, kit))
