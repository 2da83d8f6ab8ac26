"""Latency and throughput of models in the runtime their users would run them in.

Measures batch-1 latency (median and p95 over `runs` calls, after warm-up calls) and
batch-N throughput (examples/s) of:

    keras        a stage's model.keras (tf_keras, a `tf.function` over the model)
    savedmodel   an exported SavedModel, `serving_default` on raw texts
    savedmodel-ids  the core-ops SavedModel, `token_ids` on token ids
    tflite       a token-id TFLite model in the runtime adapter (ai-edge-litert first)
    tflite-text  the raw-string TFLite model (tokenizer inside, TF Text custom ops)

Token-id models get real test examples padded to the data stage's sequence length (the
shape the TFLite models are converted with); text models get the same examples' texts.
TensorFlow fixes its thread pools when it starts, so one process measures one thread
count: `measure_in_fresh_process` runs this module as

    python -m export.latency SPEC.json DATA.npz OUT.json

SPEC.json: {"threads": T (0 = all cores), "runs": R, "warmup": W, "batch": N,
"throughput_runs": K, "models": [{"name", "kind", "path"}, ...]}; DATA.npz as
`export.verify.write_split` writes it. OUT.json: one result per model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.timing import phase
from data.features import INPUT_NAMES


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {"median_ms": round(float(np.median(ms)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3), "calls": len(seconds)}


class _Runner:
    """`call(i, n)` runs examples i..i+n-1 (wrapping around) through one model."""

    batch_emulated = False

    def __init__(self, kind: str, path: Path, threads: int, data: dict[str, Any]) -> None:
        self.kind, self.data = kind, data
        self.count = len(data["texts"])
        if kind == "keras":
            import tensorflow as tf

            from models.artifact import load_model

            model, _ = load_model(path)
            self._fn = tf.function(lambda f: model(f, training=False), reduce_retracing=True)
            self.runtime = "tf_keras"
        elif kind == "savedmodel":
            from export.predictor import Predictor

            self._serve = Predictor(path)._loaded.signatures["serving_default"]
            self.runtime = "tensorflow"
        elif kind == "savedmodel-ids":
            from export.predictor import Predictor

            self._serve = Predictor(path)._loaded.signatures["token_ids"]
            self.runtime = "tensorflow"
        else:
            from export.runtime import inputs_by_name, make_interpreter

            self.interpreter, self.runtime = make_interpreter(
                model_path=path, num_threads=threads or os.cpu_count(),
                custom_ops=kind == "tflite-text")
            self._details = inputs_by_name(
                self.interpreter, ("text",) if kind == "tflite-text" else INPUT_NAMES)
            self._batch, self._unbatchable = None, set()
            # A fixed-batch model (the int8 kinds) is never resized: its reshapes are
            # constants, so a resized run could fail or compute garbage.
            self._fixed_batch = any(detail["shape_signature"][0] != -1
                                    for detail in self._details.values())

    def _rows(self, start: int, n: int) -> np.ndarray:
        return np.arange(start, start + n) % self.count

    def call(self, start: int, n: int) -> None:
        rows = self._rows(start, n)
        if self.kind == "keras":
            import tensorflow as tf

            self._fn({k: tf.constant(self.data[k][rows]) for k in INPUT_NAMES})
        elif self.kind == "savedmodel":
            import tensorflow as tf

            self._serve(text=tf.constant([self.data["texts"][i] for i in rows]))
        elif self.kind == "savedmodel-ids":
            import tensorflow as tf

            self._serve(**{k: tf.constant(self.data[k][rows]) for k in INPUT_NAMES})
        else:
            self._call_tflite(rows)

    def _resize(self, n: int) -> bool:
        """Resize the interpreter's inputs to batch n; False if the model cannot run so."""
        if self._batch == n:
            return True
        if n in self._unbatchable or (self._fixed_batch and n != 1):
            self._unbatchable.add(n)
            self._resize(1)
            return False
        try:
            self._reshape(n)
            self._set(np.arange(n) % self.count)
            self.interpreter.invoke()
        except (RuntimeError, ValueError):
            self._unbatchable.add(n)
            self._reshape(1)
            return False
        return True

    def _reshape(self, n: int) -> None:
        for detail in self._details.values():
            shape = list(detail["shape"])
            shape[0] = n
            self.interpreter.resize_tensor_input(detail["index"], shape, strict=False)
        self.interpreter.allocate_tensors()
        self._batch = n

    def _set(self, rows: np.ndarray) -> None:
        if self.kind == "tflite-text":
            detail = self._details["text"]
            value = np.array([self.data["texts"][i].encode("utf-8") for i in rows],
                             dtype=object)
            self.interpreter.set_tensor(detail["index"], value)
            return
        for name, detail in self._details.items():
            value = self.data[name][rows][:, :detail["shape"][1]]
            self.interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))

    def _call_tflite(self, rows: np.ndarray) -> None:
        if self._resize(len(rows)):
            self._set(rows)
            self.interpreter.invoke()
            return
        self.batch_emulated = True  # the model only runs batch 1: n calls in a row
        for i in rows:
            self._set(np.array([i]))
            self.interpreter.invoke()


def measure_models(spec: dict[str, Any], data: dict[str, Any]) -> list[dict[str, Any]]:
    """Measure every model of `spec` in this process (see the module docstring)."""
    threads = int(spec.get("threads", 0))
    runs, warmup = int(spec.get("runs", 50)), int(spec.get("warmup", 3))
    batch, batch_runs = int(spec.get("batch", 32)), int(spec.get("throughput_runs", 0))
    results = []
    for entry in spec["models"]:
        started = time.perf_counter()
        runner = _Runner(entry["kind"], Path(entry["path"]), threads, data)
        load_seconds = time.perf_counter() - started
        for i in range(warmup):
            runner.call(i, 1)
        seconds = []
        for i in range(runs):
            t0 = time.perf_counter()
            runner.call(i, 1)
            seconds.append(time.perf_counter() - t0)
        result = {"name": entry["name"], "kind": entry["kind"], "runtime": runner.runtime,
                  "threads": threads or os.cpu_count(),
                  "load_seconds": round(load_seconds, 3), "batch1": _percentiles(seconds)}
        if batch_runs:
            runner.call(0, batch)  # warm-up at the new shape
            t0 = time.perf_counter()
            for i in range(batch_runs):
                runner.call(i * batch, batch)
            elapsed = time.perf_counter() - t0
            result["throughput"] = {"batch": batch, "calls": batch_runs,
                                    "examples_per_second": round(batch * batch_runs / elapsed, 2),
                                    "batch_emulated": runner.batch_emulated}
        results.append(result)
        del runner
    return results


def load_data(path: Path) -> dict[str, Any]:
    split = np.load(path)
    data = {k: np.asarray(split[k], np.int32) for k in INPUT_NAMES}
    data["texts"] = json.loads(str(split["texts"]))
    return data


@phase("latency")
def measure_in_fresh_process(spec: dict[str, Any], data: Path, work_dir: Path,
                             timeout: float = 3600) -> list[dict[str, Any]]:
    """Run `measure_models` in a new Python process (its own thread pools)."""
    # Absolute paths: the process runs from the repository root, not the caller's folder.
    work_dir, data = Path(work_dir).resolve(), Path(data).resolve()
    spec = {**spec, "models": [{**m, "path": str(Path(m["path"]).resolve())}
                               for m in spec["models"]]}
    spec_path = work_dir / f"latency-spec-{spec.get('threads', 0)}.json"
    out_path = work_dir / f"latency-{spec.get('threads', 0)}.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    if spec.get("threads"):
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    result = subprocess.run([sys.executable, "-m", "export.latency", str(spec_path),
                             str(data), str(out_path)], capture_output=True, text=True,
                            timeout=timeout, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"latency measurement failed:\n{tail}")
    return json.loads(out_path.read_text())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    threads = int(spec.get("threads", 0))
    import tensorflow as tf


    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    results = measure_models(spec, load_data(Path(args[1])))
    Path(args[2]).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
