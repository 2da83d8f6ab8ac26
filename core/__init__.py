"""The small base every slimbert package stands on: nothing here knows of runs or stages.

Importing it selects Keras 2 (tf_keras) for TensorFlow, because tfmot works only with
Keras 2 and TensorFlow reads the choice once, when it is first imported. Every package
of ours (`data`, `models`, `export`, `serve`, `pipeline`) imports `core` first, so any
entry point, a stage, the CLI or a notebook's `import models.bert`, passes through here.

    core.errors   the error classes a user can cause (the CLI prints them in one line)
    core.config   the base of the config dataclasses, and their canonical hash
    core.files    file hashing and gzip size
    core.assets   locating files inside the offline asset packages
    core.progress progress bars (tqdm on a terminal, log lines otherwise)
    core.timing   seconds per phase of a stage run (train, evaluate, convert, ...)
"""

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if "tensorflow" in sys.modules and os.environ["TF_USE_LEGACY_KERAS"] != "1":
    raise ImportError(
        "slimbert needs Keras 2 (tf_keras): set TF_USE_LEGACY_KERAS=1, or import "
        "slimbert before TensorFlow."
    )
