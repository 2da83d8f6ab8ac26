"""Per-op profile of TFLite exports in ai-edge-litert: what XNNPACK takes, what each op costs.

For each model (a token-id .tflite: an export's `slimbert-{cpu,gpu,int8,qat,pruned-qat}`
or a quantize variant), at batch 1 on `--threads` threads (default 1):

1. The execution plan of ai-edge-litert's Interpreter after delegation
   (`export.op_profile.execution_plan`): how many XNNPACK partitions (delegate nodes),
   how many model ops each replaced and of which types, which ops stay on the builtin
   kernels (type and dtypes), and the delegated share of the model's ops.
2. Time per op from LiteRT's profiler (`export.op_profile.profile_ops`): the same
   runtime through its C API, a CompiledModel with profiling on, one event per builtin
   op and per XNNPACK operator inside a partition. Times are means over `--runs` runs
   after `--warmup` runs, grouped by op type and kernel (XNNPACK operator names such as
   "Fully Connected (NC, QS8, QC8W) GEMM"; builtin ops by TFLite type), and per partition.
   The profiled plan is checked against the interpreter's (same builtin nodes, same
   number of partitions), and the interpreter's own median `invoke()` is timed beside it
   so the profiled total can be compared with what `export.runtime` runs.

`--kernels builtin` profiles the builtin kernels alone (no XNNPACK), `both` does each.
Timings are noisy on a shared machine: compare shares within a model, and repeat.

    python benchmarks/tflite_op_profile.py MODEL.tflite [MODEL.tflite ...]
        [--kernels default|builtin|both] [--threads 1] [--runs 20] [--warmup 3]
        [--top 12] [--no-timing] [--json out.json] [-v]

Example (a run's int8 exports):
    python benchmarks/tflite_op_profile.py runs/default/export/tflite/slimbert-cpu.tflite \\
        runs/default/quantize/finetune/int8.tflite runs/default/quantize/finetune/qat.tflite
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from core.native_logs import quiet_native_startup
from export.op_profile import (
    attach_profile,
    execution_plan,
    interpreter_latency_ms,
    profile_ops,
)


def model_label(path: Path) -> str:
    """`cpu` for an export's slimbert-cpu.tflite, `finetune/int8` for a quantize variant."""
    stem = path.stem.removeprefix("slimbert-")
    return stem if path.parent.name in ("tflite", "") else f"{path.parent.name}/{stem}"


def profile_model(path: Path, kernels: str, args: argparse.Namespace) -> dict[str, Any]:
    from export.flatbuffer import op_census  # imports TensorFlow: after the quiet start-up

    custom = op_census(path.read_bytes())["custom_ops"]
    plan = execution_plan(path, kernels=kernels, num_threads=args.threads,
                          custom_ops=bool(custom))
    result: dict[str, Any] = {"model": model_label(path), "path": str(path),
                              "kernels": kernels, "threads": args.threads, "plan": plan}
    if custom:
        result["timing_skipped"] = f"custom ops ({', '.join(custom)}): plan only"
    if args.no_timing or custom:
        return result
    profile = profile_ops(path, kernels=kernels, num_threads=args.threads, runs=args.runs,
                          warmup=args.warmup)
    mismatch = attach_profile(plan, profile)
    result.update(profile=profile, plan_mismatch=mismatch,
                  interpreter_ms=interpreter_latency_ms(
                      path, kernels=kernels, num_threads=args.threads, runs=args.runs,
                      warmup=args.warmup))
    return result


# === Tables ===


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "    -"


def format_plan(plan: dict[str, Any]) -> list[str]:
    partitions = plan["partitions"]
    sizes = [p["ops"] for p in partitions]
    lines = [f"plan: {plan['ops']} ops; {plan['delegated_ops']} in XNNPACK "
             f"({100 * plan['delegated_share']:.1f}%), {len(partitions)} partitions"
             + (f" (ops per partition: min {min(sizes)}, median "
                f"{statistics.median(sizes):g}, max {max(sizes)})" if sizes else "")
             + f"; {plan['builtin_ops']} outside XNNPACK"]
    if plan["builtin_signatures"]:
        lines.append("  outside XNNPACK (builtin or custom kernels): " + ", ".join(
            f"{signature} x{count}" for signature, count in plan["builtin_signatures"].items()))
    return lines


def format_profile(result: dict[str, Any], top: int) -> list[str]:
    profile = result["profile"]
    ops_ms = profile["ops_ms"]
    builtin_ms, xnnpack_ms = profile["builtin_ms"], profile["xnnpack_ms"]
    lines = [f"time: interpreter invoke {result['interpreter_ms']:.3f} ms (median); "
             f"profiled invoke {profile['invoke_ms']:.3f} ms (mean), of which ops {ops_ms:.3f} ms "
             f"= builtin {builtin_ms:.3f} ms ({_share(builtin_ms, ops_ms).strip()}) "
             f"+ XNNPACK {xnnpack_ms:.3f} ms ({_share(xnnpack_ms, ops_ms).strip()})"]
    for problem in result["plan_mismatch"]:
        lines.append(f"  WARNING: profiled plan differs from the interpreter's: {problem}")
    lines.append(f"  {'op type':<44} {'kernel':<8} {'calls':>5} {'ms/run':>8} {'share':>6}")
    rows = profile["by_type"]
    for row in rows[:top]:
        lines.append(f"  {row['type'][:44]:<44} {row['kernel']:<8} {row['calls']:>5} "
                     f"{row['ms']:>8.3f} {_share(row['ms'], ops_ms)}")
    if len(rows) > top:
        rest = sum(row["ms"] for row in rows[top:])
        lines.append(f"  {f'({len(rows) - top} more types)':<44} {'':<8} {'':>5} "
                     f"{rest:>8.3f} {_share(rest, ops_ms)}")
    timed = [p for p in result["plan"]["partitions"] if "ms" in p]
    if timed:
        slowest = sorted(timed, key=lambda p: -p["ms"])[:3]
        lines.append("  slowest partitions: " + "; ".join(
            f"node {p['node']} ({p['ops']} ops: "
            + ", ".join(f"{t} {n}" for t, n in list(p["op_types"].items())[:3])
            + f") {p['ms']:.3f} ms" for p in slowest))
    return lines


def format_result(result: dict[str, Any], top: int) -> str:
    lines = [f"== {result['model']} [{result['kernels']} kernels, {result['threads']} "
             f"thread(s)] {result['path']}"]
    lines += format_plan(result["plan"])
    if "profile" in result:
        lines += format_profile(result, top)
    elif "timing_skipped" in result:
        lines.append(f"time: not measured: {result['timing_skipped']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help=".tflite files")
    parser.add_argument("--kernels", choices=("default", "builtin", "both"),
                        default="default", help="XNNPACK where it applies (default), the "
                                                "builtin kernels only, or both")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20, help="profiled (and timed) runs")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=12, help="op types listed per model")
    parser.add_argument("--no-timing", action="store_true", help="the plan only")
    parser.add_argument("--json", help="write every result to this file ('-': stdout)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="keep LiteRT's native log lines")
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_native_startup()
    missing = [str(path) for path in args.models if not path.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    kernels = ("default", "builtin") if args.kernels == "both" else (args.kernels,)
    results = []
    for path in args.models:
        for mode in kernels:
            result = profile_model(path, mode, args)
            results.append(result)
            if args.json != "-":
                print(format_result(result, args.top) + "\n", flush=True)
    if args.json:
        text = json.dumps(results, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 1 if any(r.get("plan_mismatch") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
