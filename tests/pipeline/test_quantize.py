"""The quantize stage on the tiny easy-task run: QAT and PQAT int8 TFLite models evaluated
in ai-edge-litert, post-training variants, manifest, inputs chosen by the config."""

import json
import shutil

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from data.input import read_split
from export.flatbuffer import op_census
from tests.helpers import TRAINED, manifest, run_stage


def test_every_variant_is_written_evaluated_and_integer(quantized_run):
    m = manifest(quantized_run, "quantize")
    assert sorted(m["inputs"]) == ["distill", "finetune", "prepare", "prune"]
    variants = json.loads((quantized_run / "quantize" / "variants.json").read_text())
    assert sorted(variants) == [f"{s}/{k}" for s in ("distill", "finetune", "prune")
                                for k in ("cpu", "int8", "qat")]
    layers = {"finetune": 2, "prune": 2, "distill": 1}  # the student keeps 1 of 2
    # Dynamic-range int8 only takes kernels of >= 1024 weights (the converter's
    # threshold): all 6 per teacher layer; of the student's (32x16 q/k/v, 16x32 output,
    # 32x32 FFN in and out) the 2 FFN kernels.
    hybrid = {"finetune": 12, "prune": 12, "distill": 2}
    test_size = sum(1 for _ in read_split(quantized_run / "prepare", "test", with_text=False))
    for name, v in variants.items():
        path = quantized_run / "quantize" / v["file"]
        assert path.stat().st_size == v["bytes"] == m["metrics"]["variants"][name]["bytes"]
        assert v["metrics"]["examples"] == test_size
        # The easy task (float accuracy >= 0.9) survives every quantization.
        assert v["accuracy"] >= 0.85, name
        assert v["agreement_with_source"] >= 0.9, name
        census = v["census"]
        # 8 per layer + classifier, + one per FFN output with outlier channels.
        splits = len(m["metrics"]["qat"][v["source"]]["outlier_channels"]) \
            if v["variant"] == "qat" else 0
        matmuls = 8 * layers[v["source"]] + 1 + splits
        assert census["matmuls"] == matmuls, name
        if v["variant"] in ("int8", "qat"):
            assert census["int8_matmuls"] == matmuls, name
            assert census["float_matmuls"] == 0, name
            assert v["ops"]["BATCH_MATMUL int8,int8->int8"] == 2 * layers[v["source"]]
        else:
            assert census["hybrid_matmuls"] == hybrid[v["source"]], name
    # The student's first op maps the teacher's token ids to its rows (int32 GATHER).
    for variant in ("cpu", "int8", "qat"):
        assert variants[f"distill/{variant}"]["ops"]["GATHER int32,int32->int32"] >= 1
        assert variants[f"distill/{variant}"]["bytes"] < \
            variants[f"finetune/{variant}"]["bytes"] / 4
    # Files are what the manifest says: reload one and recompute its accuracy.
    flat = (quantized_run / "quantize" / "finetune" / "qat.tflite").read_bytes()
    assert op_census(flat)["int8_matmuls"] == \
        variants["finetune/qat"]["census"]["int8_matmuls"]
    Interpreter(model_content=flat).allocate_tensors()
    for name in ("labels.txt", "vocab.txt", "tokenizer.json"):
        assert (quantized_run / "quantize" / name).read_bytes() == \
            (quantized_run / "prepare" / name).read_bytes()


def test_prune_preserving_qat_keeps_the_sparsity(quantized_run):
    m = manifest(quantized_run, "quantize")["metrics"]
    report = m["qat"]["prune"]
    assert report["sparsity_before"]["kernels"] == 12
    assert report["sparsity_before"]["min"] == pytest.approx(0.75, abs=0.01)
    assert report["sparsity_after"]["min"] >= report["sparsity_before"]["min"]
    assert report["training"]["steps"] > 0
    variants = json.loads((quantized_run / "quantize" / "variants.json").read_text())
    # In the int8 weights the runtime reads: 12 encoder kernels, still >= 75% zeros.
    converted = variants["prune/qat"]["sparsity"]
    assert converted["kernels"] == 12 and converted["min"] >= 0.74
    pruned = manifest(quantized_run, "prune")["metrics"]["sparsity"]["overall"]
    assert converted["overall"] == pytest.approx(pruned, abs=0.01)  # zeros / all weights
    assert report["sparsity_after"]["overall"] == pytest.approx(pruned, abs=1e-4)
    assert "sparsity" not in variants["finetune/qat"]
    assert "sparsity_before" not in m["qat"]["finetune"]
    history = json.loads((quantized_run / "quantize" / "prune" / "qat_history.json").read_text())
    assert history and np.isfinite(history[-1]["val_accuracy"])


def test_sources_decide_the_inputs(trained_run, tmp_path, easy_data, capsys):
    """Quantizing only the float model needs no prune artifact; asking for the pruned
    one without it is one clear error and leaves nothing behind."""
    for stage in ("prepare", "finetune"):
        shutil.copytree(trained_run / stage, tmp_path / stage)
    only_float = ["quantize.sources=[finetune]", "quantize.qat=false",
                  "quantize.post_training=[gpu]", "export.targets=[cpu]"]
    assert run_stage("quantize", tmp_path, *easy_data, *TRAINED, *only_float) == 0
    m = manifest(tmp_path, "quantize")
    assert sorted(m["inputs"]) == ["finetune", "prepare"]
    assert list(m["metrics"]["variants"]) == ["finetune/gpu"]
    assert m["metrics"]["variants"]["finetune/gpu"]["agreement_with_source"] == 1.0

    shutil.rmtree(tmp_path / "quantize")
    assert run_stage("quantize", tmp_path, *easy_data, *TRAINED, "quantize.sources=[prune]",
                     "export.targets=[pruned-qat]") == 2
    assert "needs the 'prune' artifact" in capsys.readouterr().err
    assert not (tmp_path / "quantize").exists()


@pytest.mark.parametrize("override,message", [
    ("quantize.sources=[finetune, finetune]", "quantize.sources"),
    ("quantize.sources=[evaluate]", "quantize.sources"),
    ("quantize.post_training=[int4]", "quantize.post_training"),
    ("quantize.post_training=[dynamic_int8]", "'dynamic_int8' is now called 'cpu'"),
    ("quantize.representative_examples=0", "quantize.representative_examples"),
    ("quantize.outlier_ratio=0.5", "quantize.outlier_ratio"),
    (("quantize.calibration_batches=0", "quantize.post_training=[int8]"),
     "must be > 0 for the `int8` variant"),
    (("quantize.calibration_batches=0", "quantize.post_training=[cpu]"),
     "needs quantize.calibration_batches > 0"),
    ("quantize.trian.epochs=1", "did you mean 'train'"),
])
def test_config_errors(override, message, capsys, tmp_path):
    overrides = override if isinstance(override, tuple) else (override,)
    assert run_stage("quantize", tmp_path, *overrides) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
