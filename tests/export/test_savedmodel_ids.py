"""The core-ops SavedModel (`savedmodel-ids`) of the tiny exported run: loaded and run in
fresh processes that never import tensorflow_text, as a stock TF Serving build would,
with the text SavedModel's accuracy; every op of its graph defined by core TensorFlow."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from data.features import INPUT_NAMES
from data.input import split_arrays
from export.predictor import Predictor
from export.savedmodel import read_warmup
from tests.helpers import REPO, manifest

LIGHT_IMPORTS = "import core  # noqa: F401  (Keras 2, as every entry point)\n"


@pytest.fixture(scope="module")
def export_dir(exported_run):
    return exported_run / "export"


@pytest.fixture(scope="module")
def ids_dir(export_dir):
    return export_dir / "saved_model" / "slimbert-ids" / "1"


def run_fresh(script: str, timeout: float = 300) -> dict:
    """Run `script` in a new Python process in the repository; its last stdout line is
    JSON."""
    result = subprocess.run([sys.executable, "-c", LIGHT_IMPORTS + textwrap.dedent(script)],
                            capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_layout_assets_and_warmup(exported_run, ids_dir):
    """TF Serving's folder layout; the tokenizer files and labels in its assets; warm-up
    requests of token ids to `token_ids`."""
    assert (ids_dir / "saved_model.pb").is_file()
    assert any((ids_dir / "variables").glob("variables.data-*"))
    for name in ("labels.txt", "vocab.txt", "tokenizer.json"):
        assert (ids_dir / "assets" / name).read_bytes() == \
            (exported_run / "finetune" / name).read_bytes(), name
    warmup = read_warmup(ids_dir / "assets.extra" / "tf_serving_warmup_requests")
    assert [sorted(request) for request in warmup] == [sorted(INPUT_NAMES)] * 3
    assert [request["input_ids"].shape[0] for request in warmup] == [1, 4, 16]
    assert all(r[name].dtype == np.int32 for r in warmup for name in INPUT_NAMES)
    result = manifest(exported_run, "export")["metrics"]["targets"]["savedmodel-ids"]
    assert result["warmup_requests"] == 3
    assert result["path"] == "saved_model/slimbert-ids/1"


def test_loads_and_predicts_without_tensorflow_text(exported_run, export_dir, ids_dir,
                                                    tmp_path):
    """In a fresh process: `tf.saved_model.load` and our Predictor load it and predict
    the test split from token ids, and tensorflow_text is never imported; its accuracy
    is the text SavedModel's."""
    max_seq_length = json.loads((ids_dir / "assets" / "tokenizer.json").read_text())[
        "max_seq_length"]
    features, texts, y_true = split_arrays(exported_run / "prepare", "test", max_seq_length)
    data = tmp_path / "test.npz"
    np.savez(data, **features)
    out = run_fresh(f"""
        import json, sys
        import numpy as np
        from export.predictor import Predictor
        predictor = Predictor({str(ids_dir)!r})
        split = np.load({str(data)!r})
        probabilities = predictor.predict_ids({{k: split[k] for k in split.files}})
        import tensorflow as tf
        served = tf.saved_model.load({str(ids_dir)!r})
        raw = served.signatures["token_ids"](**{{k: tf.constant(split[k][:4])
                                                for k in split.files}})
        print(json.dumps({{
            "format": predictor.format, "runtime": predictor.runtime,
            "labels": predictor.labels, "signatures": sorted(served.signatures),
            "outputs": {{k: [v.dtype.name, v.shape.as_list()] for k, v in raw.items()}},
            "label": [x.decode() for x in raw["label"].numpy()],
            "raw_probabilities": raw["probabilities"].numpy().tolist(),
            "probabilities": probabilities.tolist(),
            "tensorflow_text": "tensorflow_text" in sys.modules}}))
    """)
    assert out["tensorflow_text"] is False
    assert (out["format"], out["runtime"], out["labels"]) == ("savedmodel-ids",
                                                              "tensorflow", ["neg", "pos"])
    assert out["signatures"] == ["token_ids"]
    assert out["outputs"] == {"probabilities": ["float32", [4, 2]],
                              "label_id": ["int32", [4]], "label": ["string", [4]],
                              "classes": ["string", [4, 2]]}
    probabilities = np.array(out["probabilities"])
    np.testing.assert_allclose(np.array(out["raw_probabilities"]), probabilities[:4],
                               atol=1e-6)
    assert out["label"] == [["neg", "pos"][i] for i in probabilities[:4].argmax(-1)]
    # The text SavedModel on the same examples' texts: the same probabilities.
    text_model = Predictor(export_dir / "saved_model" / "slimbert" / "1")
    np.testing.assert_allclose(probabilities, text_model.predict_texts(texts), atol=1e-5)
    verification = json.loads((export_dir / "verification.json").read_text())["targets"]
    accuracy = float(np.mean(probabilities.argmax(-1) == y_true))
    assert accuracy == verification["savedmodel-ids"]["accuracy"] == \
        verification["savedmodel"]["accuracy"]
    # The export gate verified it the same way: token ids in, no tensorflow_text.
    run = verification["savedmodel-ids"]["verified_with"]
    assert (run["input"], run["tensorflow_text"], run["non_core_ops"]) == \
        ("token_ids", False, [])
    assert verification["savedmodel-ids"]["passed"]
    assert verification["savedmodel-ids"]["agreement"] == 1.0


def test_every_op_is_a_core_tensorflow_op(export_dir, ids_dir):
    """Every op type of its graph and function library is defined in a process without
    tensorflow_text; the same check names the text SavedModel's TF Text ops."""
    text_dir = export_dir / "saved_model" / "slimbert" / "1"
    out = run_fresh(f"""
        import json, sys
        from export.graph import op_types, unregistered_ops
        print(json.dumps({{"ids_ops": op_types({str(ids_dir)!r}),
                          "ids_missing": unregistered_ops({str(ids_dir)!r}),
                          "text_missing": unregistered_ops({str(text_dir)!r}),
                          "tensorflow_text": "tensorflow_text" in sys.modules}}))
    """)
    assert out["tensorflow_text"] is False
    assert out["ids_missing"] == []
    assert {"MatMul", "Softmax", "GatherV2", "ArgMax"} <= set(out["ids_ops"])
    assert not [op for op in out["ids_ops"] if "Wordpiece" in op or "Normalize" in op]
    assert {"FastBertNormalize", "FastWordpieceTokenizeWithOffsets"} <= \
        set(out["text_missing"])
