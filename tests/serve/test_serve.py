"""`slimbert serve` on the tiny exported run: the real server in a subprocess on a loopback
port, driven over HTTP like a TF Serving client: every endpoint, every bad request, the
body limit, path-traversal URLs, batching, the `cpu` TFLite backend, graceful shutdown and
startup errors. Plus the batcher alone and the shutdown state in-process."""

import asyncio
import http.client
import json
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from core.errors import SlimbertError
from data.features import INPUT_NAMES
from export.predictor import Predictor
from serve.batcher import Batcher, ShuttingDown
from serve.model import TEXT_SIGNATURE
from serve.testing import ServerError, ServerProcess, free_port
from tests.helpers import REPO

TEXTS = ["a wonderful movie with actors", "the plot was awful", "", "Ünïcödé 🎬 wonderful",
         "it was a movie", "awful awful scenes and a plot"]
PREDICT = "/v1/models/slimbert:predict"
CLASSIFY = "/v1/models/slimbert:classify"
BODY_LIMIT = 65536
MAX_INSTANCES = 8
MAX_BATCH = 4  # below MAX_INSTANCES: a request larger than a batch runs alone


class Server(ServerProcess):
    """The server under test: a start failure fails the test."""

    def ready(self, timeout: float = 240) -> "Server":
        try:
            return super().ready(timeout)
        except ServerError as err:
            raise AssertionError(str(err)) from None


@pytest.fixture(scope="module")
def export_dir(exported_run) -> Path:
    return exported_run / "export"


@pytest.fixture(scope="module")
def server(export_dir, tmp_path_factory):
    """The SavedModel backend, with small limits so the tests can reach them."""
    started = Server(export_dir, "--max-batch", str(MAX_BATCH), "--batch-wait-ms", "20",
                     "--max-instances", str(MAX_INSTANCES), "--max-body-bytes",
                     str(BODY_LIMIT), log_dir=tmp_path_factory.mktemp("serve"))
    yield started.ready()
    assert started.stop() == 0, started.stderr()[-3000:]


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as session:
        yield session


@pytest.fixture(scope="module")
def savedmodel(export_dir) -> Predictor:
    return Predictor(export_dir / "saved_model" / "slimbert" / "1")


def token_ids(export_dir: Path, texts: list[str]) -> list[dict[str, list[int]]]:
    """The texts as unpadded token-id instances, by the tokenizer beside the TFLite files."""
    import tensorflow as tf

    from data.tokenizer import BertTokenizer

    tokenizer = BertTokenizer.load(export_dir / "tflite")
    features = {k: v.numpy() for k, v in tokenizer(tf.constant(texts)).items()}
    lengths = features["input_mask"].sum(-1)
    return [{name: features[name][i, :n].tolist() for name in INPUT_NAMES}
            for i, n in enumerate(lengths)]


def probabilities(predictions: list[dict]) -> np.ndarray:
    return np.array([p["probabilities"] for p in predictions])


def check_predictions(predictions: list[dict], expected: np.ndarray) -> None:
    """Row-format outputs: the probabilities and the SavedModel's other outputs."""
    np.testing.assert_allclose(probabilities(predictions), expected, atol=1e-5)
    for row, p in zip(predictions, expected):
        assert sorted(row) == ["classes", "label", "label_id", "probabilities"]
        assert row["classes"] == ["neg", "pos"]
        assert row["label_id"] == int(p.argmax()) and row["label"] == ["neg", "pos"][row[
            "label_id"]]


# --- status, metadata, health ---

def test_status_and_health(client):
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
        "error_code": "OK", "error_message": ""}}]}
    for path in ("/v1/models/slimbert", "/v1/models/slimbert/versions/1"):
        response = client.get(path)
        assert response.status_code == 200 and response.json() == expected
        assert response.headers["content-type"] == "application/json"
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["backend"] == "savedmodel"
    assert health["runtime"] == "tensorflow" and health["verified"] is True
    assert (health["model"], health["version"], health["max_batch"]) == ("slimbert", "1",
                                                                         MAX_BATCH)


def test_metadata_describes_the_savedmodel_signatures(client, export_dir):
    """The metadata is what TF Serving would report for our SavedModel: same signatures,
    inputs, outputs, dtypes and shapes as its saved_model.pb."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString(
        (export_dir / "saved_model" / "slimbert" / "1" / "saved_model.pb").read_bytes())
    real = saved.meta_graphs[0].signature_def

    def describe(tensors, dtype_name, dims):
        return {name: (dtype_name(info), dims(info)) for name, info in tensors.items()}

    for path in ("/v1/models/slimbert/metadata", "/v1/models/slimbert/versions/1/metadata"):
        body = client.get(path).json()
        assert body["model_spec"] == {"name": "slimbert", "signature_name": "", "version": "1"}
        served = body["metadata"]["signature_def"]["signature_def"]
        assert sorted(served) == sorted(k for k in real if not k.startswith("__"))
        for name, signature in served.items():
            assert signature["method_name"] == real[name].method_name
            for key in ("inputs", "outputs"):
                assert describe(signature[key], lambda t: t["dtype"], lambda t: [
                    int(d["size"]) for d in t["tensor_shape"]["dim"]]) == describe(
                    getattr(real[name], key), lambda t: types_pb2.DataType.Name(t.dtype),
                    lambda t: [d.size for d in t.tensor_shape.dim]), (name, key)


def test_health_and_model_requests_refuse_while_shutting_down(export_dir):
    """In-process: once a signal starts the shutdown, health says 503 and the status
    UNLOADING; after the batchers are closed, model requests get 503."""
    from starlette.testclient import TestClient

    from serve.app import create_app

    app = create_app(export_dir, max_batch=2)
    with TestClient(app) as local:
        assert local.get("/healthz").status_code == 200
        app.state.api.closing = True
        response = local.get("/healthz")
        assert response.status_code == 503 and "shutting down" in response.json()["error"]
        state = local.get("/v1/models/slimbert").json()["model_version_status"][0]["state"]
        assert state == "UNLOADING"
    response = TestClient(app).post(PREDICT, json={"instances": ["a"]})
    assert response.status_code == 503 and "shutting down" in response.json()["error"]


# --- predict and classify ---

def test_predict_row_and_columnar_forms(client, savedmodel, export_dir):
    expected = savedmodel.predict_texts(TEXTS)
    objects = [{"text": t} for t in TEXTS]
    for path in (PREDICT, "/v1/models/slimbert/versions/1:predict"):
        for instances in (TEXTS, objects, TEXTS[:3] + objects[3:]):
            response = client.post(path, json={"instances": instances})
            assert response.status_code == 200, response.text
            check_predictions(response.json()["predictions"], expected)
    for inputs in (TEXTS, {"text": TEXTS}):
        response = client.post(PREDICT, json={"signature_name": "serving_default",
                                              "inputs": inputs})
        outputs = response.json()["outputs"]
        np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
        assert outputs["label_id"] == expected.argmax(-1).tolist()
        assert outputs["label"] == [["neg", "pos"][i] for i in outputs["label_id"]]
        assert outputs["classes"] == [["neg", "pos"]] * len(TEXTS)
    # token_ids: the same texts, tokenized by the client (unpadded, of different lengths)
    rows = token_ids(export_dir, TEXTS)
    response = client.post(PREDICT, json={"signature_name": "token_ids", "instances": rows})
    check_predictions(response.json()["predictions"], expected)
    columns = {name: [row[name] for row in rows] for name in INPUT_NAMES}
    response = client.post(PREDICT, json={"signature_name": "token_ids", "inputs": columns})
    np.testing.assert_allclose(response.json()["outputs"]["probabilities"], expected,
                               atol=1e-5)


def test_classify(client, savedmodel):
    expected = savedmodel.predict_texts(TEXTS)
    for examples, context in (([{"text": t} for t in TEXTS], None),
                              ([{"text": [t]} for t in TEXTS], None),
                              ([{}], {"text": TEXTS[0]})):
        body = {"examples": examples} if context is None else {"examples": examples,
                                                               "context": context}
        response = client.post(CLASSIFY, json=body)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [[label for label, _ in r] for r in results] == [["neg", "pos"]] * len(results)
        np.testing.assert_allclose([[score for _, score in r] for r in results],
                                   expected[:len(results)], atol=1e-5)


def test_long_text_is_truncated_not_refused(client, savedmodel, export_dir):
    """A text far past the sequence length is cut by the tokenizer, as in training: it
    predicts like any other text of more than max_seq_length tokens with the same start."""
    from data.tokenizer import read_tokenizer_config

    max_seq_length = read_tokenizer_config(export_dir / "tflite")["max_seq_length"]
    long, longer = "wonderful " * (max_seq_length + 5), "wonderful " * 5000
    response = client.post(PREDICT, json={"instances": [long, longer]})
    assert response.status_code == 200, response.text
    got = probabilities(response.json()["predictions"])
    np.testing.assert_allclose(got, savedmodel.predict_texts([long, longer]), atol=1e-5)
    np.testing.assert_allclose(got[0], got[1], atol=1e-6)


def test_batching_gives_the_same_answers(client, server):
    """Many concurrent requests (batched together, several per model batch) answer as the
    same requests one at a time."""
    bodies = [{"instances": [TEXTS[i % len(TEXTS)], TEXTS[(i * 7 + 1) % len(TEXTS)]][:1 + i % 2]}
              for i in range(32)]
    alone = [client.post(PREDICT, json=body).json()["predictions"] for body in bodies]
    before = client.get("/healthz").json()["batches"]["serving_default"]
    with httpx.Client(base_url=server.url, timeout=60,
                      limits=httpx.Limits(max_connections=16)) as parallel, \
            ThreadPoolExecutor(16) as pool:
        together = list(pool.map(
            lambda body: parallel.post(PREDICT, json=body).json()["predictions"], bodies))
    for one, batched in zip(alone, together):
        np.testing.assert_allclose(probabilities(batched), probabilities(one), atol=1e-5)
        assert [p["label"] for p in batched] == [p["label"] for p in one]
    after = client.get("/healthz").json()["batches"]["serving_default"]
    instances = sum(len(body["instances"]) for body in bodies)
    assert after["instances"] - before["instances"] == instances
    assert after["batches"] - before["batches"] < len(bodies)  # requests did share batches
    # A request larger than --max-batch runs alone, in one piece.
    response = client.post(PREDICT, json={"instances": (TEXTS * 2)[:MAX_INSTANCES]})
    assert len(response.json()["predictions"]) == MAX_INSTANCES


# --- bad requests ---

def _ids(n: int = 3, **changes) -> dict:
    row = {"input_ids": [101] + [2307] * (n - 2) + [102], "input_mask": [1] * n,
           "segment_ids": [0] * n}
    return {"signature_name": "token_ids", "instances": [{**row, **changes}]}


DEEP = b"[" * 30000 + b"]" * 30000
BAD_REQUESTS = [
    # (id, method, path, body (JSON value or raw bytes), status, part of the error)
    ("malformed-json", "POST", PREDICT, b'{"instances": [', 400, "JSON Parse error"),
    ("not-utf8", "POST", PREDICT, b'{"instances": ["caf\xe9"]}', 400, "JSON Parse error"),
    ("deeply-nested", "POST", PREDICT, DEEP, 400, "JSON Parse error"),
    ("not-an-object", "POST", PREDICT, ["a"], 400, "must be a JSON object, found list"),
    ("unknown-key", "POST", PREDICT, {"instance": ["a"]}, 400, "unknown key 'instance'"),
    ("no-instances", "POST", PREDICT, {}, 400, "Missing 'inputs' or 'instances' key"),
    ("both-forms", "POST", PREDICT, {"instances": ["a"], "inputs": ["a"]}, 400,
     "only one of 'inputs' or 'instances'"),
    ("instances-not-list", "POST", PREDICT, {"instances": "a"}, 400,
     "'instances' must be a list, found string"),
    ("empty-batch", "POST", PREDICT, {"instances": []}, 400, "'instances' is empty"),
    ("empty-columns", "POST", PREDICT, {"inputs": {"text": []}}, 400, "'inputs' is empty"),
    ("oversized-batch", "POST", PREDICT, {"instances": ["a"] * (MAX_INSTANCES + 1)}, 400,
     f"at most {MAX_INSTANCES}"),
    ("number-instance", "POST", PREDICT, {"instances": ["a", 3]}, 400,
     "instances[1]: expected a string"),
    ("null-instance", "POST", PREDICT, {"instances": [None]}, 400, "found null"),
    # JSON's "\ud800" escape is valid JSON but a lone surrogate, not Unicode
    ("lone-surrogate", "POST", PREDICT, {"instances": ["ok", "bad \ud800 film"]}, 400,
     "instances[1]: text is not valid Unicode (lone surrogate U+D800 at position 4)"),
    ("lone-surrogate-object", "POST", PREDICT, {"instances": [{"text": "\udfff"}]}, 400,
     "instances[0]: text is not valid Unicode (lone surrogate U+DFFF at position 0)"),
    ("lone-surrogate-columns", "POST", PREDICT, {"inputs": {"text": ["a", "b\udc00"]}},
     400, "inputs[1]: text is not valid Unicode (lone surrogate U+DC00 at position 1)"),
    ("lone-surrogate-signature", "POST", PREDICT, {"signature_name": "\ud800",
                                                   "instances": ["a"]}, 400,
     'Serving signature name: "\\ud800" not found'),
    ("wrong-field", "POST", PREDICT, {"instances": [{"txt": "a"}]}, 400,
     "instances[0]: expected a string or"),
    ("columns-not-list", "POST", PREDICT, {"inputs": {"text": "a"}}, 400,
     "'inputs' must be a list"),
    ("unknown-signature", "POST", PREDICT, {"signature_name": "x", "instances": ["a"]}, 400,
     'Serving signature name: "x" not found'),
    ("signature-not-string", "POST", PREDICT, {"signature_name": 1, "instances": ["a"]},
     400, "'signature_name' must be a string"),
    ("ids-missing-field", "POST", PREDICT, {"signature_name": "token_ids", "instances": [
        {"input_ids": [101, 102], "input_mask": [1, 1]}]}, 400,
     "expected an object with input_ids, input_mask, segment_ids"),
    ("ids-text-instance", "POST", PREDICT, {"signature_name": "token_ids",
                                            "instances": ["a"]}, 400, "found string"),
    ("ids-float", "POST", PREDICT, _ids(input_ids=[101, 2307.5, 102]), 400,
     "instances[0].input_ids: expected a list of integers"),
    ("ids-bool", "POST", PREDICT, _ids(input_mask=[True, True, True]), 400,
     "input_mask: expected a list of integers in [0, 2)"),
    ("ids-out-of-vocabulary", "POST", PREDICT, _ids(input_ids=[101, 10 ** 9, 102]), 400,
     "input_ids: expected a list of integers in [0, "),
    ("ids-negative-segment", "POST", PREDICT, _ids(segment_ids=[0, -1, 0]), 400,
     "segment_ids: expected a list of integers in [0, 2)"),
    ("ids-lengths-differ", "POST", PREDICT, _ids(input_mask=[1, 1]), 400,
     "differ in length"),
    ("ids-too-long", "POST", PREDICT, _ids(33), 400, "33 ids; expected 1 to 32"),
    ("ids-empty", "POST", PREDICT, _ids(input_ids=[], input_mask=[], segment_ids=[]), 400,
     "0 ids; expected 1 to 32"),
    ("ids-no-real-token", "POST", PREDICT, _ids(input_mask=[0, 0, 0]), 400,
     "no token is marked 1"),
    ("ids-columns-ragged", "POST", PREDICT, {"signature_name": "token_ids", "inputs": {
        "input_ids": [[101, 102]], "input_mask": [[1, 1], [1, 1]],
        "segment_ids": [[0, 0]]}}, 400, "same number of rows"),
    ("classify-unknown-key", "POST", CLASSIFY, {"instances": ["a"]}, 400,
     "unknown key 'instances'"),
    ("classify-no-examples", "POST", CLASSIFY, {}, 400, "Missing 'examples' key"),
    ("classify-empty", "POST", CLASSIFY, {"examples": []}, 400, "'examples' is empty"),
    ("classify-string-example", "POST", CLASSIFY, {"examples": ["a"]}, 400,
     "examples[0]: expected an object, found string"),
    ("classify-extra-feature", "POST", CLASSIFY, {"examples": [{"text": "a", "x": 1}]}, 400,
     "examples[0]: expected {\"text\": string}"),
    ("classify-number-text", "POST", CLASSIFY, {"examples": [{"text": 1}]}, 400,
     "examples[0]: expected"),
    ("classify-lone-surrogate", "POST", CLASSIFY, {"examples": [{"text": "x"}, {"text": [
        "\ud83c"]}]}, 400, "examples[1]: text is not valid Unicode (lone surrogate U+D83C"),
    ("classify-lone-surrogate-context", "POST", CLASSIFY, {"examples": [{}], "context": {
        "text": "\udbff!"}}, 400, "examples[0]: text is not valid Unicode"),
    ("classify-bad-context", "POST", CLASSIFY, {"examples": [{"text": "a"}], "context": []},
     400, "'context' must be an object"),
    ("classify-token-ids", "POST", CLASSIFY, {"signature_name": "token_ids",
                                              "examples": [{"text": "a"}]}, 400,
     "classify takes raw text"),
    ("regress", "POST", "/v1/models/slimbert:regress", {"examples": [{"text": "a"}]}, 400,
     "no regression signature"),
    ("unknown-model", "POST", "/v1/models/other:predict", {"instances": ["a"]}, 404,
     "Servable not found for request: Latest(other)"),
    ("unknown-version", "POST", "/v1/models/slimbert/versions/2:predict",
     {"instances": ["a"]}, 404, "Servable not found for request: Specific(slimbert, 2)"),
    ("unknown-model-status", "GET", "/v1/models/other", None, 404, "Latest(other)"),
    ("unknown-version-status", "GET", "/v1/models/slimbert/versions/7", None, 404,
     "Specific(slimbert, 7)"),
    ("unknown-version-metadata", "GET", "/v1/models/slimbert/versions/7/metadata", None,
     404, "Specific(slimbert, 7)"),
    ("version-not-a-number", "GET", "/v1/models/slimbert/versions/latest", None, 404,
     "Malformed request"),
    ("unknown-verb", "POST", "/v1/models/slimbert:explain", {}, 404, "Malformed request"),
    ("no-model-name", "GET", "/v1/models/", None, 404, "Malformed request"),
    ("unknown-path", "GET", "/v2/models/slimbert", None, 404, "Not Found"),
    ("get-predict", "GET", PREDICT, None, 405, "GET is not allowed here; use POST"),
    ("post-status", "POST", "/v1/models/slimbert", {}, 405, "use GET"),
    ("put-predict", "PUT", PREDICT, {"instances": ["a"]}, 405, "Method Not Allowed"),
    ("delete-health", "DELETE", "/healthz", None, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("method, path, body, status, message",
                         [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request(client, method, path, body, status, message):
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    response = client.request(method, path, content=content)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"], response.json()


def raw_request(server: Server, request: bytes, timeout: float = 30) -> bytes:
    """Send bytes as they are (no URL normalization) and read the whole response."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(rest) >= length:
                    return head + b"\r\n\r\n" + rest[:length]
    return b"".join(chunks)


def test_path_traversal_urls_are_not_found(server):
    """A model name or version is only compared with the served one, never used as a
    path: URLs that look like paths out of the export get 404 and no file content."""
    for method, path in (("POST", "/v1/models/..%2F..%2Fetc%2Fpasswd:predict"),
                         ("POST", "/v1/models/../../etc/passwd:predict"),
                         ("GET", "/v1/models/slimbert/versions/../../x"),
                         ("GET", "/v1/models/slimbert/versions/1/../../../../etc/passwd"),
                         ("GET", "/v1/models/%2e%2e/metadata"),
                         ("GET", "/v1/models/slimbert/versions/1%2F..%2F..%2Fmanifest.json"),
                         ("GET", "/../../etc/passwd"),
                         ("GET", "/v1/models/slimbert/saved_model.pb")):
        response = raw_request(server, (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            "\r\nContent-Length: 17\r\nConnection: close\r\n\r\n"
            '{"instances": []}').encode())
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404"), (path, response[:300])
        assert "error" in json.loads(body)
        assert b"root:" not in body and b"sha256" not in body and len(body) < 300


def test_body_size_limit(server, client):
    """Over --max-body-bytes: 413 from Content-Length before the body is read, and for a
    chunked body as soon as it passes the limit; just under it is served."""
    under = json.dumps({"instances": ["wonderful " * ((BODY_LIMIT - 100) // 10)]}).encode()
    assert len(under) <= BODY_LIMIT
    assert client.post(PREDICT, content=under).status_code == 200
    over = json.dumps({"instances": ["wonderful " * (BODY_LIMIT // 10)]}).encode()
    response = client.post(PREDICT, content=over)
    assert response.status_code == 413
    assert f"larger than {BODY_LIMIT} bytes" in response.json()["error"]
    # A huge Content-Length and no body: answered at once, nothing waits for the bytes.
    response = raw_request(server, (
        f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000000000\r\n\r\n").encode(), timeout=10)
    assert response.startswith(b"HTTP/1.1 413") and b'"error"' in response
    # Chunked: no Content-Length to refuse up front.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", PREDICT, body=(over[i:i + 8192]
                                              for i in range(0, len(over), 8192)),
                       headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "larger than" in json.loads(response.read())["error"]
    connection.close()
    assert client.get("/healthz").status_code == 200


def test_a_bad_request_fails_only_itself(server, savedmodel):
    """Issue #19's case: rounds of concurrent good requests with a lone-surrogate text among
    them (batched together by the 20 ms batch wait): every good request gets its
    predictions, the bad one its 400."""
    expected = savedmodel.predict_texts(TEXTS)
    good = [{"instances": [TEXTS[i % len(TEXTS)]]} for i in range(10)]
    bad = {"instances": ["bad \ud800 film"]}
    bodies = [body for _ in range(3) for body in good[:5] + [bad] + good[5:]]
    with httpx.Client(base_url=server.url, timeout=60,
                      limits=httpx.Limits(max_connections=11)) as parallel, \
            ThreadPoolExecutor(11) as pool:
        responses = list(pool.map(  # json.dumps: "\ud800" as JSON's ASCII escape
            lambda body: parallel.post(PREDICT, content=json.dumps(body).encode()), bodies))
    for i, (body, response) in enumerate(zip(bodies, responses)):
        if body is bad:
            assert response.status_code == 400, response.text
            assert response.json()["error"] == ("instances[0]: text is not valid Unicode "
                                                "(lone surrogate U+D800 at position 4)")
        else:
            assert response.status_code == 200, (i, response.text)
            n = TEXTS.index(body["instances"][0])
            check_predictions(response.json()["predictions"], expected[n:n + 1])


def read_until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (a reset also ends it)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def test_read_timeout_drops_a_stalled_body(export_dir, tmp_path):
    """A client that sends the headers and part of the body, then stalls, gets 408 and
    its connection closed after --read-timeout, and so does one that trickles its body a
    byte at a time; other clients are answered meanwhile."""
    from serve.app import create_app

    with pytest.raises(SlimbertError, match="--read-timeout must be more than 0"):
        create_app(export_dir, read_timeout=0)
    timed = Server(export_dir, "--backend", "cpu", "--read-timeout", "1",
                   log_dir=tmp_path).ready()
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            "application/json\r\nContent-Length: 1000\r\n\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", timed.port), timeout=60) as stalled, \
                socket.create_connection(("127.0.0.1", timed.port), timeout=60) as trickling:
            stalled.sendall(head + b'{"instances": ["a wonder')
            trickling.sendall(head)
            with httpx.Client(base_url=timed.url, timeout=60) as session:
                for text in TEXTS:
                    response = session.post(PREDICT, json={"instances": [text]})
                    assert response.status_code == 200, response.text
            for _ in range(1000):  # 50 s of bytes; the body needs 1000
                if select.select([trickling], [], [], 0.05)[0]:
                    break  # the server answered
                try:
                    trickling.sendall(b" ")
                except OSError:  # or closed the connection
                    break
            else:
                raise AssertionError("the trickling client was never dropped")
            trickled = read_until_closed(trickling)
            answer = read_until_closed(stalled)
        assert trickled == b"" or trickled.startswith(b"HTTP/1.1 408"), trickled[:300]
        status, _, body = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"connection: close" in status.lower()
        assert json.loads(body)["error"] == ("the request body did not arrive within 1 s (the "
                                             "server's --read-timeout)")
        assert httpx.get(timed.url + "/healthz").status_code == 200
    finally:
        assert timed.stop() == 0, timed.stderr()[-3000:]


# --- the cpu TFLite backend ---

def test_cpu_tflite_backend(export_dir, tmp_path):
    path = export_dir / "tflite" / "slimbert-cpu.tflite"
    expected = Predictor(path).predict_texts(TEXTS)
    cpu = Server(export_dir, "--backend", "cpu", log_dir=tmp_path).ready()
    try:
        with httpx.Client(base_url=cpu.url, timeout=60) as session:
            health = session.get("/healthz").json()
            assert (health["backend"], health["runtime"]) == ("cpu", "ai_edge_litert")
            assert health["path"] == str(path.resolve())
            response = session.post(PREDICT, json={"instances": TEXTS})
            check_predictions(response.json()["predictions"], expected)
            rows = token_ids(export_dir, TEXTS)
            response = session.post(PREDICT, json={"signature_name": "token_ids",
                                                   "instances": rows})
            check_predictions(response.json()["predictions"], expected)
            results = session.post(CLASSIFY, json={"examples": [{"text": t} for t in TEXTS]}
                                   ).json()["results"]
            np.testing.assert_allclose([[s for _, s in r] for r in results], expected,
                                       atol=1e-5)
            metadata = session.get("/v1/models/slimbert/metadata").json()
            assert sorted(metadata["metadata"]["signature_def"]["signature_def"]) == [
                "serving_default", "token_ids"]
    finally:
        assert cpu.stop() == 0


# --- startup and shutdown ---

def run_serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "serve", *args,
                           "--port", str(free_port())], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_startup_errors(export_dir, tmp_path):
    """A missing or incomplete export, a backend not exported, a target that failed the
    gate: one `slimbert: error:` line and exit 2, before any model loads."""
    copy = shutil.copytree(export_dir, tmp_path / "export")
    path = copy / "verification.json"
    verification = json.loads(path.read_text())
    verification["targets"]["cpu"]["passed"] = False
    del verification["targets"]["gpu"]
    path.write_text(json.dumps(verification))
    for args, message in (
            ([str(tmp_path / "missing")], "does not exist"),
            ([str(export_dir.parent)], f"no verification.json (the export gate's results); "
                                       f"did you mean {export_dir}?"),
            ([str(copy), "--backend", "gpu"], "has no 'gpu' export"),
            ([str(copy), "--backend", "cpu"], "'cpu' export in"),
            ([str(copy), "--max-batch", "0"], "must be at least 1")):
        result = run_serve(*args)
        assert result.returncode == 2, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("slimbert") and "error:" in last and message in last, last
    assert "failed the export gate" in run_serve(str(copy), "--backend", "cpu").stderr


def test_forced_unverified_target_serves_and_shuts_down_gracefully(export_dir, tmp_path):
    """--force serves a target that failed the gate. SIGTERM while requests wait in the
    batcher: they all complete, the port closes and the process exits 0."""
    copy = shutil.copytree(export_dir, tmp_path / "export")
    path = copy / "verification.json"
    verification = json.loads(path.read_text())
    verification["targets"]["cpu"]["passed"] = False
    path.write_text(json.dumps(verification))
    forced = Server(copy, "--backend", "cpu", "--force", "--max-batch", "64",
                    "--batch-wait-ms", "3000", log_dir=tmp_path).ready()
    assert httpx.get(forced.url + "/healthz").json()["verified"] is False
    results: dict[int, httpx.Response] = {}

    def request(i: int) -> None:
        results[i] = httpx.post(forced.url + PREDICT, json={"instances": [TEXTS[i]]},
                                timeout=60)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while httpx.get(forced.url + "/healthz").json()["batches"]["serving_default"][
            "waiting"] < 4:  # all four wait in the 3 s batch window
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not results
    assert forced.stop() == 0, forced.stderr()[-3000:]
    for thread in threads:
        thread.join()
    expected = Predictor(copy / "tflite" / "slimbert-cpu.tflite").predict_texts(TEXTS[:4])
    for i in range(4):
        assert results[i].status_code == 200, results[i].text
        check_predictions(results[i].json()["predictions"], expected[i:i + 1])
    assert "SIGTERM: finishing in-flight requests" in forced.stderr()
    with pytest.raises(httpx.ConnectError):
        httpx.get(forced.url + "/healthz")


# --- the batcher alone ---

def test_batcher():
    """Requests are packed up to max_batch in arrival order and never split; each gets its
    slice; a failed batch reruns request by request, so the error reaches only the request
    that fails alone; close() drains, then refuses."""
    calls = []

    def run(items):
        calls.append(list(items))
        if "boom" in items:
            raise ValueError("boom")
        return np.array([len(item) for item in items])

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run, max_batch=4, wait_seconds=0.05, executor=pool)
            batcher.start()
            results = await asyncio.gather(
                batcher.submit(["a"]), batcher.submit(["bb", "ccc"]),
                batcher.submit(["dddd"] * 3), batcher.submit(["e"]))
            assert [r.tolist() for r in results] == [[1], [2, 3], [4, 4, 4], [1]]
            assert calls == [["a", "bb", "ccc"], ["dddd", "dddd", "dddd", "e"]]
            assert (await batcher.submit(["x"] * 6)).tolist() == [1] * 6
            assert calls[-1] == ["x"] * 6
            failed = await asyncio.gather(batcher.submit(["boom"]), batcher.submit(["ok"]),
                                          return_exceptions=True)
            assert isinstance(failed[0], ValueError) and failed[1].tolist() == [2]
            assert calls[-3:] == [["boom", "ok"], ["boom"], ["ok"]]
            queued = asyncio.ensure_future(batcher.submit(["late"]))
            await asyncio.sleep(0)
            await batcher.close()
            assert (await queued).tolist() == [4]
            with pytest.raises(ShuttingDown):
                await batcher.submit(["after"])
            assert (batcher.batches, batcher.instances) == (7, 18)  # model runs

    asyncio.run(scenario())


def test_a_request_failing_in_the_model_fails_only_itself(export_dir):
    """Should a request pass parsing and still fail in the model, its batch reruns request
    by request: only that request gets an error, a 500. In-process on the real `cpu`
    model, with a lone-surrogate text submitted past the parser (which refuses it); the
    requests batched with it get the probabilities they get alone."""
    from starlette.testclient import TestClient

    from serve.app import create_app
    from serve.rest import ApiError

    app = create_app(export_dir, backend="cpu", max_batch=8, batch_wait_ms=50)
    api = app.state.api
    expected = api.model.run(TEXT_SIGNATURE, TEXTS[:3])

    async def together():
        return await asyncio.gather(
            api._run(TEXT_SIGNATURE, TEXTS[:1]), api._run(TEXT_SIGNATURE, ["bad \ud800 film"]),
            api._run(TEXT_SIGNATURE, TEXTS[1:3]), return_exceptions=True)

    with TestClient(app) as local:
        results = local.portal.call(together)
        batcher = api.batchers[TEXT_SIGNATURE]
        # the batch of all four instances, then each request alone
        assert (batcher.batches, batcher.instances) == (4, 8)
        assert local.get("/healthz").status_code == 200
    assert isinstance(results[1], ApiError) and results[1].status == 500, results[1]
    assert "the model failed on this request" in results[1].message
    assert "lone surrogate U+D800" in results[1].message
    np.testing.assert_allclose(results[0], expected[:1], atol=1e-6)
    np.testing.assert_allclose(results[2], expected[1:], atol=1e-6)
