"""serve package of slimbert: a TF Serving-compatible REST and gRPC server over an export.

`slimbert serve runs/default/export [--backend savedmodel|cpu|...]` serves one exported
target with TF Serving's REST API (and its gRPC API on --grpc-port), so TF Serving clients
work unchanged:

    serve.model     the exported target (gate check, Predictor, signatures)
    serve.rest      TF Serving's request/response JSON
    serve.validation  the request checks both APIs share
    serve.grpc_api  TF Serving's gRPC services over the same batchers
    serve.batcher   batching of concurrent requests
    serve.app       the Starlette app, its routes and errors, and the uvicorn server
"""

import core  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
