"""export package of slimbert."""

import pipeline  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
