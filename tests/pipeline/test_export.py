"""The export stage on the tiny easy-task run: every target written, verified in a fresh
process and gated (and the gate's rules on their own); the SavedModel and raw-string
TFLite model used as their users would; `slimbert predict`; the runtime adapter."""

import hashlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from export.flatbuffer import census_summary, op_census
from export.predictor import Predictor
from export.runtime import available_runtimes, make_interpreter
from export.savedmodel import read_warmup
from models.artifact import load_model
from pipeline.cli import main
from pipeline.config import ConfigError, ExportConfig, load_config
from pipeline.export import gate_verdict
from tests.helpers import PRUNE, QUANTIZE, REPO, TRAINED, copy_run, manifest, run_stage

TARGETS = ("savedmodel", "savedmodel-ids", "cpu", "gpu", "int8", "qat", "pruned-qat",
           "student-cpu", "student-gpu", "student-int8", "student-qat", "text")
INT8_TARGETS = ("int8", "qat", "pruned-qat", "student-int8", "student-qat")
TEXTS = ["a moving, beautifully acted film", "dull, tedious and far too long", "",
         "Ünïcödé and emoji 🎬 are fine"]


@pytest.fixture(scope="module")
def exported(exported_run):
    return exported_run


def keras_probabilities(run_dir, texts):
    """The fine-tuned Keras model on `texts`, tokenized by the data stage's tokenizer."""
    import tensorflow as tf

    from data.tokenizer import BertTokenizer

    model, meta = load_model(run_dir / "finetune")
    tokenizer = BertTokenizer.load(run_dir / "finetune")
    return tf.nn.softmax(model(tokenizer(tf.constant(texts)))).numpy()


def test_every_target_is_exported_and_passes_the_gate(exported):
    export = exported / "export"
    m = manifest(exported, "export")["metrics"]
    assert m["gate"]["passed"] and not m["gate"]["forced"] and m["blessing"]
    assert sorted(m["targets"]) == sorted(TARGETS)
    version = export / "saved_model" / "slimbert" / "1"
    for name in ("saved_model.pb", "assets/vocab.txt", "assets/labels.txt",
                 "assets.extra/tf_serving_warmup_requests"):
        assert (version / name).is_file(), name
    assert any((version / "variables").glob("variables.data-*"))
    for name in ("labels.txt", "vocab.txt", "tokenizer.json"):
        assert (export / "tflite" / name).read_bytes() == \
            (exported / "finetune" / name).read_bytes()
    verification = json.loads((export / "verification.json").read_text())
    for target, result in m["targets"].items():
        assert verification["targets"][target] == result
        if target not in ("savedmodel", "savedmodel-ids"):
            assert (export / result["path"]).name == f"slimbert-{target}.tflite"
        assert (export / result["path"]).exists()
        assert result["passed"] and result["failures"] == [], target
        assert result["accuracy"] >= 0.85, target
        assert abs(result["accuracy_difference"]) <= 0.005
        if target in INT8_TARGETS:
            assert result["rule"] == "int8" and result["agreement"] >= 0.95, target
            assert result["drop_from_float"] == pytest.approx(
                result["float_accuracy"] - result["accuracy"], abs=1e-6)
            assert result["drop_from_float"] <= 0.01, target
        else:
            assert result["rule"] == "agreement" and result["agreement"] >= 0.99, target
            assert "float_accuracy" not in result, target
        run = result["verified_with"]
        assert run["examples"] == m["gate"]["examples"] > 0
        assert run["runtime"] == ("tensorflow" if target.startswith("savedmodel")
                                  else "ai_edge_litert"), target
        assert run["input"] == ("text" if target in ("savedmodel", "text")
                                else "token_ids"), target
        if not target.startswith("savedmodel"):
            assert result["census"]["flex_ops"] == [], target
            # Where XNNPACK runs the model: its partitions and the ops left outside.
            plan = result["xnnpack"]
            assert plan["partitions"] >= 1 and 0 < plan["delegated_share"] <= 1, target
            assert plan["delegated_ops"] + sum(plan["builtin"].values()) == plan["ops"]
            assert plan["delegated_share"] == round(plan["delegated_ops"] / plan["ops"], 4)
        else:
            assert "xnnpack" not in result
        # The same file on the builtin kernels (no XNNPACK), recorded beside the gate.
        if target in ("gpu", "int8", "qat", "pruned-qat"):
            builtin = result["builtin_kernels"]
            assert 0.5 <= builtin["accuracy"] <= 1 and builtin["run_seconds"] > 0, target
            assert builtin["agreement"] >= 0.9, target
        else:
            assert "builtin_kernels" not in result, target
    # Float arithmetic on either kernels: the same predictions.
    assert m["targets"]["gpu"]["builtin_kernels"]["agreement_with_default_kernels"] == 1.0
    assert m["targets"]["qat"]["source"] == "finetune"
    assert m["targets"]["pruned-qat"]["source"] == "prune"
    # The int8 rule's float models: the fine-tuned one for int8 and qat, the pruned one
    # for pruned-qat, as their own stages measured them.
    evaluation = manifest(exported, "evaluate")["metrics"]["accuracy"]
    pruned = manifest(exported, "prune")["metrics"]["evaluation"]["accuracy"]
    student = manifest(exported, "distill")["metrics"]["evaluation"]["accuracy"]
    for target, accuracy in (("int8", evaluation), ("qat", evaluation),
                             ("pruned-qat", pruned), ("student-int8", student),
                             ("student-qat", student)):
        assert m["targets"][target]["float_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert m["targets"]["qat"]["twin"] == "QAT model of finetune"
    assert (m["gate"]["max_drop_from_float"], m["gate"]["min_int8_agreement"]) == \
        (0.01, 0.95)
    # The QAT exports are the quantize stage's files (plus MediaPipe's metadata),
    # compared with its QAT models.
    for target, source in (("qat", "finetune"), ("pruned-qat", "prune"),
                           ("student-qat", "distill")):
        converted = (exported / "quantize" / source / "qat.tflite").read_bytes()
        assert m["targets"][target]["model_sha256"] == hashlib.sha256(converted).hexdigest()
        assert m["targets"][target]["census"] == census_summary(op_census(converted))
    int8 = m["targets"]["int8"]
    assert int8["census"]["int8_matmuls"] == int8["census"]["matmuls"] == 17
    assert m["targets"]["cpu"]["census"]["hybrid_matmuls"] == 12
    # TF Text's TFLite ops (registered by its op registerer), nothing else custom.
    assert m["targets"]["text"]["census"]["custom_ops"] == [
        "FastBertNormalize", "FastWordpieceTokenizeWithOffsets", "RaggedTensorToTensor"]
    assert m["targets"]["savedmodel"]["warmup_requests"] == 3
    # The core-ops SavedModel (tests/export/test_savedmodel_ids.py): the same accuracy.
    assert m["targets"]["savedmodel-ids"]["accuracy"] == m["targets"]["savedmodel"]["accuracy"]


def test_copied_tflite_targets_take_the_quantize_stages_run_bit_for_bit(exported,
                                                                       tmp_path):
    """A TFLite file copied from the quantize stage is not run twice in the adapter: the
    gate takes the quantize stage's outputs, which a fresh process's run of the exported
    file (metadata and all) reproduces to the bit."""
    from data.input import split_arrays
    from data.tokenizer import read_tokenizer_config
    from export.verify import verify_in_fresh_process, write_split

    targets = json.loads((exported / "export" / "verification.json").read_text())["targets"]
    reused = {t for t, r in targets.items() if r["verified_with"].get("reused_from")}
    # The fixture's quantize stage makes cpu and int8 (and QAT): export converts gpu.
    assert reused == set(TARGETS) - {"savedmodel", "savedmodel-ids", "text", "gpu",
                                     "student-gpu"}
    length = read_tokenizer_config(exported / "prepare")["max_seq_length"]
    features, texts, labels = split_arrays(exported / "prepare", "test", length)
    write_split(tmp_path / "test.npz", features, texts, labels)
    for target in ("cpu", "pruned-qat", "student-qat"):
        run = targets[target]["verified_with"]
        assert run["reused_from"] == f"quantize/{targets[target]['source']}/" \
            f"{'qat' if 'qat' in target else 'cpu'}_tflite_predictions.npz"
        assert run["runtime"] == "ai_edge_litert" and run["examples"] == len(labels)
        saved = np.load(exported / run["reused_from"])["probabilities"]
        fresh, info = verify_in_fresh_process(exported / "export" / targets[target]["path"],
                                              tmp_path / "test.npz", tmp_path / "out.npz")
        np.testing.assert_array_equal(saved, fresh)
        assert info["runtime"] == run["runtime"] and info["labels"] == run["labels"]


def test_student_targets_are_the_distilled_models_variants(exported):
    """student-*: the quantize stage's files of the distilled student (student-gpu, a
    variant the fixture's quantize.post_training leaves out, converted by the export),
    gated against the student; one layer's matmuls, a fraction of the teacher's bytes,
    and on raw texts the Keras student's answers."""
    import tensorflow as tf

    from data.tokenizer import BertTokenizer

    targets = manifest(exported, "export")["metrics"]["targets"]
    qat = manifest(exported, "quantize")["metrics"]["qat"]["distill"]
    student_accuracy = manifest(exported, "distill")["metrics"]["evaluation"]["accuracy"]
    twins = {"cpu": "distill model", "gpu": "distill model",
             "int8": "int8 model of distill", "qat": "QAT model of distill"}
    for variant, twin in twins.items():
        target, teacher = targets[f"student-{variant}"], targets[variant]
        assert target["source"] == "distill" and target["twin"] == twin, variant
        assert target["passed"] and target["mediapipe"]["passed"], variant
        if variant in ("cpu", "gpu"):  # their twin is the Keras student itself
            assert target["source_accuracy"] == pytest.approx(student_accuracy, abs=1e-6)
        # 8 matmuls in the student's one layer + the classifier (+ QAT's outlier splits).
        splits = len(qat["outlier_channels"]) if variant == "qat" else 0
        assert target["census"]["matmuls"] == 9 + splits, variant
        assert teacher["census"]["matmuls"] == 17 + splits, variant
        assert target["bytes"] < teacher["bytes"] / 2, variant
        copied = exported / "quantize" / "distill" / f"{variant}.tflite"
        if variant == "gpu":
            assert not copied.exists()
        else:
            assert target["model_sha256"] == hashlib.sha256(copied.read_bytes()).hexdigest()
    assert targets["student-int8"]["census"]["int8_matmuls"] == 9

    student, _ = load_model(exported / "distill")
    tokenizer = BertTokenizer.load(exported / "distill")
    expected = tf.nn.softmax(student(tokenizer(tf.constant(TEXTS)))).numpy()
    for variant in ("cpu", "gpu"):
        path = exported / "export" / "tflite" / f"slimbert-student-{variant}.tflite"
        probabilities = Predictor(path).predict_texts(TEXTS)
        np.testing.assert_allclose(probabilities, expected, atol=0.02)
        assert (probabilities.argmax(-1) == expected.argmax(-1)).all(), variant


def test_savedmodel_in_a_fresh_process(exported):
    """What a TF Serving user's client sees: raw strings in, labels and probabilities out;
    token ids through the second signature."""
    version = exported / "export" / "saved_model" / "slimbert" / "1"
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        import tensorflow_text  # noqa: F401
        served = tf.saved_model.load({str(version)!r})
        texts = json.loads(sys.stdin.read())
        out = served.signatures["serving_default"](text=tf.constant(texts))
        ids = served.signatures["token_ids"](
            input_ids=tf.constant([[101, 102, 0]]), input_mask=tf.constant([[1, 1, 0]]),
            segment_ids=tf.constant([[0, 0, 0]]))
        print(json.dumps({{
            "signatures": sorted(served.signatures),
            "probabilities": out["probabilities"].numpy().tolist(),
            "label": [x.decode() for x in out["label"].numpy()],
            "label_id": out["label_id"].numpy().tolist(),
            "classes": [[x.decode() for x in row] for row in out["classes"].numpy()],
            "ids_probabilities": ids["probabilities"].numpy().tolist()}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], input=json.dumps(TEXTS),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["signatures"] == ["serving_default", "token_ids"]
    probabilities = np.array(out["probabilities"])
    np.testing.assert_allclose(probabilities, keras_probabilities(exported, TEXTS),
                               atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    assert out["classes"] == [["neg", "pos"]] * len(TEXTS)
    assert out["label"] == [["neg", "pos"][i] for i in out["label_id"]]
    assert out["label_id"] == probabilities.argmax(-1).tolist()
    np.testing.assert_allclose(np.array(out["ids_probabilities"]),
                               keras_probabilities(exported, [""]), atol=1e-5)
    warmup = read_warmup(version / "assets.extra" / "tf_serving_warmup_requests")
    assert [len(batch) for batch in warmup] == [1, 4, 16]


def test_text_tflite_takes_raw_strings(exported):
    predictor = Predictor(exported / "export" / "tflite" / "slimbert-text.tflite")
    assert predictor.format == "tflite-text" and predictor.runtime == "ai_edge_litert"
    assert predictor.labels == ["neg", "pos"]
    probabilities = predictor.predict_texts(TEXTS)
    expected = keras_probabilities(exported, TEXTS)
    np.testing.assert_allclose(probabilities, expected, atol=0.05)  # int8 weights
    assert (probabilities.argmax(-1) == expected.argmax(-1)).all()
    # The token-id cpu model, fed by the tokenizer beside it, gives the same answers.
    cpu = Predictor(exported / "export" / "tflite" / "slimbert-cpu.tflite")
    np.testing.assert_allclose(cpu.predict_texts(TEXTS), probabilities, atol=1e-4)


def test_gate_verdict_by_rule():
    """int8-activation targets: near their twin, near the float model, above the int8
    floor of agreement; the others: near their source and 99% agreement."""
    cfg = ExportConfig()
    # Within both accuracy bounds at 97% agreement: an int8 model passes ...
    assert gate_verdict("int8", 0.900, 0.902, 0.905, 0.97, cfg) == {
        "rule": "int8", "passed": True, "failures": []}
    # ... a float or dynamic-range one does not (98% agreement).
    assert gate_verdict("cpu", 0.900, 0.900, None, 0.98, cfg) == {
        "rule": "agreement", "passed": False,
        "failures": ["cpu: agreement 0.9800 under 0.99 (export.min_agreement)"]}
    assert gate_verdict("text", 0.900, 0.903, None, 0.99, cfg)["passed"]
    assert gate_verdict("qat", 0.900, 0.902, 0.905, 0.93, cfg)["failures"] == [
        "qat: agreement 0.9300 under the int8 floor 0.95 (export.min_int8_agreement)"]
    below = gate_verdict("pruned-qat", 0.880, 0.882, 0.895, 0.97, cfg)
    assert below["failures"] == [
        "pruned-qat: accuracy 0.8800 is 0.0150 below the float model's 0.8950, more than "
        "0.01 (export.max_drop_from_float)"]
    # int8: one-sided from the float model and from the twin (a gain passes, as
    # pruned-qat's 81.51% against its twin's 80.81% on the default pipeline); float
    # targets: two-sided from their source; bounds met exactly pass.
    assert gate_verdict("qat", 0.920, 0.918, 0.900, 0.97, cfg)["passed"]
    assert gate_verdict("int8", 190 / 200, 191 / 200, 192 / 200, 190 / 200, cfg)["passed"]
    assert gate_verdict("qat", 0.920, 0.910, 0.920, 0.97, cfg)["passed"]
    twin = gate_verdict("qat", 0.910, 0.920, 0.915, 0.97, cfg)["failures"]
    assert twin == ["qat: accuracy 0.9100 is below its twin's 0.9200 by more than "
                    "0.005 (export.max_accuracy_drop)"]
    assert not gate_verdict("cpu", 0.920, 0.910, None, 0.995, cfg)["passed"]
    strict = ExportConfig(max_drop_from_float=0.0, min_int8_agreement=0.99)
    assert len(gate_verdict("int8", 0.900, 0.902, 0.905, 0.97, strict)["failures"]) == 2
    with pytest.raises(ConfigError, match="'export.min_int8_agreement': expected 0..1"):
        load_config(None, ["export.min_int8_agreement=1.5"])
    with pytest.raises(ConfigError, match="'export.max_drop_from_float': expected 0..1"):
        load_config(None, ["export.max_drop_from_float=-0.01"])


def test_gate_failure_fails_the_stage_unless_forced(quantized_run, tmp_path, easy_data,
                                                    capsys):
    """A QAT model that disagrees with its source (the reference predictions flipped, as a
    broken conversion would look) fails the export and leaves nothing; --force keeps it
    and records the failure."""
    run_dir = copy_run(quantized_run, tmp_path)
    path = run_dir / "quantize" / "finetune" / "qat_predictions.npz"
    saved = dict(np.load(path))
    np.savez_compressed(path, labels=saved["labels"],
                        probabilities=saved["probabilities"][:, ::-1])
    args = [*easy_data, *TRAINED, *PRUNE, *QUANTIZE, "export.targets=[cpu, qat]"]
    assert run_stage("export", run_dir, *args) == 2
    err = capsys.readouterr().err
    assert "export verification failed for qat: " in err and "--force" in err
    assert "under the int8 floor 0.95" in err
    assert not (run_dir / "export").exists()
    assert not list(run_dir.glob(".export*"))

    cli = ["export", "--config", str(REPO / "configs" / "tiny.yaml"), "--run-dir",
           str(run_dir), "--force"] + [x for a in args for x in ("--set", a)]
    assert main(cli) == 0
    m = manifest(run_dir, "export")["metrics"]
    assert m["gate"]["forced"] and not m["gate"]["passed"]
    assert m["targets"]["cpu"]["passed"] and not m["targets"]["qat"]["passed"]
    assert m["targets"]["qat"]["agreement"] <= 0.1
    assert m["targets"]["qat"]["rule"] == "int8"
    assert any("under the int8 floor" in f for f in m["targets"]["qat"]["failures"])
    # The same flipped twin fails MediaPipe's run of the file too.
    mediapipe = m["targets"]["qat"]["mediapipe"]["failures"]
    assert mediapipe and all(f.endswith("(in MediaPipe)") for f in mediapipe)
    assert m["gate"]["failures"] == m["targets"]["qat"]["failures"] + mediapipe


def test_unblessed_model_is_refused(quantized_run, tmp_path, easy_data, capsys):
    """The easy task's model is always blessed, so the blessing is edited to what an
    evaluation below `evaluate.min_accuracy` writes."""
    run_dir = copy_run(quantized_run, tmp_path)
    path = run_dir / "evaluate" / "blessing.json"
    blessing = json.loads(path.read_text())
    blessing["blessed"] = False
    blessing["checks"]["accuracy"].update({"min": 1.01, "passed": False})
    path.write_text(json.dumps(blessing))
    args = [*easy_data, *TRAINED, *PRUNE, *QUANTIZE, "export.targets=[cpu]"]
    assert run_stage("export", run_dir, *args) == 2
    assert "not blessed" in capsys.readouterr().err
    assert not (run_dir / "export").exists()


def test_predict_command(exported, tmp_path, capsys):
    cpu = exported / "export" / "tflite" / "slimbert-cpu.tflite"
    version = exported / "export" / "saved_model" / "slimbert" / "1"
    lines = tmp_path / "texts.txt"
    lines.write_text("\n".join(TEXTS[:2]) + "\n\n", encoding="utf-8")
    expected = keras_probabilities(exported, TEXTS[:2])
    for model in (cpu, version):
        assert main(["predict", str(model), "--file", str(lines), "--json"]) == 0
        rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
        assert [r["text"] for r in rows] == TEXTS[:2]
        probs = np.array([[r["probabilities"]["neg"], r["probabilities"]["pos"]]
                          for r in rows])
        np.testing.assert_allclose(probs, expected, atol=0.02)
        assert [r["label"] for r in rows] == [["neg", "pos"][i] for i in expected.argmax(-1)]
    for kernels in ("default", "builtin"):
        assert main(["predict", str(cpu), "one text", "--kernels", kernels]) == 0
        label, probability, text = capsys.readouterr().out.strip().split("\t")
        assert label in ("neg", "pos") and 0.5 <= float(probability) <= 1
        assert text == "one text"

    # Options may come before, between and after the texts, as the README shows.
    assert main(["predict", str(cpu), "--kernels", "builtin", TEXTS[0], "--json",
                 TEXTS[1]]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [r["text"] for r in rows] == TEXTS[:2]

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\ncaf\xe9\n")
    corrupt = tmp_path / "corrupt" / "slimbert-cpu.tflite"
    corrupt.parent.mkdir()
    corrupt.write_bytes(cpu.read_bytes()[:1000])
    for name in ("labels.txt", "vocab.txt", "tokenizer.json"):
        (corrupt.parent / name).write_bytes((cpu.parent / name).read_bytes())
    broken_savedmodel = tmp_path / "broken" / "1"
    broken_savedmodel.mkdir(parents=True)
    (broken_savedmodel / "saved_model.pb").write_bytes(b"not a protobuf")
    for args, message in (([str(cpu), "--file", str(bad)], "bad.txt:2: not UTF-8"),
                          ([str(cpu)], "nothing to classify"),
                          ([str(tmp_path / "missing.tflite"), "x"], "does not exist"),
                          ([str(lines), "x"], "neither a SavedModel"),
                          # how Python hands over the argv bytes b"caf\xe9"
                          ([str(cpu), "caf\udce9"], "TEXT argument 1 is not valid UTF-8 "
                                                    "(byte 0xe9 at character 3)"),
                          ([str(corrupt), "x"], "is not a valid TFLite model"),
                          ([str(broken_savedmodel), "x"], "is not a loadable SavedModel")):
        assert main(["predict", *args]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="text 1 is not valid Unicode"):
        Predictor(cpu).predict_texts(["fine", "bad \ud800 film"])


def test_native_start_up_lines_are_quiet_unless_verbose(exported):
    """TensorFlow's C++ start-up lines (oneDNN, CUDA probing) and LiteRT's delegate
    notice stay off stderr by default and come back with -v."""
    import re

    cpu = exported / "export" / "tflite" / "slimbert-cpu.tflite"
    native = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages|INFO: Created TensorFlow)",
                        re.M)
    errs = {}
    for flags in ([], ["-v"]):
        result = subprocess.run([sys.executable, "-m", "pipeline.cli", "predict", str(cpu),
                                 "a film", *flags], capture_output=True, text=True,
                                cwd=REPO, timeout=300)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("\t") == 2
        errs[tuple(flags)] = result.stderr
    if not native.search(errs[("-v",)]):
        pytest.skip("this TensorFlow build prints no native start-up lines")
    assert not native.search(errs[()]), errs[()]


def test_runtime_adapter(exported):
    assert available_runtimes()[0] == "ai_edge_litert"
    assert "tensorflow" in available_runtimes()
    path = exported / "export" / "tflite" / "slimbert-int8.tflite"
    outputs = {}
    for runtime in ("ai_edge_litert", "tensorflow"):
        interpreter, used = make_interpreter(model_path=path, runtime=runtime, num_threads=1)
        assert used == runtime
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"],
                                   np.ones(detail["shape"], detail["dtype"]))
        interpreter.invoke()
        outputs[runtime] = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    # int8 matmuls: XNNPACK (ai-edge-litert) and tf.lite's kernels may round differently.
    assert outputs["ai_edge_litert"].dtype == np.float32
    np.testing.assert_allclose(outputs["ai_edge_litert"], outputs["tensorflow"], atol=0.02)
    # The default kernels hand the model to XNNPACK (one DELEGATE node); `builtin`
    # keeps every op on the runtime's own kernels.
    for runtime in ("ai_edge_litert", "tensorflow"):
        ops = {kernels: {op["op_name"] for op in make_interpreter(
            model_path=path, runtime=runtime, kernels=kernels)[0]._get_ops_details()}
            for kernels in ("default", "builtin")}
        assert "DELEGATE" in ops["default"] and "DELEGATE" not in ops["builtin"], runtime
        assert "FULLY_CONNECTED" in ops["builtin"], runtime
    with pytest.raises(ValueError, match="kernels must be one of"):
        make_interpreter(model_path=path, kernels="gpu")
    with pytest.raises(ValueError, match="exactly one"):
        make_interpreter()
    with pytest.raises(ValueError, match="runtime must be one of"):
        make_interpreter(model_path=path, runtime="onnx")


def test_command_line_mistakes_are_one_line_errors(exported, tmp_path, capsys):
    """Exit 2 with one line naming what to fix, no traceback."""
    export_copy = tmp_path / "export"
    import shutil

    shutil.copytree(exported / "export", export_copy)
    cpu = export_copy / "tflite" / "slimbert-cpu.tflite"
    cpu.write_bytes(cpu.read_bytes()[:1000])
    assert main(["serve", str(export_copy), "--backend", "cpu", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "slimbert-cpu.tflite is not a valid TFLite model" in err
    assert "Traceback" not in err

    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(exported / "export"), "--port", "99999"])
    assert exit_.value.code == 2
    assert "a port is 0-65535, found 99999" in capsys.readouterr().err

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert main(["prepare", "--config", str(REPO / "configs" / "tiny.yaml"),
                 "--run-dir", str(a_file)]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
