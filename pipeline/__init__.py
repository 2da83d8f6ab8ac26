"""slimbert: fine-tune, compress and ship a BERT text classifier.

`pipeline` is the spine: the config, the artifact folders, the CLI and one module per
stage. The libraries below it (`data`, `models`, `export`, `serve`) never import it;
`core` (imported first, here as in every package) selects Keras 2 for TensorFlow.
"""

import core  # noqa: F401  (selects Keras 2 before TensorFlow is imported)

__version__ = "0.1.0"
