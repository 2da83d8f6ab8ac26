"""`slimbert serve`'s gRPC API on the tiny exported run, driven with TF Serving's own
stubs as a user's client would: Predict (texts and token ids), Classify, GetModelMetadata
and GetModelStatus answer as the REST API of the same server does; concurrent calls, a bad
call among good ones, every kind of bad request and its status code, the message size
limit, graceful shutdown, and `--grpc-port 0`. Three servers start together, once."""

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from data.features import INPUT_NAMES
from serve.testing import ServerError, ServerProcess

TEXTS = ["a wonderful movie with actors", "the plot was awful", "", "Ünïcödé 🎬 wonderful",
         "it was a movie", "awful awful scenes and a plot"]
PREDICT = "/v1/models/slimbert:predict"
BODY_LIMIT = 65536
MAX_INSTANCES = 8
LABELS = ["neg", "pos"]


def started(*servers: ServerProcess) -> None:
    """Wait for servers started together; a start failure fails the test."""
    try:
        for server in servers:
            server.ready()
    except ServerError as err:
        for server in servers:
            server.stop()
        raise AssertionError(str(err)) from None


@pytest.fixture(scope="module")
def servers(exported_run, tmp_path_factory):
    """The server under test (SavedModel, small limits), one whose batch window holds
    calls in flight for the shutdown test, and one without gRPC: started in parallel."""
    export_dir = exported_run / "export"
    log_dir = tmp_path_factory.mktemp("grpc")
    main = ServerProcess(export_dir, "--max-batch", "4", "--batch-wait-ms", "20",
                         "--max-instances", str(MAX_INSTANCES), "--max-body-bytes",
                         str(BODY_LIMIT), log_dir=log_dir)
    slow = ServerProcess(export_dir, "--backend", "cpu", "--max-batch", "64",
                         "--batch-wait-ms", "2000", log_dir=log_dir)
    rest_only = ServerProcess(export_dir, "--backend", "cpu", "--grpc-port", "0",
                              log_dir=log_dir)
    started(main, slow, rest_only)
    yield main, slow, rest_only
    for server in (main, slow, rest_only):  # SIGTERM to all, then wait for each
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
    for server in (main, slow, rest_only):
        assert server.stop() == 0, server.stderr()[-3000:]


@pytest.fixture(scope="module")
def server(servers) -> ServerProcess:
    return servers[0]


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as opened:
        yield opened


@pytest.fixture(scope="module")
def prediction(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def rest(server) -> np.ndarray:
    """The REST API's probabilities for TEXTS, from the same server."""
    response = httpx.post(server.url + PREDICT, json={"instances": TEXTS}, timeout=60)
    assert response.status_code == 200, response.text
    return np.array([p["probabilities"] for p in response.json()["predictions"]])


def texts_request(texts: list, signature: str = "", name: str = "slimbert",
                  **fields) -> predict_pb2.PredictRequest:
    import tensorflow as tf

    request = predict_pb2.PredictRequest(**fields)
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(texts, dtype=tf.string))
    return request


def ids_request(features: dict[str, np.ndarray]) -> predict_pb2.PredictRequest:
    """Token-id tensors, of the arrays' dtypes."""
    import tensorflow as tf

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "slimbert"
    request.model_spec.signature_name = "token_ids"
    for name, array in features.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    return request


def token_ids(export_dir: Path, texts: list[str]) -> dict[str, np.ndarray]:
    """The texts as int32 [N, max_seq_length] tensors, padded, by the export's tokenizer."""
    import tensorflow as tf

    from data.tokenizer import BertTokenizer

    tokenizer = BertTokenizer.load(export_dir / "tflite")
    return {k: v.numpy().astype(np.int32) for k, v in tokenizer(tf.constant(texts)).items()}


def check_outputs(response: predict_pb2.PredictResponse, expected: np.ndarray,
                  signature: str) -> None:
    """Every output, its dtype, shape and values; the model spec of the answer."""
    import tensorflow as tf

    outputs = {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}
    assert sorted(outputs) == ["classes", "label", "label_id", "probabilities"]
    n = len(expected)
    assert outputs["probabilities"].dtype == np.float32
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    ids = expected.argmax(-1)
    assert outputs["label_id"].dtype == np.int32 and outputs["label_id"].tolist() == \
        ids.tolist()
    assert outputs["label"].tolist() == [LABELS[i].encode() for i in ids]
    assert outputs["classes"].shape == (n, 2)
    assert outputs["classes"].tolist() == [[b"neg", b"pos"]] * n
    spec = response.model_spec
    assert (spec.name, spec.version.value, spec.signature_name) == ("slimbert", 1, signature)


# --- the same answers as REST ---

def test_predict_texts_and_token_ids_match_rest(prediction, rest, exported_run):
    for signature in ("", "serving_default"):
        check_outputs(prediction.Predict(texts_request(TEXTS, signature), timeout=60), rest,
                      "serving_default")
    request = texts_request(TEXTS)
    request.model_spec.version.value = 1
    check_outputs(prediction.Predict(request, timeout=60), rest, "serving_default")
    features = token_ids(exported_run / "export", TEXTS)
    check_outputs(prediction.Predict(ids_request(features), timeout=60), rest, "token_ids")
    # output_filter: only the outputs asked for
    response = prediction.Predict(texts_request(TEXTS, output_filter=["label", "probabilities"]),
                                  timeout=60)
    assert sorted(response.outputs) == ["label", "probabilities"]


def test_classify_matches_rest(prediction, rest):
    import tensorflow as tf

    def example(text: str) -> tf.train.Example:
        return tf.train.Example(features=tf.train.Features(feature={"text": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[text.encode()]))}))

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "slimbert"
    request.input.example_list.examples.extend(example(t) for t in TEXTS)
    response = prediction.Classify(request, timeout=60)
    classes = [[(c.label, c.score) for c in r.classes]
               for r in response.result.classifications]
    assert [[label for label, _ in row] for row in classes] == [LABELS] * len(TEXTS)
    np.testing.assert_allclose([[s for _, s in row] for row in classes], rest, atol=1e-5)
    assert response.model_spec.signature_name == "serving_default"
    # the text as a context feature, for one empty example
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "slimbert"
    context = request.input.example_list_with_context
    context.context.CopyFrom(example(TEXTS[0]))
    context.examples.add()
    response = prediction.Classify(request, timeout=60)
    np.testing.assert_allclose([c.score for c in response.result.classifications[0].classes],
                               rest[0], atol=1e-5)


def test_metadata_and_status_match_rest(prediction, channel, server):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "slimbert"
    response = prediction.GetModelMetadata(request, timeout=60)
    assert (response.model_spec.name, response.model_spec.version.value) == ("slimbert", 1)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    served = json_format.MessageToDict(signatures, preserving_proto_field_name=True,
                                       always_print_fields_with_no_presence=True)
    for signature in served["signature_def"].values():
        assert signature.pop("defaults") == {}  # a SignatureDef field REST's JSON leaves out
    rest = httpx.get(server.url + "/v1/models/slimbert/metadata").json()
    assert served == rest["metadata"]["signature_def"]

    status = model_service_pb2_grpc.ModelServiceStub(channel)
    for version in (None, 1):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "slimbert"
        if version:
            request.model_spec.version.value = version
        response = status.GetModelStatus(request, timeout=60)
        assert json_format.MessageToDict(response, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True) == \
            httpx.get(server.url + "/v1/models/slimbert").json()
        [version_status] = response.model_version_status
        assert (version_status.version, version_status.state) == (1, version_status.AVAILABLE)
        assert version_status.status.error_code == 0  # OK


# --- concurrency ---

def test_concurrent_calls_with_a_bad_one_among_them(server, rest):
    """16 threads, a channel each, in rounds batched together by the 20 ms batch wait: every
    good call gets its text's REST probabilities; the call with text bytes that are not
    UTF-8 fails alone with INVALID_ARGUMENT."""
    bad = b"bad \xff film"
    calls = [[TEXTS[i % len(TEXTS)]] if i % 8 != 5 else [bad] for i in range(48)]
    local = threading.local()

    def call(texts: list) -> predict_pb2.PredictResponse | grpc.RpcError:
        if not hasattr(local, "stub"):
            local.stub = prediction_service_pb2_grpc.PredictionServiceStub(
                grpc.insecure_channel(server.grpc_target))
        try:
            return local.stub.Predict(texts_request(texts), timeout=60)
        except grpc.RpcError as err:
            return err

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, calls))
    import tensorflow as tf

    for texts, answer in zip(calls, answers):
        if texts == [bad]:
            assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT, answer
            assert answer.details() == ("inputs['text'][0]: text is not valid UTF-8 "
                                        "(invalid start byte: byte 0xFF at position 4)")
        else:
            assert isinstance(answer, predict_pb2.PredictResponse), answer
            n = TEXTS.index(texts[0])
            np.testing.assert_allclose(tf.make_ndarray(answer.outputs["probabilities"]),
                                       rest[n:n + 1], atol=1e-5)
    health = httpx.get(server.url + "/healthz").json()["batches"]["serving_default"]
    assert health["batches"] < health["instances"]  # calls did share batches


# --- bad requests ---

def _ids(n: int = 3, **changes: list) -> dict[str, np.ndarray]:
    rows = {"input_ids": [[101] + [2307] * (n - 2) + [102]], "input_mask": [[1] * n],
            "segment_ids": [[0] * n]}
    return {name: np.array(changes.get(name, rows[name]), np.int32) for name in INPUT_NAMES}


def _spec(request, name="slimbert", version=None, label=""):
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label:  # version and version_label are a oneof: set one
        request.model_spec.version_label = label
    return request


def _no_spec() -> predict_pb2.PredictRequest:
    request = texts_request(["a"])
    request.ClearField("model_spec")
    return request


def _classify(*features: dict[str, list], signature: str = ""):
    import tensorflow as tf

    request = _spec(classification_pb2.ClassificationRequest())
    request.model_spec.signature_name = signature
    for feature in features:
        request.input.example_list.examples.add().CopyFrom(tf.train.Example(
            features=tf.train.Features(feature={key: tf.train.Feature(
                bytes_list=tf.train.BytesList(value=value)) for key, value in feature.items()})))
    return request


def _wrong_dtype() -> predict_pb2.PredictRequest:
    import tensorflow as tf

    request = texts_request(["a"])
    request.inputs["text"].CopyFrom(tf.make_tensor_proto([1, 2], dtype=tf.int32))
    return request


def _metadata(*fields: str, **spec):
    return _spec(get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields), **spec)


def _status(**spec):
    return _spec(get_model_status_pb2.GetModelStatusRequest(), **spec)


INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
BAD_CALLS = [
    # (id, method, request factory, status, part of the details)
    ("unknown-signature", "Predict", lambda: texts_request(["a"], "x"),
     grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "x" not found.'),
    ("wrong-dtype", "Predict", _wrong_dtype, INVALID,
     "inputs['text']: expected a DT_STRING tensor of shape [N], found DT_INT32"),
    ("ids-wrong-dtype", "Predict", lambda: ids_request({
        **_ids(), "input_ids": np.array([[101.0, 2307.5, 102.0]], np.float32)}), INVALID,
     "inputs['input_ids']: expected a DT_INT32 tensor of shape [N, L], found DT_FLOAT"),
    ("missing-input", "Predict", lambda: ids_request({
        k: v for k, v in _ids().items() if k != "segment_ids"}), INVALID,
     "input size does not match signature: 2!=3 len({input_ids,input_mask}) != "
     "len({input_ids,input_mask,segment_ids}). Sent extra: {}. Missing but required: "
     "{segment_ids}."),
    ("extra-input", "Predict", lambda: ids_request({**_ids(), "text": np.zeros((1, 3))}),
     INVALID, "Sent extra: {text}"),
    ("wrong-shape", "Predict", lambda: texts_request([["a", "b"]]), INVALID,
     "inputs['text']: expected shape [N], found [1, 2]"),
    ("ids-wrong-shape", "Predict", lambda: ids_request({
        k: v[0] for k, v in _ids().items()}), INVALID, "expected shape [N, L], found [3]"),
    ("empty-batch", "Predict", lambda: texts_request([]), INVALID,
     "inputs['text'] is empty: nothing to predict"),
    ("too-many-instances", "Predict", lambda: texts_request(["a"] * (MAX_INSTANCES + 1)),
     INVALID, f"inputs['text']: {MAX_INSTANCES + 1} instances in one request; at most "
              f"{MAX_INSTANCES} (the server's --max-instances)"),
    ("ids-out-of-vocabulary", "Predict", lambda: ids_request(_ids(
        input_ids=[[101, 10 ** 9, 102]])), INVALID,
     "inputs[0].input_ids: expected a list of integers in [0, "),
    ("ids-negative-segment", "Predict", lambda: ids_request(_ids(segment_ids=[[0, -1, 0]])),
     INVALID, "inputs[0].segment_ids: expected a list of integers in [0, 2)"),
    ("ids-too-long", "Predict", lambda: ids_request(_ids(33)), INVALID,
     "33 ids per instance; expected 1 to 32"),
    ("ids-no-real-token", "Predict", lambda: ids_request(_ids(input_mask=[[0, 0, 0]])),
     INVALID, "inputs[0].input_mask: no token is marked 1"),
    ("ids-shapes-differ", "Predict", lambda: ids_request(_ids(input_mask=[[1, 1]])),
     INVALID, "input_ids, input_mask and segment_ids differ in shape"),
    ("not-utf8", "Predict", lambda: texts_request([b"ok", b"caf\xe9"]), INVALID,
     "inputs['text'][1]: text is not valid UTF-8"),
    ("unknown-output", "Predict", lambda: texts_request(["a"], output_filter=["logits"]),
     INVALID, "output tensor alias not found in signature: logits Outputs expected to be "
              "in the set {classes,label,label_id,probabilities}."),
    ("duplicate-output", "Predict", lambda: texts_request(["a"], output_filter=[
        "label", "label"]), INVALID, "duplicate output tensor alias: label"),
    ("no-model-spec", "Predict", _no_spec, INVALID, "Missing ModelSpec"),
    ("unknown-model", "Predict", lambda: texts_request(["a"], name="other"), NOT_FOUND,
     "Servable not found for request: Latest(other)"),
    ("unknown-version", "Predict", lambda: _spec(texts_request(["a"]), version=2), NOT_FOUND,
     "Servable not found for request: Specific(slimbert, 2)"),
    ("version-label", "Predict", lambda: _spec(texts_request(["a"]), label="stable"),
     INVALID, "Unrecognized servable version label: stable"),
    ("classify-empty", "Classify", _classify, INVALID, "Input is empty"),
    ("classify-no-text", "Classify", lambda: _classify({"txt": [b"a"]}), INVALID,
     "input.example_list.examples[0]: expected one feature, 'text', with one bytes value; "
     "found features ['txt']"),
    ("classify-two-values", "Classify", lambda: _classify({"text": [b"a", b"b"]}), INVALID,
     "expected one feature, 'text'"),
    ("classify-not-utf8", "Classify", lambda: _classify({"text": [b"a"]}, {"text": [b"\xc3"]}),
     INVALID, "input.example_list.examples[1].text: text is not valid UTF-8"),
    ("classify-too-many", "Classify", lambda: _classify(*[{"text": [b"a"]}] * 9), INVALID,
     "at most 8"),
    ("classify-token-ids", "Classify", lambda: _classify({"text": [b"a"]},
                                                         signature="token_ids"), INVALID,
     "classify takes raw text"),
    ("classify-unknown-model", "Classify", lambda: _spec(_classify({"text": [b"a"]}), "x"),
     NOT_FOUND, "Servable not found for request: Latest(x)"),
    ("regress", "Regress", lambda: _spec(regression_pb2.RegressionRequest()), INVALID,
     "no regression signature"),
    ("metadata-no-field", "GetModelMetadata", _metadata, INVALID,
     "must specify at least one metadata_field"),
    ("metadata-unknown-field", "GetModelMetadata", lambda: _metadata("x"), INVALID,
     "Metadata field x is not supported"),
    ("metadata-unknown-model", "GetModelMetadata", lambda: _metadata("signature_def",
                                                                     name="x"),
     NOT_FOUND, "Servable not found for request: Latest(x)"),
    ("status-unknown-model", "GetModelStatus", lambda: _status(name="x"), NOT_FOUND,
     "Could not find any versions of model x"),
    ("status-unknown-version", "GetModelStatus", lambda: _status(version=3), NOT_FOUND,
     "Could not find version 3 of model slimbert"),
]


@pytest.mark.parametrize("method, request_factory, code, details",
                         [case[1:] for case in BAD_CALLS], ids=[case[0] for case in BAD_CALLS])
def test_bad_call(channel, method, request_factory, code, details):
    stub = model_service_pb2_grpc.ModelServiceStub(channel) if method == "GetModelStatus" \
        else prediction_service_pb2_grpc.PredictionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, method)(request_factory(), timeout=60)
    assert caught.value.code() == code, caught.value
    assert details in caught.value.details(), caught.value.details()


def test_message_size_limit(prediction, server):
    """Over --max-body-bytes: RESOURCE_EXHAUSTED; just under it is served."""
    under = texts_request(["wonderful " * ((BODY_LIMIT - 100) // 10)])
    assert under.ByteSize() <= BODY_LIMIT
    assert prediction.Predict(under, timeout=60).outputs["label"].string_val
    over = texts_request(["wonderful " * (BODY_LIMIT // 10)])
    with pytest.raises(grpc.RpcError) as caught:
        prediction.Predict(over, timeout=60)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
    assert httpx.get(server.url + "/healthz").status_code == 200


# --- shutdown, and no gRPC ---

def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (Linux: its socket inodes in /proc/net)."""
    inodes = {Path(f"/proc/{pid}/fd/{fd}").readlink().name[len("socket:["):-1]
              for fd in (p.name for p in Path(f"/proc/{pid}/fd").iterdir())
              if Path(f"/proc/{pid}/fd/{fd}").readlink().name.startswith("socket:")}
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # state LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_grpc_port_0_means_no_grpc(servers):
    main, slow, rest_only = servers
    assert rest_only.grpc_target is None
    assert listening_ports(rest_only.process.pid) == {rest_only.port}
    assert listening_ports(main.process.pid) == {main.port, main.grpc_port}
    assert "over gRPC" not in rest_only.stderr() and "over gRPC on" in main.stderr()
    assert httpx.get(rest_only.url + "/healthz").status_code == 200


def test_sigterm_lets_in_flight_calls_finish(servers, exported_run):
    """SIGTERM while gRPC calls wait in the 2 s batch window: they all get their answers,
    then the process exits 0 and its gRPC port is closed."""
    import tensorflow as tf

    from export.predictor import Predictor

    _, slow, _ = servers
    expected = Predictor(exported_run / "export" / "tflite" / "slimbert-cpu.tflite"
                         ).predict_texts(TEXTS[:4])
    with grpc.insecure_channel(slow.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        calls = [stub.Predict.future(texts_request([text]), timeout=60)
                 for text in TEXTS[:4]]
        deadline = time.monotonic() + 30
        while httpx.get(slow.url + "/healthz").json()["batches"]["serving_default"][
                "waiting"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not any(call.done() for call in calls)
        assert slow.stop() == 0, slow.stderr()[-3000:]
        for i, call in enumerate(calls):
            np.testing.assert_allclose(tf.make_ndarray(call.result().outputs[
                "probabilities"]), expected[i:i + 1], atol=1e-5)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(texts_request(["a"]), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
