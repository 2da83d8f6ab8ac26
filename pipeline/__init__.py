"""slimbert: fine-tune, compress and ship a BERT text classifier.

Importing this package selects Keras 2 (tf_keras) for TensorFlow. It is the one place
that does so, and every other top-level package (`data`, `models`, `export`) imports it
first, because tfmot works only with Keras 2 and the choice is read once, when
TensorFlow is first imported.
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

__version__ = "0.1.0"
