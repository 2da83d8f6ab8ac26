"""Report: one table of every model the run made, with accuracy, size and speed.

Rows: the Keras float, pruned and distilled (student) models, every TFLite model of the
quantize stage (post-training variants and QAT), and every export (SavedModel and TFLite
targets). With a student, "where the compute goes" sets its parameters, FLOPs per
example and TFLite latencies beside the teacher's.
Accuracy and macro-F1 are the test-split figures the stages measured in the model's own
runtime (evaluate, prune, quantize in ai-edge-litert, export's fresh-process gate); sizes
are the files' bytes and their gzip bytes (level 6); sparsity is the measured zero fraction of
the pruned kernels. Speed is measured here, in the runtime a user would use (see
`export.latency`): batch-1 latency (median, p95) for each `report.threads` count, each
in its own process, and batch-`throughput_batch` examples/s on all cores. TFLite rows
show the export's XNNPACK plan (partitions, delegated share of the ops). Each row that
no model at least as accurate beats on latency or gzip size is marked (`best_at_accuracy`).

    <run-dir>/report/
        report.md      the table, stage time profile, plots, how each figure was measured
        report.json    the same data
        accuracy_vs_size.png, accuracy_vs_latency.png, training_curves.png
        latency.json   the raw latency measurements
        config.yaml, manifest.json
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

from core.timing import PHASES
from pipeline.cli import stage_main
from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

INPUTS = ("prepare", "finetune", "evaluate", "prune", "quantize", "export")
MB = 1e6
# "At its accuracy": another model counts as at least as accurate within half a point.
ACCURACY_TOLERANCE = 0.005


def input_names(config: PipelineConfig) -> tuple[str, ...]:
    """The stages it reports on, in pipeline order; the student's with distill on."""
    return ("prepare", "finetune", "evaluate", "prune",
            *(("distill",) if config.distill.enabled else ()), "quantize", "export")


def fingerprint_config(config: PipelineConfig) -> dict[str, Any]:
    return {"report": config.report, "split": config.evaluate.split}


def _manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / "manifest.json").read_text())


def collect_models(inputs: dict[str, Path]) -> list[dict[str, Any]]:
    """One row per model, with the accuracy and sizes its stage recorded."""
    from core.files import gzip_size

    prune_metrics = _manifest(inputs["prune"])["metrics"]
    pruned_sparsity = prune_metrics["sparsity"]["overall"]
    sparsity_of = {"finetune": 0.0, "prune": pruned_sparsity, "distill": 0.0}
    rows = []

    evaluation = _manifest(inputs["evaluate"])["metrics"]
    keras_models = [("finetune", "Keras float", evaluation),
                    ("prune", "Keras pruned", prune_metrics["evaluation"])]
    if "distill" in inputs:
        keras_models.append(("distill", "Keras student",
                             _manifest(inputs["distill"])["metrics"]["evaluation"]))
    for stage, name, metrics in keras_models:
        rows.append({"name": name, "stage": stage, "kind": "keras", "format": "keras",
                     "path": str(inputs[stage]), "file": str(inputs[stage] / "model.keras"),
                     **gzip_size(inputs[stage] / "model.keras"),
                     "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                     "sparsity": sparsity_of[stage], "measured_in": "tf_keras (evaluate)"})

    # The producing stages' manifests hold every file's sha256: identical TFLite models
    # (e.g. an export target copied from the quantize stage, compared without the
    # metadata the export adds) are timed once.
    digests = {stage: {rel: info["sha256"] for rel, info in
                       _manifest(inputs[stage])["files"].items()}
               for stage in ("quantize", "export")}
    variants = json.loads((inputs["quantize"] / "variants.json").read_text())
    for v in variants.values():
        path = inputs["quantize"] / v["file"]
        rows.append({"name": f"TFLite {v['description']}", "stage": "quantize",
                     "kind": "tflite", "format": "tflite", "path": str(path),
                     "file": str(path), "sha256": digests["quantize"][v["file"]],
                     "bytes": v["bytes"], "gzip_bytes": v["gzip_bytes"],
                     "accuracy": v["accuracy"], "macro_f1": v["macro_f1"],
                     "sparsity": v["sparsity"]["overall"] if v.get("sparsity")
                     else sparsity_of[v["source"]],
                     "census": v.get("census"),
                     "measured_in": "ai_edge_litert (quantize)"})

    verification = json.loads((inputs["export"] / "verification.json").read_text())
    for target, t in verification["targets"].items():
        path = inputs["export"] / t["path"]
        kind = target if target in ("savedmodel", "savedmodel-ids") else \
            "tflite-text" if target == "text" else "tflite"
        rows.append({"name": f"export {target}", "stage": "export", "kind": kind,
                     "format": "tflite" if kind.startswith("tflite") else "savedmodel",
                     "path": str(path), "file": str(path),
                     # The model without its MediaPipe metadata, if the export added it.
                     "sha256": t.get("model_sha256") or digests["export"].get(t["path"]),
                     "bytes": t["bytes"],
                     "gzip_bytes": t["gzip_bytes"], "accuracy": t["accuracy"],
                     "macro_f1": t["macro_f1"], "sparsity": sparsity_of.get(t["source"]),
                     "gate_passed": t["passed"], "gate_rule": t.get("rule"),
                     "agreement": t["agreement"], "xnnpack": t.get("xnnpack"),
                     "builtin_kernels": t.get("builtin_kernels"),
                     "measured_in": f"{t['verified_with']['runtime']} ("
                                    + ("quantize stage, the same file"
                                       if t["verified_with"].get("reused_from")
                                       else "export gate, fresh process") + ")"})
    # The quantize stage's files that export copied have the same XNNPACK plan.
    plans = {r["sha256"]: r["xnnpack"] for r in rows if r.get("xnnpack") and r["sha256"]}
    for row in rows:
        if not row.get("xnnpack"):
            row["xnnpack"] = plans.get(row.get("sha256")) if row["format"] == "tflite" \
                else None
    return rows


def best_at_accuracy(rows: list[dict[str, Any]], thread_label: str) -> None:
    """Mark the rows no other model beats at their accuracy: `row["best"]` gets
    "fastest" when no row with accuracy >= this one's - `ACCURACY_TOLERANCE` has a lower
    batch-1 median latency on `thread_label` threads, and "smallest" likewise for the
    gzip size (a Pareto front with half a point of slack).

    Example:
        >>> rows = [{"accuracy": 0.90, "gzip_bytes": 9, "latency": {"1": {"median_ms": 5}}},
        ...         {"accuracy": 0.80, "gzip_bytes": 8, "latency": {"1": {"median_ms": 6}}}]
        >>> best_at_accuracy(rows, "1"); [r["best"] for r in rows]
        [['fastest'], ['smallest']]
    """
    def latency(row):
        return row.get("latency", {}).get(thread_label, {}).get("median_ms")

    def gzip_bytes(row):
        return row.get("gzip_bytes")

    for row in rows:
        row["best"] = []
        for mark, figure in (("fastest", latency), ("smallest", gzip_bytes)):
            mine = figure(row)
            if mine is None:
                continue
            floor = row["accuracy"] - ACCURACY_TOLERANCE - 1e-9
            if not any(other is not row and other["accuracy"] >= floor
                       and figure(other) is not None and figure(other) < mine
                       for other in rows):
                row["best"].append(mark)


def measure_speed(rows: list[dict[str, Any]], config: PipelineConfig, prep_dir: Path,
                  work_dir: Path) -> list[dict[str, Any]]:
    """Latency of every row (each distinct file once), one process per thread count."""
    from data.input import split_arrays
    from data.tokenizer import read_tokenizer_config
    from export.latency import measure_in_fresh_process
    from export.verify import write_split

    cfg = config.report
    max_seq_length = read_tokenizer_config(prep_dir)["max_seq_length"]
    features, texts, labels = split_arrays(prep_dir, config.evaluate.split, max_seq_length)
    n = min(cfg.examples, len(texts))
    data = work_dir / "latency-data.npz"
    write_split(data, {k: v[:n] for k, v in features.items()}, texts[:n], labels[:n])

    keys: dict[str, str] = {}  # row name -> the name it is measured under
    models, seen = [], {}
    for row in rows:
        digest = row.get("sha256") or row["path"]
        if digest in seen:
            keys[row["name"]] = seen[digest]
            row["same_file_as"] = seen[digest]
            continue
        seen[digest] = keys[row["name"]] = row["name"]
        models.append({"name": row["name"], "kind": row["kind"], "path": row["path"]})

    all_cores = os.cpu_count() or 1
    widest = max(cfg.threads, key=lambda t: t or all_cores)
    measurements = []
    for threads in cfg.threads:
        spec = {"threads": threads, "runs": cfg.latency_runs, "warmup": cfg.warmup,
                "batch": cfg.throughput_batch, "models": models,
                "throughput_runs": cfg.throughput_runs if threads == widest else 0}
        started = time.perf_counter()
        log.info("timing %d models with %s thread(s)", len(models),
                 threads or f"all {all_cores}")
        results = measure_in_fresh_process(spec, data, work_dir)
        log.info("timed in %.1f s", time.perf_counter() - started)
        measurements.extend(results)
        by_name = {r["name"]: r for r in results}
        for row in rows:
            result = by_name[keys[row["name"]]]
            label = "all" if threads == 0 else str(threads)
            row.setdefault("latency", {})[label] = {"threads": result["threads"],
                                                    **result["batch1"]}
            row["runtime"] = result["runtime"]
            if "throughput" in result:
                row["throughput"] = result["throughput"]
    return measurements


# === Rendering ===

def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    rows, thread_labels = report["models"], report["thread_labels"]
    head = ["model", "runtime", "accuracy %", "macro-F1", "size MB", "gzip MB", "sparsity",
            "XNNPACK partitions", "delegated ops"]
    for label in thread_labels:
        what = "1 thread" if label == "1" else f"{label} threads"
        head += [f"b1 p50 ms ({what})", f"b1 p95 ms ({what})"]
    batch = report["settings"]["throughput_batch"]
    first = "1 thread" if thread_labels[0] == "1" else f"{thread_labels[0]} threads"
    head += [f"b{batch} ex/s", "gate", "best at its accuracy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], r.get("runtime", "-"), _fmt(100 * r["accuracy"], ".2f"),
                 _fmt(r["macro_f1"], ".4f"), _fmt(r["bytes"] / MB, ".1f"),
                 _fmt(r["gzip_bytes"] / MB, ".1f"),
                 _fmt(None if r["sparsity"] is None else 100 * r["sparsity"], ".1f") + "%"]
        plan = r.get("xnnpack") or {}
        cells += [_fmt(plan.get("partitions"), "d"),
                  _fmt(None if not plan else 100 * plan["delegated_share"], ".1f")
                  + ("%" if plan else "")]
        for label in thread_labels:
            lat = r.get("latency", {}).get(label, {})
            cells += [_fmt(lat.get("median_ms"), ".1f"), _fmt(lat.get("p95_ms"), ".1f")]
        tp = r.get("throughput") or {}
        cells.append(_fmt(tp.get("examples_per_second"), ".1f")
                     + (" (1 at a time)" if tp.get("batch_emulated") else ""))
        cells.append({True: "pass", False: "FAIL"}.get(r.get("gate_passed"), "-"))
        cells.append(", ".join(r.get("best", [])))
        lines.append("| " + " | ".join(cells) + " |")

    m = report["machine"]
    out = [f"# slimbert report: {report['run_dir']}", "",
           f"Measured {report['created_at']} on {m['platform']} ({m['cpu_count']} CPUs, "
           f"{m['cpu'] or 'unknown CPU'}), Python {m['python']}, TensorFlow "
           f"{m['tensorflow']}. Test split: {report['split']['examples']} examples.", "",
           "## Models", "", *lines, "",
           "Best at its accuracy: fastest if no other model with an accuracy at least "
           f"this one's minus {100 * ACCURACY_TOLERANCE:g} point has a lower batch-1 median "
           f"latency on {first}; smallest likewise for the gzip size.", "",
           "Accuracy and macro-F1: the test split in each model's own runtime, as the stage "
           "that made it measured it (`measured_in` in report.json). Sizes: the file (the "
           "SavedModel folder) and its gzip size (level 6). Sparsity: zero fraction of the pruned "
           "kernels. XNNPACK partitions, delegated ops: the delegate nodes of the runtime's "
           "default XNNPACK delegate and the share of the model's ops they run (export's "
           "plan; ops outside it by type in verification.json). Latency: one example per "
           "call, "
           f"{report['settings']['latency_runs']} calls after "
           f"{report['settings']['warmup']} warm-up calls, cycling through "
           f"{report['settings']['examples']} test examples; token-id models get them "
           f"padded to {report['split']['max_seq_length']} tokens, the SavedModel and the text "
           "model get the raw text (tokenization included). Each thread count runs in its "
           f"own process. b{batch} ex/s: examples per second at batch {batch} on all "
           "cores (\"1 at a time\": the model runs batch 1 only, so the batch is "
           "looped).", ""]
    kernels = [r for r in rows if r.get("builtin_kernels")]
    if kernels:
        out += ["## TFLite exports on other kernels", "",
                "The same file on the runtime's builtin kernels instead of its default "
                "XNNPACK delegate (recorded by export, not gated). Agreement: the fraction "
                "of test examples with the same predicted label.", "",
                "| model | accuracy % (default) | accuracy % (builtin) | agreement with "
                "default | agreement with source |", "|---|---|---|---|---|"]
        for r in kernels:
            b = r["builtin_kernels"]
            out.append(f"| {r['name']} | {100 * r['accuracy']:.2f} | "
                       f"{100 * b['accuracy']:.2f} | "
                       f"{100 * b['agreement_with_default_kernels']:.2f}% | "
                       f"{100 * b['agreement']:.2f}% |")
        out.append("")
    same = [f"{r['name']} = {r['same_file_as']}" for r in rows if r.get("same_file_as")]
    if same:
        out += ["Identical files, timed once: " + "; ".join(same) + ".", ""]
    if report.get("compute"):
        out += _compute_markdown(report["compute"])
    out += _profile_markdown(report["stage_seconds"], report.get("stage_timings", {}))
    out += ["## Plots", ""]
    out += [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(out) + "\n"


def _profile_markdown(seconds: dict[str, float], timings: dict[str, dict | None]
                      ) -> list[str]:
    """The stage time profile: each stage's wall seconds split by phase (its manifest's
    `timings`; `-` for a manifest written before they were recorded)."""
    found = {p for t in timings.values() if t for p in t if p != "other"}
    phases = [p for p in PHASES if p in found] + sorted(found - set(PHASES)) + ["other"]
    out = ["## Stage time profile", "",
           "Wall seconds of each stage by phase (`timings` in its manifest.json): a phase "
           "inside another counts only for itself, e.g. validation during training is "
           "evaluate; other is the rest.", "",
           "| stage | " + " | ".join(phases) + " | total |", "|---" * (len(phases) + 2) + "|"]
    totals = dict.fromkeys(phases, 0.0)
    for stage, total in seconds.items():
        t = timings.get(stage)
        cells = ["-"] * len(phases) if not t else [
            f"{t[p]['seconds']:.1f}" if p in t else "" for p in phases]
        for p in phases:
            totals[p] += t[p]["seconds"] if t and p in t else 0.0
        out.append(f"| {stage} | " + " | ".join(cells) + f" | {total:.1f} |")
    out += ["| total (before report) | " + " | ".join(f"{totals[p]:.1f}" for p in phases)
            + f" | {sum(seconds.values()):.1f} |", ""]
    return out


def plots(report: dict[str, Any], out_dir: Path, histories: dict[str, list]) -> list[str]:
    """Accuracy against gzip size and against latency, and the training curves."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["models"] if not r.get("same_file_as")]
    label = report["thread_labels"][-1]
    files = []
    for name, key, xlabel in (
            ("accuracy_vs_size.png", lambda r: r["gzip_bytes"] / MB, "gzip size (MB)"),
            ("accuracy_vs_latency.png",
             lambda r: r.get("latency", {}).get(label, {}).get("median_ms"),
             f"batch-1 latency, median ms ({label} threads)")):
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for r in rows:
            x = key(r)
            if x is None:
                continue
            ax.scatter(x, 100 * r["accuracy"], s=30)
            ax.annotate(r["name"], (x, 100 * r["accuracy"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel + ", log scale")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        files.append(name)

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for run, history in histories.items():
        epochs = [h["epoch"] for h in history]
        loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label=run)
        acc_ax.plot(epochs, [100 * h["val_accuracy"] for h in history], marker="o",
                    label=run)
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="training loss")
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "training_curves.png", dpi=110)
    plt.close(fig)
    return [*files, "training_curves.png"]


def compute_table(rows: list[dict[str, Any]], distill_metrics: dict[str, Any],
                  thread_label: str) -> dict[str, Any]:
    """Where the compute goes: the teacher's and the student's parameters, FLOPs per
    example (the distill stage's counts) and the batch-1 latency of their TFLite exports
    on `thread_label` threads, with the teacher / student ratios."""
    def latency(target):
        row = next((r for r in rows if r["name"] == f"export {target}"), None)
        return None if row is None else row.get("latency", {}).get(
            thread_label, {}).get("median_ms")

    params, flops = distill_metrics["parameters"], distill_metrics["flops_per_example"]
    table = {"threads": thread_label, "seq_length": flops["seq_length"],
             "parameters": {"teacher": params["teacher"], "student": params["student"],
                            "ratio": params["ratio"]},
             "flops": {"teacher": flops["teacher"], "student": flops["student"],
                       "ratio": flops["ratio"]},
             "latency_ms": {}}
    for teacher, student in (("cpu", "student-cpu"), ("int8", "student-int8"),
                             ("qat", "student-qat"), ("gpu", "student-gpu")):
        t, st = latency(teacher), latency(student)
        if t is not None or st is not None:
            table["latency_ms"][student.removeprefix("student-")] = {
                "teacher": t, "student": st,
                "ratio": round(t / st, 3) if t and st else None}
    return table


def _compute_markdown(table: dict[str, Any]) -> list[str]:
    p, f = table["parameters"], table["flops"]
    what = "1 thread" if table["threads"] == "1" else f"{table['threads']} threads"
    lines = ["## Where the compute goes (teacher and student)", "",
             "| | teacher | student | teacher / student |", "|---|---|---|---|",
             f"| parameters | {p['teacher']['total'] / 1e6:.2f} M | "
             f"{p['student']['total'] / 1e6:.2f} M | {p['ratio']:.2f}x |"]
    for part in ("word_embeddings", "other_embeddings", "encoder", "head"):
        a, b = p["teacher"][part], p["student"][part]
        ratio = f"{a / b:.2f}x" if b else "-"
        lines.append(f"| - {part.replace('_', ' ')} | {a / 1e6:.2f} M | {b / 1e6:.2f} M | "
                     f"{ratio} |")
    lines.append(f"| FLOPs per example ({table['seq_length']} tokens) | "
                 f"{f['teacher'] / 1e6:.1f} M | {f['student'] / 1e6:.1f} M | "
                 f"{f['ratio']:.2f}x |")
    for variant, lat in table["latency_ms"].items():
        lines.append(f"| `{variant}` TFLite, batch 1, {what} (ms) | "
                     f"{_fmt(lat['teacher'], '.2f')} | {_fmt(lat['student'], '.2f')} | "
                     f"{_fmt(lat['ratio'], '.2f')}{'x' if lat['ratio'] else ''} |")
    return [*lines, "", "FLOPs: the matmuls of encoder and head (2 per multiply-add) at "
            "the exported sequence length; latencies from the table above (teacher: "
            "`export <variant>`, student: `export student-<variant>`).", ""]


def _histories(inputs: dict[str, Path]) -> dict[str, list]:
    found = {"fine-tune": inputs["finetune"] / "history.json",
             "prune": inputs["prune"] / "history.json"}
    if "distill" in inputs:
        found["distill"] = inputs["distill"] / "history.json"
    for path in sorted((inputs["quantize"]).glob("*/qat_history.json")):
        found[f"QAT of {path.parent.name}"] = path
    return {name: json.loads(p.read_text()) for name, p in found.items() if p.is_file()}


def run(config: PipelineConfig, inputs: dict[str, Path], out_dir: Path,
        work_dir: Path) -> dict[str, Any]:
    import tensorflow as tf

    from data.tokenizer import read_tokenizer_config
    from pipeline.artifacts import machine_info

    rows = collect_models(inputs)
    work_dir.mkdir(parents=True, exist_ok=True)
    measurements = measure_speed(rows, config, inputs["prepare"], work_dir)
    thread_labels = ["all" if t == 0 else str(t) for t in config.report.threads]
    best_at_accuracy(rows, thread_labels[0])
    compute = compute_table(rows, _manifest(inputs["distill"])["metrics"],
                            thread_labels[0]) if "distill" in inputs else None
    tokenizer = read_tokenizer_config(inputs["prepare"])
    examples = _manifest(inputs["evaluate"])["metrics"]["examples"]
    report = {
        "run_dir": str(inputs["export"].parent),
        "created_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {**machine_info(), "python": platform.python_version(),
                    "tensorflow": tf.__version__},
        "split": {"name": config.evaluate.split, "examples": examples,
                  "max_seq_length": tokenizer["max_seq_length"]},
        "settings": {k: getattr(config.report, k) for k in
                     ("latency_runs", "warmup", "threads", "throughput_batch",
                      "throughput_runs", "examples")},
        "thread_labels": thread_labels,
        "stage_seconds": {s: _manifest(inputs[s])["duration_s"] for s in inputs},
        "stage_timings": {s: _manifest(inputs[s]).get("timings") for s in inputs},
        "models": rows,
        "compute": compute,
    }
    report["plots"] = plots(report, out_dir, _histories(inputs))
    report["settings"]["threads"] = list(report["settings"]["threads"])
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(report), encoding="utf-8")
    (out_dir / "latency.json").write_text(json.dumps(measurements, indent=1) + "\n")
    log.info("report: %s", out_dir.parent / "report" / "report.md")
    return {"models": len(rows), "report": "report.md",
            "stage_seconds": report["stage_seconds"], "compute": compute}


if __name__ == "__main__":
    stage_main("report")
