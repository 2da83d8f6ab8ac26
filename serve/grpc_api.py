"""TF Serving's gRPC API (`tensorflow.serving.PredictionService` and `ModelService`) over
the REST API's model, batchers and request checks (`serve.app.ModelApi`,
`serve.validation`), on the same event loop: a text sent by gRPC can share a model batch
with one sent by REST, and both APIs accept and refuse the same instances.

    PredictionService/Predict           inputs {"text": DT_STRING [N]} (`serving_default`,
                                        the default) or {"input_ids", "input_mask",
                                        "segment_ids": DT_INT32 [N, L]} (`token_ids`) ->
                                        outputs probabilities DT_FLOAT [N, C], label
                                        DT_STRING [N], label_id DT_INT32 [N], classes
                                        DT_STRING [N, C] (those in output_filter, if any)
    PredictionService/Classify          tf.Examples with one bytes feature `text`
    PredictionService/GetModelMetadata  metadata_field ["signature_def"]: a SignatureDefMap
    ModelService/GetModelStatus         the version, AVAILABLE (UNLOADING once stopping)

Status codes, as TF Serving answers: NOT_FOUND for an unknown model or version;
FAILED_PRECONDITION for an unknown Predict signature; INVALID_ARGUMENT for any other bad
request (missing or extra input, wrong dtype or shape, empty batch, too many instances,
invalid token ids, text bytes that are not UTF-8, ...) with a message saying what to fix;
RESOURCE_EXHAUSTED for a message over the server's `--max-body-bytes` (gRPC's own receive
limit); UNAVAILABLE once the server is shutting down; UNIMPLEMENTED for MultiInference and
HandleReloadConfigRequest.

Example:
    >>> server = GrpcServer(api, "127.0.0.1", 8500, max_message_bytes=1 << 20)
    >>> server.bind()          # in the event loop, before the app starts
    >>> await server.start()   # once the batchers run (ModelApi.lifespan)
    >>> await server.stop(30)  # in-flight calls finish
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf import any_pb2, json_format, message
from grpc import aio
from tensorflow import make_ndarray
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

from core.errors import SlimbertError
from data.features import INPUT_NAMES
from serve.model import TEXT_SIGNATURE
from serve.validation import (
    ApiError,
    Limits,
    check_count,
    check_signature,
    check_text,
    check_token_ids,
)

if TYPE_CHECKING:
    from serve.app import ModelApi

log = logging.getLogger(__name__)

OUTPUTS = ("probabilities", "label", "label_id", "classes")
SIGNATURE_DEF = "signature_def"  # the one metadata field TF Serving knows
_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
          413: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE}


class Status(Exception):
    """A call answered with a gRPC status that no HTTP status of `ApiError` maps to."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _rpc(method: Callable[[Any, Any], Awaitable[message.Message]]
         ) -> Callable[[Any, Any, aio.ServicerContext], Awaitable[message.Message]]:
    """A servicer method whose refusals (`ApiError`, `Status`) become the call's status."""
    @functools.wraps(method)
    async def call(self: Any, request: Any, context: aio.ServicerContext) -> message.Message:
        try:
            return await method(self, request)
        except (ApiError, Status) as err:
            code = err.code if isinstance(err, Status) else \
                _CODES.get(err.status, grpc.StatusCode.INTERNAL)
            # A message may quote the request; a lone surrogate is written as its \uXXXX.
            details = err.message.encode("utf-8", "backslashreplace").decode("utf-8")
            await context.abort(code, details)
        except Exception as err:
            log.error("%s failed", method.__name__, exc_info=err)
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"internal error: {type(err).__name__}: {err}")
    return call


# --- tensors ---

def _shape(tensor: tensor_pb2.TensorProto) -> list[int] | None:
    shape = tensor.tensor_shape
    return None if shape.unknown_rank else [d.size for d in shape.dim]


def _dtype(value: int) -> str:
    return types_pb2.DataType.Name(value) if value in types_pb2.DataType.values() \
        else f"dtype {value}"


def _input(inputs: Any, name: str, dtype: int, rank: int, limits: Limits) -> np.ndarray:
    """`inputs[name]` as an array, once its dtype, rank and batch size are right (before
    decoding it, so a huge claimed shape costs nothing)."""
    where = f"inputs[{name!r}]"
    tensor = inputs[name]
    expected = "[N]" if rank == 1 else "[N, L]"
    if tensor.dtype != dtype:
        raise ApiError(400, f"{where}: expected a {_dtype(dtype)} tensor of shape "
                            f"{expected}, found {_dtype(tensor.dtype)}")
    shape = _shape(tensor)
    if shape is None or len(shape) != rank or min(shape, default=0) < 0:
        raise ApiError(400, f"{where}: expected shape {expected}, found "
                            f"{'unknown' if shape is None else shape}")
    check_count(shape[0], where, limits)
    if rank == 2 and shape[1] > limits.max_seq_length:
        raise ApiError(400, f"{where}: {shape[1]} ids per instance; expected 1 to "
                            f"{limits.max_seq_length} (the model's sequence length)")
    try:
        return make_ndarray(tensor)
    except (ValueError, TypeError) as err:
        raise ApiError(400, f"{where}: unreadable tensor ({err})") from None


def _tensor(dtype: int, shape: tuple[int, ...], **values: Any) -> tensor_pb2.TensorProto:
    """A TensorProto with its values in the typed field (as TF Serving's gRPC writes them)."""
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=dims), **values)


def output_tensors(probabilities: np.ndarray, labels: list[str], names: tuple[str, ...]
                   ) -> dict[str, tensor_pb2.TensorProto]:
    """The signature's outputs `names` for float32 probabilities [N, C]."""
    n, c = probabilities.shape
    ids = probabilities.argmax(axis=-1)
    encoded = [label.encode("utf-8") for label in labels]
    make = {
        "probabilities": lambda: _tensor(types_pb2.DT_FLOAT, (n, c), float_val=probabilities
                                         .astype(np.float32).ravel().tolist()),
        "label": lambda: _tensor(types_pb2.DT_STRING, (n,),
                                 string_val=[encoded[i] for i in ids]),
        "label_id": lambda: _tensor(types_pb2.DT_INT32, (n,), int_val=ids.tolist()),
        "classes": lambda: _tensor(types_pb2.DT_STRING, (n, c), string_val=encoded * n)}
    return {name: make[name]() for name in names}


# --- the services ---

class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """`tensorflow.serving.PredictionService` over `api`."""

    def __init__(self, api: ModelApi) -> None:
        self.api = api

    def _model_spec(self, request: Any, signature: str = "") -> model_pb2.ModelSpec:
        """The response's model spec, once the request's names the served model."""
        return _check_model_spec(self.api, request, signature)

    @_rpc
    async def Predict(self, request: predict_pb2.PredictRequest
                      ) -> predict_pb2.PredictResponse:
        api = self.api
        spec = self._model_spec(request)
        name = request.model_spec.signature_name or TEXT_SIGNATURE
        if name not in api.limits.signatures:
            raise Status(grpc.StatusCode.FAILED_PRECONDITION,
                         f'Serving signature key "{name}" not found. (this model has '
                         f"{', '.join(api.limits.signatures)})")
        spec.signature_name = name
        expected = ("text",) if name == TEXT_SIGNATURE else INPUT_NAMES
        sent = sorted(request.inputs)
        if sent != sorted(expected):
            raise ApiError(400, f"input size does not match signature: {len(sent)}!="
                                f"{len(expected)} len({{{','.join(sent)}}}) != "
                                f"len({{{','.join(sorted(expected))}}}). Sent extra: "
                                f"{{{','.join(sorted(set(sent) - set(expected)))}}}. "
                                "Missing but required: "
                                f"{{{','.join(sorted(set(expected) - set(sent)))}}}.")
        outputs = tuple(request.output_filter) or OUTPUTS
        for i, alias in enumerate(outputs):
            if alias not in OUTPUTS:
                raise ApiError(400, f"output tensor alias not found in signature: {alias} "
                                    f"Outputs expected to be in the set "
                                    f"{{{','.join(sorted(OUTPUTS))}}}.")
            if alias in outputs[:i]:
                raise ApiError(400, f"duplicate output tensor alias: {alias}")
        instances = _texts(request.inputs, api.limits) if name == TEXT_SIGNATURE \
            else _token_ids(request.inputs, api.limits)
        probabilities = await api._run(name, instances)
        return predict_pb2.PredictResponse(
            model_spec=spec, outputs=output_tensors(probabilities, api.model.labels, outputs))

    @_rpc
    async def Classify(self, request: classification_pb2.ClassificationRequest
                       ) -> classification_pb2.ClassificationResponse:
        api = self.api
        spec = self._model_spec(request)
        name = check_signature(request.model_spec.signature_name, api.limits)
        if name != TEXT_SIGNATURE:
            raise ApiError(400, f"classify takes raw text: use the {TEXT_SIGNATURE!r} "
                                "signature")
        spec.signature_name = name
        texts = _examples(request.input, api.limits)
        probabilities = await api._run(TEXT_SIGNATURE, texts)
        labels = api.model.labels
        result = classification_pb2.ClassificationResult(classifications=[
            classification_pb2.Classifications(classes=[
                classification_pb2.Class(label=label, score=float(score))
                for label, score in zip(labels, row)])
            for row in probabilities])
        return classification_pb2.ClassificationResponse(model_spec=spec, result=result)

    @_rpc
    async def Regress(self, request: Any) -> Any:
        self._model_spec(request)
        raise ApiError(400, f"model {self.api.name} is a classifier: it has no regression "
                            "signature (use Predict or Classify)")

    @_rpc
    async def MultiInference(self, request: Any) -> Any:
        raise Status(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not served; call "
                                                    "Classify or Predict")

    @_rpc
    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                               ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        spec = self._model_spec(request)
        if not request.metadata_field:
            raise ApiError(400, "GetModelMetadataRequest must specify at least one "
                                f"metadata_field (the one served: {SIGNATURE_DEF!r})")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF:
                raise ApiError(400, f"Metadata field {field} is not supported (the one "
                                    f"served: {SIGNATURE_DEF!r})")
        signatures = json_format.ParseDict(
            {"signature_def": self.api.model.signature_defs()},
            get_model_metadata_pb2.SignatureDefMap())
        packed = any_pb2.Any()
        packed.Pack(signatures)
        return get_model_metadata_pb2.GetModelMetadataResponse(
            model_spec=spec, metadata={SIGNATURE_DEF: packed})


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """`tensorflow.serving.ModelService`: the served version's status."""

    def __init__(self, api: ModelApi) -> None:
        self.api = api

    @_rpc
    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest
                             ) -> get_model_status_pb2.GetModelStatusResponse:
        api = self.api
        spec = request.model_spec
        if spec.name != api.name:
            raise ApiError(404, f"Could not find any versions of model {spec.name}")
        if spec.HasField("version") and spec.version.value != api.version:
            raise ApiError(404, f"Could not find version {spec.version.value} of model "
                                f"{spec.name}")
        state = get_model_status_pb2.ModelVersionStatus
        return get_model_status_pb2.GetModelStatusResponse(model_version_status=[state(
            version=api.version, state=state.UNLOADING if api.closing else state.AVAILABLE,
            status=status_pb2.StatusProto())])  # error_code OK, as TF Serving sets it

    @_rpc
    async def HandleReloadConfigRequest(self, request: Any) -> Any:
        raise Status(grpc.StatusCode.UNIMPLEMENTED, "this server serves one model; its "
                                                    "config cannot be reloaded")


def _check_model_spec(api: ModelApi, request: Any, signature: str) -> model_pb2.ModelSpec:
    """NOT_FOUND unless the request names the served model (and version, if any)."""
    if not request.HasField("model_spec"):
        raise ApiError(400, "Missing ModelSpec")
    spec = request.model_spec
    if spec.version_label:
        raise ApiError(400, f"Unrecognized servable version label: {spec.version_label} "
                            "(this server has no labels; give the version or none)")
    version = spec.version.value if spec.HasField("version") else None
    if spec.name != api.name or (version is not None and version != api.version):
        found = f"Specific({spec.name}, {version})" if version is not None \
            else f"Latest({spec.name})"
        raise ApiError(404, f"Servable not found for request: {found}")
    answer = model_pb2.ModelSpec(name=api.name, signature_name=signature)
    answer.version.value = api.version
    return answer


def _texts(inputs: Any, limits: Limits) -> list[str]:
    values = _input(inputs, "text", types_pb2.DT_STRING, 1, limits)
    return [check_text(value, f"inputs['text'][{i}]") for i, value in enumerate(values)]


def _token_ids(inputs: Any, limits: Limits) -> list:
    arrays = {name: _input(inputs, name, types_pb2.DT_INT32, 2, limits)
              for name in INPUT_NAMES}
    if len({array.shape for array in arrays.values()}) > 1:
        raise ApiError(400, "inputs: input_ids, input_mask and segment_ids differ in shape ("
                            + ", ".join(f"{name} {list(array.shape)}"
                                        for name, array in arrays.items()) + ")")
    rows = {name: array.tolist() for name, array in arrays.items()}
    return [check_token_ids({name: rows[name][i] for name in INPUT_NAMES},
                            f"inputs[{i}]", limits)
            for i in range(len(rows["input_ids"]))]


def _examples(request_input: Any, limits: Limits) -> list[str]:
    """The texts of a Classify request's tf.Examples (context features, if any, added to
    every example): each must have exactly one feature, `text`, one bytes value."""
    kind = request_input.WhichOneof("kind")
    if kind is None:
        raise ApiError(400, "Input is empty: set input.example_list (tf.Examples with a "
                            "bytes feature 'text')")
    examples = getattr(request_input, kind).examples
    context = dict(request_input.example_list_with_context.context.features.feature) \
        if kind == "example_list_with_context" else {}
    where = f"input.{kind}.examples"
    check_count(len(examples), where, limits)
    texts = []
    for i, example in enumerate(examples):
        features = {**context, **example.features.feature}
        value = features.get("text")
        if sorted(features) != ["text"] or value.WhichOneof("kind") != "bytes_list" \
                or len(value.bytes_list.value) != 1:
            raise ApiError(400, f"{where}[{i}]: expected one feature, 'text', with one "
                                f"bytes value; found features {sorted(features)}")
        texts.append(check_text(value.bytes_list.value[0], f"{where}[{i}].text"))
    return texts


# --- the server ---

def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else \
        f"{host}:{port}"


class GrpcServer:
    """The gRPC server of `api`, on host:port, in the event loop of the REST server.

    Args:
        api: the REST API's model, batchers and limits.
        host, port: where to listen.
        max_message_bytes: larger request messages get RESOURCE_EXHAUSTED.
    """

    def __init__(self, api: ModelApi, host: str, port: int, max_message_bytes: int) -> None:
        self.api = api
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self._server: aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Task | None = None

    def bind(self) -> int:
        """Create the server in the running event loop and bind its port (returned).

        Raises:
            SlimbertError: the address cannot be bound.
        """
        self._loop = asyncio.get_running_loop()
        self._server = aio.server(options=[
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", 0)])  # a port another server holds is an error
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.api), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelService(self.api), self._server)
        address = _address(self.host, self.port)
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError:
            raise SlimbertError(f"cannot listen for gRPC on {address} (in use, or not an "
                                "address of this machine); pick another --grpc-port, or 0 "
                                "for no gRPC") from None
        return self.port

    async def start(self) -> None:
        assert self._server is not None, "bind() first"
        await self._server.start()
        log.info("serving %s version %d over gRPC on %s", self.api.name, self.api.version,
                 _address(self.host, self.port))

    def stop_soon(self, grace: float) -> None:
        """From a signal handler: start `stop(grace)` in the event loop."""
        if self._loop is not None and self._stopping is None:
            self._loop.call_soon_threadsafe(self.stop, grace)

    def stop(self, grace: float) -> asyncio.Task:
        """Take no new calls; let in-flight calls finish (at most `grace` seconds)."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(
                self._server.stop(grace) if self._server else asyncio.sleep(0))
        return self._stopping


__all__ = ["GrpcServer", "ModelService", "PredictionService", "output_tensors"]
