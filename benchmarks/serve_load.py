"""Load test of `slimbert serve`: N concurrent clients against the real server.

For each backend (default: the SavedModel and the `cpu` TFLite model) the server runs in a
subprocess on a free loopback port, once per configuration: with request batching
(`--max-batch 32`) for each `--batch-wait-ms` given (default: 0, the server's default, where
batches form from what arrives while the model is busy; and 5), and without batching
(`--max-batch 1`). N client threads (httpx, one connection each) send one-text predict
requests, the test split's real texts in turn, until --requests are answered or --seconds
have passed (after a short untimed warm-up). Prints requests/s, p50/p99 latency, errors
(anything but a 200 with one prediction) and the mean model batch per configuration, and
the batching gain: requests/s with batching over without.

The grpc run (`--runs grpc`) measures the same configurations over TF Serving's gRPC API,
on the same server right after the REST load: N client threads, a gRPC channel each, send
PredictionService/Predict calls with a one-text DT_STRING `text` tensor (an error is
anything but an OK status with one label). Its rows (`"api": "grpc"`) print beside the
REST rows (`"api": "rest"`); the batching gains are computed per API.

Client and server share this machine's cores, so absolute figures move with whatever else
runs (the JSON records the load average before the run); the gains are measured in one
run.

The mixed run (per backend, `--max-batch 32`, `--batch-wait-ms` --mixed-wait-ms: long
enough for a round's requests to share batches) sends rounds of one bad request and N
concurrent good ones, going through every malformed class of the server's error list (docs/
deployment.md, "Errors and limits": bad JSON, unknown key, wrong type, empty batch, too
many instances, invalid token ids, unknown signature, `:regress`, unknown model, version
or path, wrong method, body too large) and invalid Unicode, --mixed-rounds times each.
It prints the good requests that failed (anything but a 200 with the prediction the same
text gets alone; must be 0) and the statuses each bad class got against the one
expected.

    python benchmarks/serve_load.py runs/default/export [--prepared runs/default/prepare]
        [--backends savedmodel cpu] [--runs throughput grpc mixed] [--clients 8]
        [--requests 400] [--seconds 120] [--max-batch 32] [--batch-wait-ms 0 5]
        [--mixed-rounds 3] [--mixed-wait-ms 20] [--json benchmarks/results/serve_load.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import numpy as np

from data.input import read_split
from pipeline.artifacts import machine_info
from serve.testing import ServerError, ServerProcess

PREDICT = "/v1/models/{name}:predict"
MAX_INSTANCES = 256  # the server's --max-instances in the mixed run
MAX_BODY_BYTES = 1 << 20  # and its --max-body-bytes


def _ids(**changes: list[int]) -> dict:
    row = {"input_ids": [101, 2307, 102], "input_mask": [1, 1, 1], "segment_ids": [0, 0, 0]}
    return {"signature_name": "token_ids", "instances": [{**row, **changes}]}


# The mixed run's bad requests: (class, method, URL path after /v1/models/ ({name}: the
# served model) or from / if it starts with "/", JSON body or raw bytes, expected status).
BAD_REQUESTS = [
    ("malformed-json", "POST", "{name}:predict", b'{"instances": ["a fine', 400),
    ("unknown-key", "POST", "{name}:predict", {"instance": ["a fine film"]}, 400),
    ("wrong-type", "POST", "{name}:predict", {"instances": ["a fine film", 3]}, 400),
    ("empty-batch", "POST", "{name}:predict", {"instances": []}, 400),
    ("too-many-instances", "POST", "{name}:predict",
     {"instances": ["a fine film"] * (MAX_INSTANCES + 1)}, 400),
    ("invalid-token-ids", "POST", "{name}:predict", _ids(input_ids=[101, 10 ** 9, 102]), 400),
    ("ids-lengths-differ", "POST", "{name}:predict", _ids(input_mask=[1, 1]), 400),
    ("unknown-signature", "POST", "{name}:predict",
     {"signature_name": "x", "instances": ["a fine film"]}, 400),
    ("regress", "POST", "{name}:regress", {"examples": [{"text": "a fine film"}]}, 400),
    ("unknown-model", "POST", "other:predict", {"instances": ["a fine film"]}, 404),
    ("unknown-version", "POST", "{name}/versions/9:predict",
     {"instances": ["a fine film"]}, 404),
    ("unknown-path", "GET", "/v2/models/{name}", None, 404),
    ("wrong-method", "GET", "{name}:predict", None, 405),
    ("body-too-large", "POST", "{name}:predict",
     {"instances": ["wonderful " * (MAX_BODY_BYTES // 10)]}, 413),
    # JSON's "\ud800" escape: valid JSON, but a lone surrogate, not Unicode
    ("invalid-unicode", "POST", "{name}:predict", {"instances": ["bad \ud800 film"]}, 400),
    ("invalid-unicode-classify", "POST", "{name}:classify",
     {"examples": [{"text": "\udfff"}]}, 400),
    ("invalid-unicode-signature", "POST", "{name}:predict",
     {"signature_name": "\ud800", "instances": ["a fine film"]}, 400),
]


def split_texts(prepared: Path) -> list[str]:
    """The test split's texts, as `slimbert export` verifies on them."""
    return [row["text"].decode("utf-8") for row in
            read_split(prepared, "test", with_text=True).as_numpy_iterator()]


# A client: a context manager (one connection or channel) giving a function that sends
# one text and says whether the answer was good.
Client = Callable[[], AbstractContextManager[Callable[[str], bool]]]


def rest_client(url: str) -> Client:
    """Predict over REST (httpx, one keep-alive connection)."""
    @contextmanager
    def client() -> Iterator[Callable[[str], bool]]:
        with httpx.Client(timeout=60) as session:
            def predict(text: str) -> bool:
                try:
                    response = session.post(url, json={"instances": [text]})
                    return response.status_code == 200 and \
                        len(response.json()["predictions"]) == 1
                except (httpx.HTTPError, ValueError, KeyError):
                    return False
            yield predict
    return client


def grpc_client(target: str, name: str) -> Client:
    """PredictionService/Predict over gRPC (one channel), a DT_STRING [1] `text` tensor."""
    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(
        size=1)])

    @contextmanager
    def client() -> Iterator[Callable[[str], bool]]:
        with grpc.insecure_channel(target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

            def predict(text: str) -> bool:
                request = predict_pb2.PredictRequest()
                request.model_spec.name = name
                request.inputs["text"].CopyFrom(tensor_pb2.TensorProto(
                    dtype=types_pb2.DT_STRING, tensor_shape=shape,
                    string_val=[text.encode("utf-8")]))
                try:
                    response = stub.Predict(request, timeout=60)
                except grpc.RpcError:
                    return False
                return len(response.outputs["label"].string_val) == 1
            yield predict
    return client


def load(client: Client, texts: list[str], clients: int, requests: int, seconds: float
         ) -> tuple[list[float], int, float]:
    """`clients` threads sending one-text requests until `requests` are sent or `seconds`
    pass. Returns (latencies in seconds of the good answers, errors, wall seconds)."""
    lock = threading.Lock()
    sent = 0
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    def next_text() -> str | None:
        nonlocal sent
        with lock:
            if sent >= requests or time.monotonic() >= deadline:
                return None
            sent += 1
            return texts[sent % len(texts)]

    def run() -> None:
        nonlocal errors
        with client() as predict:
            while (text := next_text()) is not None:
                start = time.perf_counter()
                good = predict(text)
                elapsed = time.perf_counter() - start
                with lock:
                    if good:
                        latencies.append(elapsed)
                    else:
                        errors += 1

    threads = [threading.Thread(target=run) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - start


def run_config(export_dir: Path, backend: str, max_batch: int, wait_ms: float,
               apis: list[str], args: argparse.Namespace, texts: list[str], log_dir: Path
               ) -> list[dict]:
    """One server of this configuration, loaded over each of `apis` (`rest`, `grpc`) in
    turn; a row per API."""
    server = ServerProcess(export_dir, "--backend", backend, "--max-batch", str(max_batch),
                           "--batch-wait-ms", str(wait_ms), log_dir=log_dir)
    rows = []
    try:
        try:
            server.ready(timeout=300)
        except ServerError as err:
            raise SystemExit(str(err)) from None
        health = httpx.get(server.url + "/healthz", timeout=30).json()
        for api in apis:
            client = rest_client(server.url + PREDICT.format(name=health["model"])) \
                if api == "rest" else grpc_client(server.grpc_target, health["model"])
            load(client, texts[::-1], args.clients, 2 * args.clients, args.seconds)  # warm-up
            before = httpx.get(server.url + "/healthz").json()["batches"]["serving_default"]
            latencies, errors, wall = load(client, texts, args.clients, args.requests,
                                           args.seconds)
            after = httpx.get(server.url + "/healthz").json()["batches"]["serving_default"]
            answered = len(latencies)
            batches = after["batches"] - before["batches"]
            rows.append({
                "api": api, "backend": backend, "max_batch": max_batch,
                "batch_wait_ms": wait_ms, "runtime": health["runtime"],
                "requests": answered + errors, "errors": errors, "seconds": round(wall, 3),
                "requests_per_second": answered / wall,
                "p50_ms": float(np.percentile(latencies, 50) * 1000) if latencies else None,
                "p99_ms": float(np.percentile(latencies, 99) * 1000) if latencies else None,
                "mean_batch": (after["instances"] - before["instances"]) / batches
                if batches else 0})
    finally:
        exit_code = server.stop()
    return [{**row, "server_exit_code": exit_code} for row in rows]


def _bad_request(session: httpx.Client, base_url: str, name: str, method: str, path: str,
                 body: dict | bytes | None) -> int | str:
    """One bad request; its status, or the transport error."""
    url = base_url + (path.format(name=name) if path.startswith("/")
                      else "/v1/models/" + path.format(name=name))
    content = body if isinstance(body, bytes) or body is None else \
        json.dumps(body).encode()  # ensure_ascii: a lone surrogate as JSON's \uXXXX escape
    try:
        return session.request(method, url, content=content).status_code
    except httpx.HTTPError as err:
        return type(err).__name__


def mixed_load(base_url: str, name: str, texts: list[str], clients: int, rounds: int
               ) -> dict:
    """`rounds` rounds per bad class of one bad request and `clients` concurrent good
    one-text requests (one keep-alive connection per client thread). A good request fails
    unless it gets 200 and the probabilities its text gets alone."""
    url = base_url + PREDICT.format(name=name)
    texts = texts[:clients * 8]
    with httpx.Client(timeout=60) as session:  # each text alone, before the load
        alone = {text: session.post(url, json={"instances": [text]}).json()[
            "predictions"][0]["probabilities"] for text in dict.fromkeys(texts)}
    local = threading.local()
    sessions: list[httpx.Client] = []

    def session() -> httpx.Client:
        if not hasattr(local, "session"):
            local.session = httpx.Client(timeout=60)
            sessions.append(local.session)
        return local.session

    def good(text: str) -> bool:
        try:
            response = session().post(url, json={"instances": [text]})
            got = response.json()["predictions"] if response.status_code == 200 else []
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return len(got) == 1 and np.allclose(got[0]["probabilities"], alone[text],
                                             atol=1e-5)

    schedule = [case for _ in range(rounds) for case in BAD_REQUESTS]
    statuses: dict[str, Counter] = {case[0]: Counter() for case in BAD_REQUESTS}
    good_sent = good_failed = 0
    start = time.perf_counter()
    with ThreadPoolExecutor(clients + 1) as pool:
        for i, (label, method, path, body, _) in enumerate(schedule):
            batch = [texts[(i * clients + j) % len(texts)] for j in range(clients)]
            bad = pool.submit(lambda *args: _bad_request(session(), *args), base_url, name,
                              method, path, body)
            goods = [pool.submit(good, text) for text in batch]
            statuses[label][bad.result()] += 1
            results = [future.result() for future in goods]
            good_sent += len(results)
            good_failed += results.count(False)
    for session in sessions:
        session.close()
    return {"good_requests": good_sent, "good_failed": good_failed,
            "bad_requests": len(schedule), "seconds": round(time.perf_counter() - start, 3),
            "bad": {label: {"expected": expected,
                            "statuses": {str(k): v for k, v in statuses[label].items()}}
                    for label, _, _, _, expected in BAD_REQUESTS}}


def run_mixed(export_dir: Path, backend: str, args: argparse.Namespace, texts: list[str],
              log_dir: Path) -> dict:
    wait = args.mixed_wait_ms
    server = ServerProcess(export_dir, "--backend", backend, "--max-batch",
                           str(args.max_batch), "--batch-wait-ms", str(wait),
                           "--max-instances", str(MAX_INSTANCES), "--max-body-bytes",
                           str(MAX_BODY_BYTES), log_dir=log_dir)
    try:
        try:
            server.ready(timeout=300)
        except ServerError as err:
            raise SystemExit(str(err)) from None
        name = httpx.get(server.url + "/healthz", timeout=30).json()["model"]
        result = mixed_load(server.url, name, texts, args.clients, args.mixed_rounds)
    finally:
        exit_code = server.stop()
    return {"backend": backend, "max_batch": args.max_batch, "batch_wait_ms": wait,
            "clients": args.clients, **result, "server_exit_code": exit_code}


def _print_mixed(row: dict) -> None:
    print(f"{row['backend']:<11} mixed (max_batch {row['max_batch']}, wait "
          f"{row['batch_wait_ms']:g} ms): {row['good_requests']} good requests, "
          f"{row['good_failed']} failed; {row['bad_requests']} bad requests in "
          f"{row['seconds']:.1f} s:", flush=True)
    for label, bad in row["bad"].items():
        seen = ", ".join(f"{status} x{n}" for status, n in bad["statuses"].items())
        wrong = "" if list(bad["statuses"]) == [str(bad["expected"])] else "  UNEXPECTED"
        print(f"    {label:<26} expected {bad['expected']}: {seen}{wrong}", flush=True)


def _ms(value: float | None) -> str:
    return "      - ms" if value is None else f"{value:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path, help="e.g. runs/default/export")
    parser.add_argument("--prepared", type=Path,
                        help="prepare artifact with the test texts (default: the export's "
                             "run, <export_dir>/../prepare)")
    parser.add_argument("--backends", nargs="+", default=["savedmodel", "cpu"])
    parser.add_argument("--runs", nargs="+", choices=["throughput", "grpc", "mixed"],
                        default=["throughput", "grpc", "mixed"],
                        help="throughput per configuration over REST, the same over gRPC, "
                             "and/or good requests mixed with bad ones (REST)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=400, help="requests per config")
    parser.add_argument("--seconds", type=float, default=120,
                        help="most seconds of load per config")
    parser.add_argument("--max-batch", type=int, default=32,
                        help="server batch size compared with 1 (no batching)")
    parser.add_argument("--batch-wait-ms", type=float, nargs="+", default=[0.0, 5.0],
                        help="batch waits to try with --max-batch")
    parser.add_argument("--mixed-rounds", type=int, default=3,
                        help="mixed run: rounds per bad request class")
    parser.add_argument("--mixed-wait-ms", type=float, default=20.0,
                        help="mixed run: the server's --batch-wait-ms")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    texts = split_texts(args.prepared or args.export_dir.parent / "prepare")
    configs = [(args.max_batch, wait) for wait in args.batch_wait_ms] + [(1, 0.0)]
    apis = [api for run, api in (("throughput", "rest"), ("grpc", "grpc"))
            if run in args.runs]
    results, mixed = [], []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as log_dir:
        for backend in args.backends:
            for max_batch, wait in configs if apis else []:
                for row in run_config(args.export_dir, backend, max_batch, wait, apis, args,
                                      texts, Path(log_dir)):
                    results.append(row)
                    print(f"{backend:<11} {row['api']:<4} max_batch {max_batch:>3} wait "
                          f"{wait:g} ms: {row['requests']:>5} requests in "
                          f"{row['seconds']:6.1f} s, {row['requests_per_second']:7.1f} req/s, "
                          f"p50 {_ms(row['p50_ms'])}, p99 {_ms(row['p99_ms'])}, errors "
                          f"{row['errors']}, mean batch {row['mean_batch']:.1f}", flush=True)
            if "mixed" in args.runs:
                mixed.append(run_mixed(args.export_dir, backend, args, texts, Path(log_dir)))
                _print_mixed(mixed[-1])
    gains = {}
    if results:
        rate = {(r["api"], r["backend"], r["max_batch"], r["batch_wait_ms"]):
                r["requests_per_second"] for r in results}
        gains = {f"{backend} {api}": {
            f"wait {wait:g} ms": rate[api, backend, args.max_batch, wait]
            / rate[api, backend, 1, 0.0] for wait in args.batch_wait_ms}
            for backend in args.backends for api in apis}
    for key, by_wait in gains.items():
        for label, gain in by_wait.items():
            print(f"{key:<16} batching gain (max_batch {args.max_batch}, {label} / "
                  f"max_batch 1): {gain:.2f}x")
    if args.json:
        result = {"date": time.strftime("%Y-%m-%d"),
                  "machine": {**machine_info(),
                              "note": "client and server on the same machine"},
                  "load_average_before": load_before,
                  "export_dir": str(args.export_dir), "clients": args.clients,
                  "requests_per_config": args.requests, "seconds_limit": args.seconds,
                  "request": "predict, one text (REST: JSON instances; gRPC: a DT_STRING "
                             "tensor)",
                  "results": results, "batching_gain": gains, "mixed": mixed}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")

if __name__ == "__main__":
    main()
