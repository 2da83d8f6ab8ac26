"""The per-op profile of the tiny exports: the interpreter's plan after XNNPACK
delegation accounts for every op once, and LiteRT's profiler runs the same plan."""

from collections import Counter

import pytest

from export.flatbuffer import op_census
from export.op_profile import attach_profile, execution_plan, profile_ops


@pytest.fixture(scope="module")
def tflite_dir(exported_run):
    return exported_run / "export" / "tflite"


def _check_counts(plan, model_ops):
    assert plan["ops"] == model_ops
    assert plan["delegated_ops"] + plan["builtin_ops"] == plan["ops"]
    assert sum(p["ops"] for p in plan["partitions"]) == plan["delegated_ops"]
    assert sum(plan["builtin"].values()) == plan["builtin_ops"]
    assert sum(plan["builtin_signatures"].values()) == plan["builtin_ops"]
    assert Counter(s.split()[0] for s in plan["builtin_nodes"].values()) == plan["builtin"]
    for partition in plan["partitions"]:
        assert partition["node"] >= plan["ops"]  # delegate nodes follow the model's ops
        assert sum(partition["op_types"].values()) == partition["ops"] >= 1


def test_cpu_plan_accounts_for_every_op(tflite_dir):
    path = tflite_dir / "slimbert-cpu.tflite"
    model_ops = op_census(path.read_bytes())["total_ops"]
    plan = execution_plan(path)
    _check_counts(plan, model_ops)
    assert len(plan["partitions"]) >= 1
    assert plan["delegated_share"] == pytest.approx(plan["delegated_ops"] / model_ops,
                                                    abs=1e-4)
    # The matmuls of the dynamic-range model all run in XNNPACK.
    assert "FULLY_CONNECTED" not in plan["builtin"]
    assert "BATCH_MATMUL" not in plan["builtin"]

    builtin = execution_plan(path, kernels="builtin")
    _check_counts(builtin, model_ops)
    assert builtin["partitions"] == [] and builtin["builtin_ops"] == model_ops


def test_int8_profile_runs_the_interpreters_plan(tflite_dir):
    path = tflite_dir / "slimbert-int8.tflite"
    plan = execution_plan(path)
    _check_counts(plan, op_census(path.read_bytes())["total_ops"])
    # XNNPACK takes every matmul (the attention's with zero-point-0 right-hand inputs),
    # the float LayerNorm and softmax; int8 GELU, which it takes in float only, stays on
    # the builtin kernels.
    assert plan["builtin"]["GELU"] >= 1
    assert not {"FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX"} & set(plan["builtin"])

    profile = profile_ops(path, runs=3, warmup=1)
    assert attach_profile(plan, profile) == []
    builtin_rows = [row for row in profile["by_type"] if row["kernel"] == "builtin"]
    assert sum(row["calls"] for row in builtin_rows) == plan["builtin_ops"]
    assert {row["type"] for row in builtin_rows} == set(plan["builtin"])
    assert sorted(profile["builtin_nodes"]) == sorted(plan["builtin_nodes"])
    assert all(node["signature"].startswith(node["type"])
               for node in profile["builtin_nodes"].values())
    timed = [p for p in plan["partitions"] if p["xnnpack_ops"]]
    assert len(timed) == len(profile["partitions"]) >= 1
    assert profile["ops_ms"] == pytest.approx(profile["builtin_ms"] + profile["xnnpack_ms"],
                                              abs=1e-3)
    assert profile["invoke_ms"] > 0
