"""CPU inference: our TFLite models in ai-edge-litert against ONNX Runtime, same weights.

The fine-tuned classifier of a run (`<run-dir>/finetune/model.keras`) runs as:

- TFLite in ai-edge-litert (XNNPACK): `float32` (the quantize stage's reference
  conversion), `cpu` (the export target: dynamic-range int8, int8 weights with the
  activations quantized on the fly) and `qat` (int8 weights and activations from
  quantization-aware training: the export target, or the quantize stage's `qat` variant
  when the run did not export it);
- ONNX Runtime (CPUExecutionProvider): the Keras model converted with tf2onnx (opset 17)
  in fp32, and that model through `onnxruntime.quantization.quantize_dynamic` with QInt8
  weights (ORT's counterpart of `cpu`); each also "fused" (see Fusions below): the fp32
  graph through ORT's transformer optimizer
  (`onnxruntime.transformers.optimizer.optimize_model`, model type "bert", heads and
  hidden size read from the model) before quantizing. The fusions it applied are printed
  (on the default model: 6 Attention, 13 SkipLayerNormalization, 6 Gelu; the int8 graph
  then has QAttention).

Inputs are real test-split token ids (`input_ids`, `input_mask`, `segment_ids`, int32)
padded to the sequence length (`data.max_seq_length` of `--config`, or `--seq-len`). Every
variant is timed per call at batch 1 (median and p95 latency) and at batch 32 (examples/s),
all with the same thread count (`--threads`: the TFLite interpreter's `num_threads` and
ORT's `intra_op_num_threads`), in alternating rounds in one process, so machine noise
hits all alike. A speed-up is the median over rounds of the ratio measured within each
round; the ratios are what count, not the absolute times. Each ORT model runs twice
(`--ort-spinning both`): with its intra-op threads spin-waiting (ORT's default; "spin")
and sleeping, because which is faster depends on the load: on these 2 cores spinning was
1.2x faster when idle and 2x slower when another job shared the cores. The "no slower
than ORT int8" target compares with the faster of the two in each round. The
TFLite models have a fixed [1, L] input; batch 32 resizes it (`resize_tensor_input`), and
a model that cannot be resized runs 32 single invokes (the table says so). Before
timing, every variant predicts the first `--agreement` test examples: ORT fp32, unfused
and fused, must agree with TFLite float32 on >= 99% of the argmaxes (the conversion and
the fusions are faithful), else the script exits with status 1 after reporting.

Conversion (cached by model hash and settings in `--cache-dir`, default a folder in the
system temp dir, never in the repository):
- tf2onnx has no handler for TF's `Erfc` (our exact GELU); it is mapped to `1 - Erf`.
- `quantize_dynamic` only quantizes `MatMul` nodes whose weight is an initializer, and
  tf2onnx emits the attention projections as `Gemm` (one with a weight reshaped at run
  time): the fp32 graph is first constant-folded with ORT's `quant_pre_process` and every
  `Gemm` rewritten as `MatMul` (+ `Add`), so all 37 weight matmuls become int8, as in the
  TFLite `cpu` model (weights per tensor, quantize_dynamic's default; `--ort-per-channel`
  for per channel). The fp32 variant is tf2onnx's graph unchanged.
- Fusions: on tf2onnx's graph of the Keras model ORT's optimizer fuses nothing. Its
  attention patterns need BERT's reference subgraph (matmul + bias, reshape to heads,
  transpose, q.k matmul, scale, mask add, softmax); tf2onnx lowers the Keras layer's
  einsums into reshaped batched matmuls instead. So the fused variants are converted
  with every attention layer computing the same function of the same weights in the
  reference form (`onnx_contender.plain_attention`, for the trace only), and three
  tf2onnx idioms are rewritten into the forms the optimizer looks for
  (`onnx_contender.fusable`): the LayerNorm mean (`GlobalAveragePool` -> `ReduceMean`),
  the exact GELU (`1 - Erf(-x/sqrt 2)` -> `1 + Erf(x/sqrt 2)`) and the attention scale
  (`Mul(1/sqrt d)` -> `Div(sqrt d)`, else the optimizer takes it for the mask's `Mul`).
  The optimizer runs its Python fusions only (`opt_level=0`: a positive level imports
  torch; ORT's own graph optimizations run at session load for every ORT variant,
  `ORT_ENABLE_ALL`). The fused Attention takes the mask as per-example lengths (ORT's
  BERT default), right for these right-padded inputs.
- If the run's TFLite files have another sequence length than asked for, `float32` and
  `cpu` are converted again from the Keras model (`export.tflite.to_tflite`); `qat` needs
  the QAT model, which the run does not keep, so it is left out.

    python benchmarks/inference_vs_onnxruntime.py [--run-dir runs/default]
        [--config configs/default.yaml] [--seq-len N] [--threads N] [--rounds 6]
        [--calls 30] [--batch 32] [--batch-calls 4] [--agreement 200]
        [--ort-spinning both|on|off] [--ort-per-channel]
        [--cache-dir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx_contender import OPSET, OrtModel, convert_onnx  # a sibling script

import core  # noqa: F401  (Keras 2 for tf.keras, before TensorFlow is imported)
from core.files import sha256_file
from data.features import INPUT_NAMES
from export.runtime import inputs_by_name, make_interpreter, read_output
from export.targets import exported_file
from pipeline.artifacts import library_versions, machine_info

RECIPE = 4  # bump when the ONNX conversion recipe changes (invalidates the cache)
MIN_AGREEMENT = 0.99
REFERENCE = "TFLite float32"
ORT_FP32 = "ORT fp32"
ORT_INT8 = "ORT int8"
TFLITE_CPU = "TFLite cpu"
TFLITE_QAT = "TFLite qat"
FUSED_SUFFIX = " fused"
SPIN_SUFFIX = " spin"


def short(name: str) -> str:
    """A variant's name in the speed-up tables' column headings."""
    base = {REFERENCE: "f32", TFLITE_CPU: "cpu", TFLITE_QAT: "qat", ORT_FP32: "ORT f32",
            ORT_INT8: "ORT i8"}
    core_name = name.removesuffix(SPIN_SUFFIX).removesuffix(FUSED_SUFFIX)
    return base.get(core_name, core_name) + (" F" if FUSED_SUFFIX in name else "") \
        + (" s" if name.endswith(SPIN_SUFFIX) else "")


# === Inputs ===


def padded(examples, seq_len: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Examples of `data.input.read_split` as int32 [N, seq_len] features (padded with
    [PAD] = 0, truncated if longer) and their labels."""
    rows, labels = [], []
    for example in examples.as_numpy_iterator():
        ids = example["input_ids"][:seq_len]
        rows.append(np.pad(ids, (0, seq_len - len(ids))))
        labels.append(int(example["label"]))
    ids = np.stack(rows).astype(np.int32)
    features = {"input_ids": ids, "input_mask": (ids != 0).astype(np.int32),
                "segment_ids": np.zeros_like(ids)}
    return features, np.array(labels)


def test_examples(prep_dir: Path, seq_len: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The whole test split, padded (`padded`), and its labels."""
    from data.input import read_split

    return padded(read_split(prep_dir, "test", with_text=False), seq_len)


def take(features: dict[str, np.ndarray], start: int, count: int) -> dict[str, np.ndarray]:
    """`count` consecutive examples from `start`, wrapping around the split."""
    n = len(features["input_ids"])
    index = np.arange(start, start + count) % n
    return {name: np.ascontiguousarray(value[index]) for name, value in features.items()}


# === TFLite ===


def tflite_seq_len(path: Path) -> int:
    interpreter, _ = make_interpreter(model_path=path)
    return int(inputs_by_name(interpreter, INPUT_NAMES)["input_ids"]["shape"][1])


class TFLiteModel:
    """A token-id TFLite model: a [1, L] interpreter and, if resizing works, a [batch, L]
    one; otherwise a batch runs as single invokes."""

    def __init__(self, name: str, path: Path, threads: int, batch: int, seq_len: int,
                 probe: dict[str, np.ndarray]):
        self.name, self.path, self.batch = name, path, batch
        self.single, self.runtime = make_interpreter(model_path=path, num_threads=threads)
        self.single_io = self._io(self.single)
        self.batched, self.batched_io, self.resize_error = None, None, None
        try:
            interpreter, _ = make_interpreter(model_path=path, num_threads=threads)
            for detail in inputs_by_name(interpreter, INPUT_NAMES).values():
                interpreter.resize_tensor_input(detail["index"], [batch, seq_len])
            interpreter.allocate_tensors()
            io = self._io(interpreter)
            out = self._run(interpreter, io, probe)
            if out.shape[0] != batch:
                raise RuntimeError(f"output batch {out.shape[0]} after resizing to {batch}")
            self.batched, self.batched_io = interpreter, io
        except (RuntimeError, ValueError) as err:
            self.resize_error = f"{type(err).__name__}: {err}".splitlines()[0]

    @staticmethod
    def _io(interpreter):
        return inputs_by_name(interpreter, INPUT_NAMES), interpreter.get_output_details()[0]

    @staticmethod
    def _run(interpreter, io, feed: dict[str, np.ndarray]) -> np.ndarray:
        inputs, output = io
        for name, detail in inputs.items():
            interpreter.set_tensor(detail["index"], feed[name])
        interpreter.invoke()
        return read_output(interpreter, output)

    @property
    def how(self) -> str:
        return "resized" if self.batched is not None else "single invokes"

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        n = len(feed["input_ids"])
        if n == 1:
            return self._run(self.single, self.single_io, feed)
        if n == self.batch and self.batched is not None:
            return self._run(self.batched, self.batched_io, feed)
        return np.concatenate([self._run(self.single, self.single_io,
                                         {k: v[i:i + 1] for k, v in feed.items()})
                               for i in range(n)])


# === Files ===


LIBRARIES = ("tensorflow", "tf-keras", "ai-edge-litert", "onnxruntime", "tf2onnx", "onnx",
             "sympy", "numpy")


def tflite_files(run_dir: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, where it comes from) for the three TFLite variants."""
    quantized = run_dir / "quantize" / "finetune"

    def export_or(target: str) -> tuple[Path, str]:
        found = exported_file(run_dir / "export", target)
        if found and found.is_file():
            return found, f"export target `{target}`"
        return quantized / f"{target}.tflite", f"quantize `{target}` (not exported)"

    return {REFERENCE: (quantized / "float32.tflite", "quantize `float32`"),
            TFLITE_CPU: export_or("cpu"),
            TFLITE_QAT: export_or("qat")}


RECONVERTIBLE = {REFERENCE: "float32", TFLITE_CPU: "cpu"}  # from the float Keras model


def reconvert_tflite(model, seq_len: int, cache: Path) -> dict[str, tuple[Path, str]]:
    """The float32 and cpu TFLite variants at `seq_len`, converted as the quantize stage
    does (neither needs calibration data)."""
    from export.tflite import to_tflite

    out = {}
    for name, kind in RECONVERTIBLE.items():
        path = cache / f"{kind}-{seq_len}.tflite"
        if not path.is_file():
            print(f"converting {name} at sequence length {seq_len} ...", flush=True)
            path.write_bytes(to_tflite(model, kind, max_seq_length=seq_len))
        out[name] = (path, f"`{kind}` reconverted at sequence length {seq_len}")
    return out


# === Measurement ===


def predict(contender, features: dict[str, np.ndarray], batch: int) -> np.ndarray:
    """Logits for all examples, in chunks of `batch` (the last one padded by repeating
    its first row, so fixed-batch interpreters fit)."""
    n = len(features["input_ids"])
    out = []
    for start in range(0, n, batch):
        chunk = {k: v[start:start + batch] for k, v in features.items()}
        size = len(chunk["input_ids"])
        if size < batch:
            chunk = {k: np.concatenate([v, np.repeat(v[:1], batch - size, 0)])
                     for k, v in chunk.items()}
        out.append(contender(chunk)[:size])
    return np.concatenate(out)


def timed(contender, feeds: list[dict[str, np.ndarray]]) -> list[float]:
    times = []
    for feed in feeds:
        start = time.perf_counter()
        contender(feed)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/default")
    parser.add_argument("--config", default="configs/default.yaml",
                        help="pipeline config giving data.max_seq_length")
    parser.add_argument("--seq-len", type=int, help="override data.max_seq_length")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0))
                        if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                        help="TFLite num_threads and ORT intra_op_num_threads "
                             "(default: all cores)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=30, help="timed batch-1 calls per round")
    parser.add_argument("--batch-calls", type=int, default=4,
                        help="timed batch calls per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batch-1 calls")
    parser.add_argument("--agreement", type=int, default=200,
                        help="test examples for the argmax agreement check")
    parser.add_argument("--ort-spinning", choices=("off", "on", "both"), default="both",
                        help="ORT intra-op threads spin-waiting (ORT's default: on): time "
                             "sessions with it off, on, or both (default)")
    parser.add_argument("--ort-per-channel", action="store_true",
                        help="quantize_dynamic with per_channel=True (default: per tensor, "
                             "quantize_dynamic's default)")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir())
                                                   / "slimbert-bench-onnx"))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    from pipeline.config import load_config

    load_start = os.getloadavg()
    config = load_config(args.config)
    seq_len = args.seq_len or config.data.max_seq_length
    run_dir = Path(args.run_dir)
    source_dir, prep_dir = run_dir / "finetune", run_dir / "prepare"
    keras_file = source_dir / "model.keras"
    features, labels = test_examples(prep_dir, seq_len)
    print(f"{len(labels)} test examples, sequence length {seq_len}, {args.threads} threads, "
          f"{os.cpu_count()} cores", flush=True)

    # Conversions, cached by the model's hash and the recipe.
    import onnxruntime
    import tf2onnx

    key = hashlib.sha256(json.dumps([sha256_file(keras_file), seq_len, OPSET, RECIPE,
                                     args.ort_per_channel,
                                     tf2onnx.__version__, onnxruntime.__version__]).encode()
                         ).hexdigest()[:16]
    cache = Path(args.cache_dir) / key
    cache.mkdir(parents=True, exist_ok=True)
    files = tflite_files(run_dir)
    for name, (path, _) in list(files.items()):
        if name not in RECONVERTIBLE and not path.is_file():
            print(f"{name}: no {path}; left out", flush=True)
            del files[name]
    stale = [name for name, (path, _) in files.items() if tflite_seq_len(path) != seq_len]
    info_path = cache / "conversion.json"
    keras_model = None

    def keras():
        nonlocal keras_model
        if keras_model is None:
            from models.artifact import load_model

            keras_model, _ = load_model(source_dir)
        return keras_model

    if not info_path.is_file():
        print(f"converting {keras_file} to ONNX in {cache} ...", flush=True)
        conversion = convert_onnx(keras(), seq_len, cache, take(features, 0, args.batch),
                                  args.ort_per_channel)
        info_path.write_text(json.dumps(conversion, indent=2) + "\n")
    conversion = json.loads(info_path.read_text())
    conversion["cache_dir"] = str(cache)
    if stale:
        print(f"the run's TFLite files are not at sequence length {seq_len}: {', '.join(stale)}",
              flush=True)
        files = {**reconvert_tflite(keras(), seq_len, cache),
                 **{name: files[name] for name in files if name not in stale}}
        for name in stale:
            if name not in RECONVERTIBLE:
                print(f"{name}: cannot be reconverted from the float model; left out",
                      flush=True)
    keras_model = None  # free it before timing

    probe = take(features, 0, args.batch)
    contenders = [TFLiteModel(name, path, args.threads, args.batch, seq_len, probe)
                  for name, (path, _) in files.items()]
    sources = {name: where for name, (_, where) in files.items()}
    spinning = {"off": [False], "on": [True], "both": [False, True]}[args.ort_spinning]
    per = "channel" if args.ort_per_channel else "tensor"
    for fused in ("", FUSED_SUFFIX):
        for spin in spinning:
            suffix = fused + (SPIN_SUFFIX if spin else "")
            prefix = "fused-" if fused else ""
            contenders += [
                OrtModel(ORT_FP32 + suffix, cache / f"{prefix}fp32.onnx", args.threads, spin),
                OrtModel(ORT_INT8 + suffix, cache / f"{prefix}int8.onnx", args.threads, spin)]
            spun = ", threads spin" if spin else ", threads sleep"
            sources[ORT_FP32 + suffix] = (
                f"optimize_model (bert) of tf2onnx, plain attention{spun}" if fused
                else f"tf2onnx opset {OPSET} of finetune/model.keras{spun}")
            sources[ORT_INT8 + suffix] = \
                f"quantize_dynamic QInt8 per {per} of ORT fp32{fused}{spun}"
    spin_suffix = "" if not spinning[0] else SPIN_SUFFIX
    ort_fp32, ort_fp32_fused = ORT_FP32 + spin_suffix, ORT_FP32 + FUSED_SUFFIX + spin_suffix
    for c in contenders:
        if c.resize_error:
            print(f"{c.name}: cannot resize to batch {args.batch} ({c.resize_error}); "
                  f"its batch figures are {args.batch} single invokes", flush=True)

    # Faithfulness: argmax agreement on real test examples (also warms every model up).
    agree_features = take(features, 0, min(args.agreement, len(labels)))
    agree_labels = labels[:len(agree_features["input_ids"])]
    predicted = {c.name: predict(c, agree_features, args.batch).argmax(-1) for c in contenders}
    agreement = {name: {
        "agreement_with_tflite_float32": float(np.mean(p == predicted[REFERENCE])),
        "agreement_with_ort_fp32": float(np.mean(p == predicted[ort_fp32])),
        "accuracy": float(np.mean(p == agree_labels))} for name, p in predicted.items()}
    faithful = {name: agreement[name]["agreement_with_tflite_float32"]
                for name in (ort_fp32, ort_fp32_fused)}

    # Timing: alternating rounds; batch-1 calls each on another real example.
    singles = [take(features, i, 1) for i in range(args.calls)]
    batches = [take(features, i * args.batch, args.batch) for i in range(args.batch_calls)]
    for c in contenders:
        timed(c, singles[:args.warmup] + batches[:1])
    one: dict[str, list[float]] = {c.name: [] for c in contenders}
    many: dict[str, list[float]] = {c.name: [] for c in contenders}
    rounds_one: dict[str, list[float]] = {c.name: [] for c in contenders}
    rounds_many: dict[str, list[float]] = {c.name: [] for c in contenders}
    start = time.perf_counter()
    for round_ in range(args.rounds):
        order = contenders if round_ % 2 == 0 else contenders[::-1]
        for c in order:
            times = timed(c, singles)
            one[c.name] += times
            rounds_one[c.name].append(statistics.median(times))
        for c in order:
            times = timed(c, batches)
            many[c.name] += times
            rounds_many[c.name].append(args.batch / statistics.median(times))
        print(f"round {round_ + 1}/{args.rounds} done ({time.perf_counter() - start:.0f} s)",
              flush=True)

    results = {}
    for c in contenders:
        lat = np.array(one[c.name]) * 1000
        results[c.name] = {
            "source": sources[c.name], "file": str(c.path),
            "file_bytes": Path(c.path).stat().st_size, "runtime": c.runtime,
            f"batch_{args.batch}": c.how, "resize_error": c.resize_error,
            "batch1_median_ms": float(np.median(lat)),
            "batch1_p95_ms": float(np.percentile(lat, 95)),
            "batch1_mean_ms": float(lat.mean()),
            "batch1_round_medians_ms": [t * 1000 for t in rounds_one[c.name]],
            f"batch{args.batch}_median_ms": float(np.median(many[c.name]) * 1000),
            f"batch{args.batch}_examples_per_second":
                float(args.batch / np.median(many[c.name])),
            f"batch{args.batch}_round_examples_per_second": rounds_many[c.name],
            **agreement[c.name]}

    bkey = f"batch{args.batch}"

    def ratio(fast: str, slow: list[str]) -> dict:
        """How many times faster `fast` is than the fastest of `slow` in each round (both
        measured back to back): the median over rounds, and every round's."""
        per_one = [min(rounds_one[s][i] for s in slow) / rounds_one[fast][i]
                   for i in range(args.rounds)]
        per_many = [rounds_many[fast][i] / max(rounds_many[s][i] for s in slow)
                    for i in range(args.rounds)]
        return {"batch1": statistics.median(per_one), "batch1_rounds": per_one,
                bkey: statistics.median(per_many), f"{bkey}_rounds": per_many}

    names = [c.name for c in contenders]
    ratios = {f"{a} vs {b}": ratio(a, [b]) for a in names for b in names if a != b}
    ort_int8 = [name for name in names if name.startswith(ORT_INT8)]
    best_ort = "the faster ORT int8" if len(ort_int8) > 1 else ort_int8[0]
    cpu_float = ratios[f"{TFLITE_CPU} vs {REFERENCE}"]
    cpu_ort = ratio(TFLITE_CPU, ort_int8)
    ratios[f"{TFLITE_CPU} vs {best_ort}"] = cpu_ort
    targets = {
        "cpu_vs_float32_batch1_at_least_2x": {"ratio": cpu_float["batch1"],
                                              "met": cpu_float["batch1"] >= 2.0},
        "cpu_no_slower_than_ort_int8_batch1": {"ratio": cpu_ort["batch1"], "vs": ort_int8,
                                               "met": cpu_ort["batch1"] >= 1.0},
        f"cpu_no_slower_than_ort_int8_{bkey}": {"ratio": cpu_ort[bkey], "vs": ort_int8,
                                                "met": cpu_ort[bkey] >= 1.0}}

    print()
    print(f"sequence length {seq_len}, {args.threads} threads; {args.rounds} alternating "
          f"rounds of {args.calls} batch-1 calls and {args.batch_calls} batch-{args.batch} "
          f"calls per variant; agreement on {len(agree_labels)} test examples")
    header = (f"{'variant':<16} {'b1 median':>10} {'b1 p95':>9} {f'b{args.batch} ex/s':>9} "
              f"{f'b{args.batch} via':>14} {'agree f32':>10} {'agree ORT':>10} {'acc':>7}  "
              "source")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:<16} {r['batch1_median_ms']:8.2f}ms {r['batch1_p95_ms']:7.2f}ms "
              f"{r[f'{bkey}_examples_per_second']:9.1f} {r[f'batch_{args.batch}']:>14} "
              f"{r['agreement_with_tflite_float32']:10.1%} {r['agreement_with_ort_fp32']:10.1%} "
              f"{r['accuracy']:7.1%}  {r['source']}")
    for k, label in (("batch1", "batch 1 (latency)"), (bkey, f"batch {args.batch} "
                                                            "(examples/s)")):
        print()
        print(f"speed-up at {label}: row is N x faster than column (median over rounds)")
        print(f"{'':<16}" + "".join(f"{short(b):>10}" for b in names))
        for a in names:
            print(f"{a:<16}" + "".join(f"{'-':>10}" if a == b else
                                       f"{ratios[f'{a} vs {b}'][k]:9.2f}x" for b in names))
    print()

    def span(r: dict, k: str) -> str:
        return f"{r[k]:.2f}x (rounds {min(r[k + '_rounds']):.2f}-{max(r[k + '_rounds']):.2f})"

    met = targets["cpu_vs_float32_batch1_at_least_2x"]["met"]
    print(f"target: TFLite cpu >= 2x faster than TFLite float32 at batch 1: "
          f"{span(cpu_float, 'batch1')} -> {'met' if met else 'MISSED'}")
    for k, label in (("batch1", "batch 1"), (bkey, f"batch {args.batch}")):
        print(f"target: TFLite cpu no slower than {best_ort} at {label}: {span(cpu_ort, k)} "
              f"-> {'met' if cpu_ort[k] >= 1.0 else 'MISSED'}")
    if TFLITE_QAT in names:
        qat_ort = ratio(TFLITE_QAT, ort_int8)
        ratios[f"{TFLITE_QAT} vs {best_ort}"] = qat_ort
        for k, label in (("batch1", "batch 1"), (bkey, f"batch {args.batch}")):
            print(f"TFLite qat vs {best_ort} at {label}: {span(qat_ort, k)}")
    ok = all(value >= MIN_AGREEMENT for value in faithful.values())
    for name, value in faithful.items():
        verdict = "ok" if value >= MIN_AGREEMENT else "FAILED"
        diff = conversion["fused_fp32_max_abs_logit_diff_vs_keras" if FUSED_SUFFIX in name
                          else "fp32_max_abs_logit_diff_vs_keras"]
        print(f"sanity: {name} vs TFLite float32 argmax agreement {value:.1%} on "
              f"{len(agree_labels)} examples (need >= {MIN_AGREEMENT:.0%}): {verdict}; "
              f"vs Keras max |logit diff| {diff:.2g}")
    print(f"ORT fusions: {conversion['fused_operators'] or 'none'} "
          f"({conversion['fusion_recipe']})")
    if not any("Attention" in op for op in conversion["fused_operators"]):
        print("ORT fusions: attention NOT fused")
    for kind in ("fp32", "int8", "fused_fp32", "fused_int8"):
        print(f"ONNX matmuls {kind}: {conversion[f'{kind}_census']}")
    load_end = os.getloadavg()
    print(f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end "
          f"({os.cpu_count()} cores)")

    if args.json:
        out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine_info(),
               "versions": library_versions(LIBRARIES),
               "load_average_1min": {"start": load_start[0], "end": load_end[0]},
               "run_dir": str(run_dir), "model_sha256": sha256_file(keras_file),
               "seq_len": seq_len, "threads": args.threads, "batch": args.batch,
               "rounds": args.rounds, "calls_per_round": args.calls,
               "ort_intra_op_spinning": args.ort_spinning,
               "ort_int8_per_channel": args.ort_per_channel,
               "batch_calls_per_round": args.batch_calls,
               "agreement_examples": len(agree_labels),
               "conversion": conversion, "results": results, "ratios": ratios,
               "targets": targets,
               "sanity": {"agreement_with_tflite_float32": faithful,
                          "required": MIN_AGREEMENT, "ok": ok}}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
