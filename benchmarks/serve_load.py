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

Client and server share this machine's cores, so absolute figures move with whatever else
runs (the JSON records the load average before the run); the gains are measured in one
run.

    python benchmarks/serve_load.py runs/default/export [--prepared runs/default/prepare]
        [--backends savedmodel cpu] [--clients 8] [--requests 400] [--seconds 120]
        [--max-batch 32] [--batch-wait-ms 0 5] [--json benchmarks/results/serve_load.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from data.input import read_split
from pipeline.artifacts import machine_info
from serve.testing import ServerError, ServerProcess

PREDICT = "/v1/models/{name}:predict"


def split_texts(prepared: Path) -> list[str]:
    """The test split's texts, as `slimbert export` verifies on them."""
    return [row["text"].decode("utf-8") for row in
            read_split(prepared, "test", with_text=True).as_numpy_iterator()]


def load(url: str, texts: list[str], clients: int, requests: int, seconds: float
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

    def client() -> None:
        nonlocal errors
        with httpx.Client(timeout=60) as session:
            while (text := next_text()) is not None:
                start = time.perf_counter()
                try:
                    response = session.post(url, json={"instances": [text]})
                    good = response.status_code == 200 and \
                        len(response.json()["predictions"]) == 1
                except (httpx.HTTPError, ValueError, KeyError):
                    good = False
                elapsed = time.perf_counter() - start
                with lock:
                    if good:
                        latencies.append(elapsed)
                    else:
                        errors += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - start


def run_config(export_dir: Path, backend: str, max_batch: int, wait_ms: float,
               args: argparse.Namespace, texts: list[str], log_dir: Path) -> dict:
    server = ServerProcess(export_dir, "--backend", backend, "--max-batch", str(max_batch),
                           "--batch-wait-ms", str(wait_ms), log_dir=log_dir)
    try:
        try:
            server.ready(timeout=300)
        except ServerError as err:
            raise SystemExit(str(err)) from None
        health = httpx.get(server.url + "/healthz", timeout=30).json()
        url = server.url + PREDICT.format(name=health["model"])
        load(url, texts[::-1], args.clients, 2 * args.clients, args.seconds)  # warm-up
        before = httpx.get(server.url + "/healthz").json()["batches"]["serving_default"]
        latencies, errors, wall = load(url, texts, args.clients, args.requests, args.seconds)
        after = httpx.get(server.url + "/healthz").json()["batches"]["serving_default"]
    finally:
        exit_code = server.stop()
    answered = len(latencies)
    batches = after["batches"] - before["batches"]
    return {
        "backend": backend, "max_batch": max_batch, "batch_wait_ms": wait_ms,
        "runtime": health["runtime"],
        "requests": answered + errors, "errors": errors, "seconds": round(wall, 3),
        "requests_per_second": answered / wall,
        "p50_ms": float(np.percentile(latencies, 50) * 1000) if latencies else None,
        "p99_ms": float(np.percentile(latencies, 99) * 1000) if latencies else None,
        "mean_batch": (after["instances"] - before["instances"]) / batches if batches else 0,
        "server_exit_code": exit_code}


def _ms(value: float | None) -> str:
    return "      - ms" if value is None else f"{value:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path, help="e.g. runs/default/export")
    parser.add_argument("--prepared", type=Path,
                        help="prepare artifact with the test texts (default: the export's "
                             "run, <export_dir>/../prepare)")
    parser.add_argument("--backends", nargs="+", default=["savedmodel", "cpu"])
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=400, help="requests per config")
    parser.add_argument("--seconds", type=float, default=120,
                        help="most seconds of load per config")
    parser.add_argument("--max-batch", type=int, default=32,
                        help="server batch size compared with 1 (no batching)")
    parser.add_argument("--batch-wait-ms", type=float, nargs="+", default=[0.0, 5.0],
                        help="batch waits to try with --max-batch")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    texts = split_texts(args.prepared or args.export_dir.parent / "prepare")
    configs = [(args.max_batch, wait) for wait in args.batch_wait_ms] + [(1, 0.0)]
    results = []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as log_dir:
        for backend in args.backends:
            for max_batch, wait in configs:
                row = run_config(args.export_dir, backend, max_batch, wait, args, texts,
                                 Path(log_dir))
                results.append(row)
                print(f"{backend:<11} max_batch {max_batch:>3} wait {wait:g} ms: "
                      f"{row['requests']:>5} requests in {row['seconds']:6.1f} s, "
                      f"{row['requests_per_second']:7.1f} req/s, p50 {_ms(row['p50_ms'])}, "
                      f"p99 {_ms(row['p99_ms'])}, errors {row['errors']}, "
                      f"mean batch {row['mean_batch']:.1f}", flush=True)
    rate = {(r["backend"], r["max_batch"], r["batch_wait_ms"]): r["requests_per_second"]
            for r in results}
    gains = {backend: {f"wait {wait:g} ms": rate[backend, args.max_batch, wait]
                       / rate[backend, 1, 0.0] for wait in args.batch_wait_ms}
             for backend in args.backends}
    for backend, by_wait in gains.items():
        for label, gain in by_wait.items():
            print(f"{backend:<11} batching gain (max_batch {args.max_batch}, {label} / "
                  f"max_batch 1): {gain:.2f}x")
    if args.json:
        result = {"date": time.strftime("%Y-%m-%d"),
                  "machine": {**machine_info(),
                              "note": "client and server on the same machine"},
                  "load_average_before": load_before,
                  "export_dir": str(args.export_dir), "clients": args.clients,
                  "requests_per_config": args.requests, "seconds_limit": args.seconds,
                  "request": "predict, one text",
                  "results": results, "batching_gain": gains}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
