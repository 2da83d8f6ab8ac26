"""The report stage on the tiny exported run: every model a row, every figure measured,
the Markdown table with its XNNPACK plans and best-at-accuracy marks, the plots, and
`slimbert run` ending with the report."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from data.features import INPUT_NAMES
from pipeline.cli import main
from pipeline.report import best_at_accuracy, compute_table
from tests.helpers import (
    EXPORT,
    PRUNE,
    QUANTIZE,
    TINY,
    TRAINED,
    copy_run,
    manifest,
    run_stage,
)

STAGES = ("prepare", "finetune", "evaluate", "prune", "distill", "quantize", "export")
REPORT = ["report.latency_runs=4", "report.warmup=1", "report.throughput_runs=1",
          "report.throughput_batch=8", "report.examples=8"]


@pytest.fixture(scope="module")
def reported(exported_run, tmp_path_factory, easy_data):
    run_dir = copy_run(exported_run, tmp_path_factory.mktemp("reported"), STAGES)
    assert run_stage("report", run_dir, *easy_data, *TRAINED, *PRUNE, *QUANTIZE,
                     *REPORT) == 0
    return run_dir


def test_every_model_is_a_row_with_its_stage_figures(reported):
    report = json.loads((reported / "report" / "report.json").read_text())
    rows = {r["name"]: r for r in report["models"]}
    variants = json.loads((reported / "quantize" / "variants.json").read_text())
    targets = manifest(reported, "export")["metrics"]["targets"]
    expected = {"Keras float", "Keras pruned", "Keras student",
                *(f"TFLite {v['description']}" for v in variants.values()),
                *(f"export {t}" for t in targets)}
    assert set(rows) == expected

    evaluation = manifest(reported, "evaluate")["metrics"]
    assert rows["Keras float"]["accuracy"] == evaluation["accuracy"]
    pruned = manifest(reported, "prune")["metrics"]
    assert rows["Keras pruned"]["accuracy"] == pruned["evaluation"]["accuracy"]
    assert rows["Keras pruned"]["sparsity"] == pruned["sparsity"]["overall"] >= 0.74
    student = manifest(reported, "distill")["metrics"]["evaluation"]
    assert rows["Keras student"]["accuracy"] == student["accuracy"]
    assert rows["Keras student"]["sparsity"] == 0.0
    assert rows["Keras student"]["file"] == str(reported / "distill" / "model.keras")
    for v in variants.values():
        row = rows[f"TFLite {v['description']}"]
        assert (row["accuracy"], row["bytes"]) == (v["accuracy"], v["bytes"])
    for target, t in targets.items():
        assert rows[f"export {target}"]["gate_passed"] == t["passed"]
        assert rows[f"export {target}"]["gate_rule"] == t["rule"]
        assert rows[f"export {target}"]["builtin_kernels"] == t.get("builtin_kernels")
        assert rows[f"export {target}"]["xnnpack"] == t.get("xnnpack")
    # A quantize file that export copied shows the export's XNNPACK plan.
    assert rows["TFLite float cpu"]["xnnpack"] == targets["cpu"]["xnnpack"]
    assert rows["Keras float"]["xnnpack"] is None
    for row in rows.values():
        assert 0 < row["gzip_bytes"] < row["bytes"] * 1.01
    stage_seconds = {s: manifest(reported, s)["duration_s"] for s in STAGES}
    assert report["stage_seconds"] == stage_seconds


def test_speed_is_measured_for_every_model_and_thread_count(reported):
    report = json.loads((reported / "report" / "report.json").read_text())
    assert report["thread_labels"] == ["1", "all"]
    runtimes = {"keras": "tf_keras", "savedmodel": "tensorflow",
                "savedmodel-ids": "tensorflow"}
    for row in report["models"]:
        assert row["runtime"] == runtimes.get(row["kind"], "ai_edge_litert"), row["name"]
        for label in ("1", "all"):
            lat = row["latency"][label]
            assert 0 < lat["median_ms"] <= lat["p95_ms"], (row["name"], lat)
            assert lat["calls"] == 4
        assert row["latency"]["1"]["threads"] == 1
        assert row["throughput"]["batch"] == 8
        assert row["throughput"]["examples_per_second"] > 0
    # The export's cpu model is the quantize stage's dynamic-range file: timed once.
    rows = {r["name"]: r for r in report["models"]}
    assert rows["export cpu"]["same_file_as"] == "TFLite float cpu"
    assert rows["export cpu"]["latency"] == rows["TFLite float cpu"]["latency"]
    raw = json.loads((reported / "report" / "latency.json").read_text())
    assert len(raw) == 2 * len([r for r in report["models"] if not r.get("same_file_as")])


def test_latency_process_takes_paths_relative_to_the_callers_folder(
        reported, tmp_path, monkeypatch):
    """The timing process runs from the repository root: a run folder given relative to
    the user's folder must still be found (`--run-dir runs/x` from anywhere)."""
    from export.latency import measure_in_fresh_process
    from export.verify import write_split

    model = next((reported / "quantize").rglob("*.tflite"))
    work = tmp_path / "work"
    work.mkdir()
    features = {k: np.ones((2, 128), np.int32) for k in INPUT_NAMES}  # >= any seq length
    write_split(work / "data.npz", features, ["a", "b"], np.array([0, 1]))
    monkeypatch.chdir(tmp_path)
    spec = {"threads": 1, "runs": 2, "warmup": 1, "batch": 2, "throughput_runs": 0,
            "models": [{"name": "m", "kind": "tflite",
                        "path": os.path.relpath(model, tmp_path)}]}
    [result] = measure_in_fresh_process(spec, Path("work/data.npz"), Path("work"))
    assert result["name"] == "m" and result["batch1"]["calls"] == 2
    assert result["batch1"]["median_ms"] > 0


def test_best_at_accuracy_marks():
    """Fastest (smallest): no other model within half a point or more accurate is
    faster (smaller)."""
    rows = [{"name": name, "accuracy": accuracy, "gzip_bytes": size,
             "latency": {"1": {"median_ms": ms}}}
            for name, accuracy, ms, size in (("a", 0.900, 10.0, 100), ("b", 0.897, 5.0, 200),
                                             ("c", 0.850, 1.0, 50), ("d", 0.800, 2.0, 40),
                                             ("e", 0.700, 3.0, 60))]
    rows.append({"name": "untimed", "accuracy": 0.99, "gzip_bytes": 300})
    best_at_accuracy(rows, "1")
    assert {r["name"]: r["best"] for r in rows} == {
        "a": ["smallest"], "b": ["fastest"], "c": ["fastest", "smallest"],
        "d": ["smallest"], "e": [], "untimed": ["smallest"]}


def test_markdown_table_and_plots(reported):
    out = reported / "report"
    text = (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    table = [line for line in text.splitlines() if line.startswith("| ")]
    names = [line.split(" | ")[0][2:] for line in table]
    head = table[0].split(" | ")
    assert "XNNPACK partitions" in head and head[-1] == "best at its accuracy |"
    for row in report["models"]:
        assert row["name"] in names
        line = table[names.index(row["name"])]
        assert f"{100 * row['accuracy']:.2f}" in line
        assert f"{row['latency']['1']['median_ms']:.1f}" in line
        assert line.endswith(f"| {', '.join(row['best'])} |")
        if row["xnnpack"]:
            plan = row["xnnpack"]
            assert f" | {plan['partitions']} | {100 * plan['delegated_share']:.1f}% | " \
                in line
    # The fastest and the smallest model overall are always marked.
    fastest = min(report["models"], key=lambda r: r["latency"]["1"]["median_ms"])
    smallest = min(report["models"], key=lambda r: r["gzip_bytes"])
    assert "fastest" in fastest["best"] and "smallest" in smallest["best"]
    assert "Best at its accuracy: fastest if no other model" in text
    profile = text.split("## Stage time profile")[1].split("\n## ")[0]
    header = next(line for line in profile.splitlines() if line.startswith("| stage |"))
    assert header.startswith("| stage | train | evaluate |")
    assert header.endswith("| other | total |")
    rows = {line.split(" | ")[0][2:]: line for line in profile.splitlines()
            if line.startswith("| ") and line != header}
    for stage in STAGES:
        timings = manifest(reported, stage)["timings"]
        assert report["stage_timings"][stage] == timings
        assert rows[stage].endswith(
            f" | {timings['other']['seconds']:.1f} | {report['stage_seconds'][stage]:.1f} |")
    assert "convert" in report["stage_timings"]["quantize"]
    assert "latency" in manifest(reported, "report")["timings"]
    # The exports also run on the builtin kernels (the fixture's export.compare_kernels).
    kernels = text.split("## TFLite exports on other kernels")[1].split("\n## ")[0]
    targets = manifest(reported, "export")["metrics"]["targets"]
    for target in ("gpu", "int8", "qat", "pruned-qat"):
        builtin = targets[target]["builtin_kernels"]
        assert f"| export {target} | {100 * targets[target]['accuracy']:.2f} | " \
            f"{100 * builtin['accuracy']:.2f} | " in kernels, target
    assert "| export cpu |" not in kernels
    for name in ("accuracy_vs_size.png", "accuracy_vs_latency.png", "training_curves.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
        assert f"]({name})" in text


def test_compute_table_sets_the_student_against_the_teacher(reported):
    """'Where the compute goes': the distill stage's parameter and FLOP counts, and the
    batch-1 latencies of each teacher export and its student-* twin from the model
    rows, with the teacher / student ratios; in report.json, the manifest and the
    Markdown."""
    report = json.loads((reported / "report" / "report.json").read_text())
    rows = {r["name"]: r for r in report["models"]}
    distill = manifest(reported, "distill")["metrics"]
    compute = report["compute"]
    assert manifest(reported, "report")["metrics"]["compute"] == compute
    assert compute["threads"] == "1" and compute["seq_length"] == 32
    assert compute["parameters"] == {"teacher": distill["parameters"]["teacher"],
                                     "student": distill["parameters"]["student"],
                                     "ratio": distill["parameters"]["ratio"]}
    assert compute["flops"] == {k: distill["flops_per_example"][k]
                                for k in ("teacher", "student", "ratio")}
    assert sorted(compute["latency_ms"]) == ["cpu", "gpu", "int8", "qat"]
    for variant, lat in compute["latency_ms"].items():
        teacher = rows[f"export {variant}"]["latency"]["1"]["median_ms"]
        student = rows[f"export student-{variant}"]["latency"]["1"]["median_ms"]
        assert (lat["teacher"], lat["student"]) == (teacher, student) and student > 0
        assert lat["ratio"] == round(teacher / student, 3)

    text = (reported / "report" / "report.md").read_text()
    section = text.split("## Where the compute goes (teacher and student)")[1]
    section = section.split("\n## ")[0]
    p = compute["parameters"]
    assert f"| parameters | {p['teacher']['total'] / 1e6:.2f} M | " \
        f"{p['student']['total'] / 1e6:.2f} M | {p['ratio']:.2f}x |" in section
    f = compute["flops"]
    assert f"| FLOPs per example (32 tokens) | {f['teacher'] / 1e6:.1f} M | " \
        f"{f['student'] / 1e6:.1f} M | {f['ratio']:.2f}x |" in section
    lat = compute["latency_ms"]["int8"]
    assert f"| `int8` TFLite, batch 1, 1 thread (ms) | {lat['teacher']:.2f} | " \
        f"{lat['student']:.2f} | {lat['ratio']:.2f}x |" in section


def test_compute_table_without_a_student_export():
    """A variant exported for only one side is listed with the other's latency and the
    ratio missing; one exported for neither is left out."""
    rows = [{"name": "export cpu", "latency": {"1": {"median_ms": 4.0}}},
            {"name": "export student-cpu", "latency": {"1": {"median_ms": 1.0}}},
            {"name": "export int8", "latency": {"1": {"median_ms": 3.0}}},
            {"name": "export student-gpu", "latency": {"all": {"median_ms": 2.0}}}]
    counts = {"parameters": {"teacher": {"total": 10}, "student": {"total": 5}, "ratio": 2.0},
              "flops_per_example": {"seq_length": 8, "teacher": 40, "student": 10,
                                    "ratio": 4.0}}
    table = compute_table(rows, counts, "1")
    assert table["latency_ms"] == {
        "cpu": {"teacher": 4.0, "student": 1.0, "ratio": 4.0},
        "int8": {"teacher": 3.0, "student": None, "ratio": None}}
    assert table["flops"] == {"teacher": 40, "student": 10, "ratio": 4.0}
    assert table["seq_length"] == 8 and table["threads"] == "1"


def test_run_ends_with_the_report_and_stage_times(exported_run, tmp_path, easy_data,
                                                  capsys):
    run_dir = copy_run(exported_run, tmp_path, STAGES)
    args = ["run", "--config", TINY, "--run-dir", str(run_dir)]
    for item in (*easy_data, *TRAINED, *PRUNE, *QUANTIZE, *EXPORT, *REPORT):
        args += ["--set", item]
    assert main(args) == 0  # the earlier stages are up to date: only the report runs
    for stage in STAGES:
        assert manifest(run_dir, stage) == manifest(exported_run, stage), stage
    out = capsys.readouterr().out
    for stage in (*STAGES, "report", "total"):
        assert any(line.split()[0] == stage for line in out.splitlines() if line.strip())
    assert f"report: {run_dir / 'report' / 'report.md'}" in out
    assert (run_dir / "report" / "report.md").is_file()


def test_report_needs_the_export(quantized_run, tmp_path, easy_data, capsys):
    run_dir = copy_run(quantized_run, tmp_path)
    assert run_stage("report", run_dir, *easy_data, *TRAINED, *PRUNE, *QUANTIZE) == 2
    err = capsys.readouterr().err
    assert "needs the 'export' artifact" in err
    assert not (run_dir / "report").exists()


def test_bad_report_config(tmp_path, capsys):
    assert run_stage("report", tmp_path, "report.threads=[1, 1]") == 2
    assert "report.threads" in capsys.readouterr().err
