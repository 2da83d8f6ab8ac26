"""Batch-1 CPU latency of the int8 and student exports against dynamic-range `cpu`.

The token-id TFLite models of one run (`--run-dir`) run in ai-edge-litert with its
default XNNPACK delegate, at batch 1, on one thread and on all cores:

    float32     quantize/finetune/float32.tflite (the reference conversion)
    cpu         dynamic-range int8 (int8 weights, activations quantized per call)
    int8        int8 matmuls, ranges calibrated, no training
    qat         int8 matmuls from quantization-aware training of the float model
    pruned-qat  the same for the pruned model
    student-cpu, student-int8, student-qat
                the distilled student's dynamic-range, calibrated int8 and QAT int8
                models (distill stage), against the teacher's `cpu`: the speed-up
                `cpu / student-cpu` is the distill issue's figure

Each is taken from `export/tflite/` when the run exported it, else from the quantize
stage's folder. `--before NAME=PATH` adds any other file (e.g. an older `qat` export) to
the same rounds. Inputs are real test-split token ids at the models' sequence length.

In every round each model (in an order rotated from round to round) gets `--warmup`
calls, then `--calls` timed calls; its latency in the round is their median. Ratios
(`model / cpu`) are taken within each round, and the result is the median over rounds:
machine noise hits the models of one round alike. A latency is the median over rounds of
the per-round medians. Absolute times on a shared machine move; the ratios are the
figures to quote.

    python benchmarks/int8_latency.py --run-dir runs/default [--rounds 8] [--calls 40]
        [--warmup 5] [--threads 1 0] [--before qat-before=old/qat.tflite]
        [--json out.json]

`--threads 0` means all cores (`os.cpu_count()`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.native_logs import quiet_native_startup  # noqa: E402
from data.features import INPUT_NAMES  # noqa: E402

BASELINE = "cpu"
MODELS = {  # name -> (export target, quantize stage file)
    "float32": (None, "finetune/float32.tflite"),
    "cpu": ("cpu", "finetune/cpu.tflite"),
    "int8": ("int8", "finetune/int8.tflite"),
    "qat": ("qat", "finetune/qat.tflite"),
    "pruned-qat": ("pruned-qat", "prune/qat.tflite"),
    "student-cpu": ("student-cpu", "distill/cpu.tflite"),
    "student-int8": ("student-int8", "distill/int8.tflite"),
    "student-qat": ("student-qat", "distill/qat.tflite"),
}


def find_models(run_dir: Path) -> dict[str, Path]:
    """The run's TFLite file for each of `MODELS` that exists."""
    from export.targets import exported_file

    found = {}
    for name, (target, quantized) in MODELS.items():
        exported = exported_file(run_dir / "export", target) if target else None
        path = exported if exported else run_dir / "quantize" / quantized
        if path.is_file():
            found[name] = path
    return found


def test_inputs(run_dir: Path, examples: int) -> list[dict[str, np.ndarray]]:
    """`examples` test rows as [1, L] int32 inputs, L the data stage's sequence length."""
    from data.input import split_arrays
    from data.tokenizer import read_tokenizer_config

    seq_len = read_tokenizer_config(run_dir / "prepare")["max_seq_length"]
    features, _, _ = split_arrays(run_dir / "prepare", "test", seq_len)
    count = min(examples, len(features["input_ids"]))
    return [{name: np.asarray(features[name][i:i + 1], np.int32) for name in INPUT_NAMES}
            for i in range(count)]


class Model:
    """One interpreter (default delegate) and its input tensors."""

    def __init__(self, path: Path, threads: int):
        from export.runtime import inputs_by_name, make_interpreter

        self.interpreter, self.runtime = make_interpreter(model_path=path,
                                                          num_threads=threads)
        self.details = inputs_by_name(self.interpreter, INPUT_NAMES)

    def call(self, row: dict[str, np.ndarray]) -> None:
        for name, detail in self.details.items():
            length = detail["shape"][1]
            self.interpreter.set_tensor(detail["index"], row[name][:, :length])
        self.interpreter.invoke()


def time_round(models: dict[str, Model], order: list[str], rows: list, calls: int,
               warmup: int) -> dict[str, float]:
    """Median ms per call of each model, in `order`."""
    out = {}
    for name in order:
        model = models[name]
        for i in range(warmup):
            model.call(rows[i % len(rows)])
        seconds = []
        for i in range(calls):
            row = rows[i % len(rows)]
            start = time.perf_counter()
            model.call(row)
            seconds.append(time.perf_counter() - start)
        out[name] = statistics.median(seconds) * 1000.0
    return out


def measure(paths: dict[str, Path], rows: list, threads: int, rounds: int, calls: int,
            warmup: int) -> dict:
    models = {name: Model(path, threads) for name, path in paths.items()}
    names = list(models)
    per_round = []
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        per_round.append(time_round(models, order, rows, calls, warmup))
    result = {"threads": threads, "runtime": next(iter(models.values())).runtime,
              "models": {}}
    for name in names:
        entry = {"median_ms": round(statistics.median(r[name] for r in per_round), 3),
                 "rounds_ms": [round(r[name], 3) for r in per_round]}
        if BASELINE in models:
            entry[f"ratio_to_{BASELINE}"] = round(statistics.median(
                r[name] / r[BASELINE] for r in per_round), 3)
            entry["speedup"] = round(statistics.median(
                r[BASELINE] / r[name] for r in per_round), 3)
        result["models"][name] = entry
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/default"))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0],
                        help="thread counts (0 = all cores)")
    parser.add_argument("--examples", type=int, default=64, help="test rows cycled through")
    parser.add_argument("--before", action="append", default=[], metavar="NAME=PATH",
                        help="another .tflite file timed in the same rounds")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="keep LiteRT's native log lines")
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_native_startup()
    paths = find_models(args.run_dir)
    for item in args.before:
        name, _, path = item.partition("=")
        if not path or not Path(path).is_file():
            parser.error(f"--before wants NAME=PATH of a .tflite file, got {item!r}")
        paths[name] = Path(path)
    if BASELINE not in paths:
        parser.error(f"{args.run_dir}: no `{BASELINE}` TFLite model (run the quantize stage)")
    rows = test_inputs(args.run_dir, args.examples)
    results = {"run_dir": str(args.run_dir), "files": {k: str(v) for k, v in paths.items()},
               "rounds": args.rounds, "calls": args.calls, "cpu_count": os.cpu_count(),
               "load_average": [round(x, 2) for x in os.getloadavg()], "measurements": []}
    for threads in args.threads:
        count = threads or os.cpu_count()
        result = measure(paths, rows, count, args.rounds, args.calls, args.warmup)
        results["measurements"].append(result)
        print(f"batch 1, {count} thread(s), {args.rounds} rounds x {args.calls} calls "
              f"({result['runtime']}):")
        for name, entry in result["models"].items():
            print(f"  {name:<14} {entry['median_ms']:8.3f} ms   "
                  f"{entry.get(f'ratio_to_{BASELINE}', float('nan')):.3f} x {BASELINE}   "
                  f"speed-up {entry.get('speedup', float('nan')):.2f}x")
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
