"""serve package of slimbert: a TF Serving-compatible REST server over an export.

`slimbert serve runs/default/export [--backend savedmodel|cpu|...]` serves one exported
target with TF Serving's REST API, so TF Serving clients work unchanged:

    serve.model     the exported target (gate check, Predictor, signatures)
    serve.rest      TF Serving's request/response JSON and its validation
    serve.batcher   batching of concurrent requests
    serve.app       the Starlette app, its routes and errors, and the uvicorn server
"""

import core  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
