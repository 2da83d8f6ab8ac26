"""The report stage on the tiny exported run: every model a row, every figure measured,
the Markdown table with its XNNPACK plans and best-at-accuracy marks, the plots, and
`slimbert run` ending with the report."""

import json

import pytest

from pipeline.cli import main
from pipeline.report import best_at_accuracy
from tests.helpers import PRUNE, QUANTIZE, TINY, TRAINED, copy_run, manifest, run_stage

STAGES = ("prepare", "finetune", "evaluate", "prune", "quantize", "export")
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
    expected = {"Keras float", "Keras pruned",
                *(f"TFLite {v['description']}" for v in variants.values()),
                *(f"export {t}" for t in targets)}
    assert set(rows) == expected

    evaluation = manifest(reported, "evaluate")["metrics"]
    assert rows["Keras float"]["accuracy"] == evaluation["accuracy"]
    pruned = manifest(reported, "prune")["metrics"]
    assert rows["Keras pruned"]["accuracy"] == pruned["evaluation"]["accuracy"]
    assert rows["Keras pruned"]["sparsity"] == pruned["sparsity"]["overall"] >= 0.74
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
    assert "| quantize |" in text and "## Stage wall times" in text
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


def test_run_ends_with_the_report_and_stage_times(exported_run, tmp_path, easy_data,
                                                  capsys):
    run_dir = copy_run(exported_run, tmp_path, STAGES)
    args = ["run", "--config", TINY, "--run-dir", str(run_dir)]
    for item in (*easy_data, *TRAINED, *PRUNE, *QUANTIZE, *REPORT):
        args += ["--set", item]
    assert main(args) == 0  # the earlier stages are up to date: only the report runs
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
