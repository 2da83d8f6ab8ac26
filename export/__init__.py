"""export package of slimbert."""

import core  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
