"""MediaPipe Tasks' TextClassifier on the tiny run's TFLite exports, given only the file:
the metadata the export writes, the scores MediaPipe gives against the runtime adapter's,
the export gate's MediaPipe records and `slimbert predict --runtime mediapipe`."""

import json

import numpy as np
import pytest

from export.mediapipe_tasks import classify_texts
from export.predictor import Predictor
from export.tflite_metadata import read_metadata, with_metadata
from pipeline.cli import main

# ASCII texts, which MediaPipe's tokenizer splits as ours does (the accents and
# non-ASCII capitals it treats differently are in docs/deployment.md, "MediaPipe's tokenizer").
TEXTS = ["a moving, beautifully acted film", "dull, tedious and far too long", "",
         "the plot was awful; the actors were wonderful!", "IT WAS A MOVIE " * 20]
TOKEN_ID_TARGETS = ("cpu", "gpu", "int8", "qat", "pruned-qat")


@pytest.fixture(scope="module")
def tflite_dir(exported_run):
    return exported_run / "export" / "tflite"


def test_every_token_id_export_carries_mediapipe_metadata(tflite_dir):
    labels = (tflite_dir / "labels.txt").read_text().splitlines()
    for target in TOKEN_ID_TARGETS:
        metadata = read_metadata((tflite_dir / f"slimbert-{target}.tflite").read_bytes())
        assert metadata is not None, target
        assert sorted(metadata["inputs"]) == ["ids", "mask", "segment_ids"]
        assert metadata["outputs"] == ["probabilities"]
        assert metadata["process_units"] == 1 and metadata["min_parser_version"] == "1.1.0"
        assert metadata["files"] == ["vocab.txt", "labels.txt"]
        assert metadata["name"] == "slimbert" and metadata["version"] == "1"
    assert read_metadata((tflite_dir / "slimbert-text.tflite").read_bytes()) is None
    assert labels == ["neg", "pos"]


# Float activations (`cpu`): the same kernels' arithmetic, scores equal to 1e-5. int8
# activations (`qat`): MediaPipe's interpreter picks int8 kernels that round like
# XNNPACK on some inputs and like the builtin kernels on others, so scores differ by
# rounding (seen: 1.2e-3 on the tiny model).
TOLERANCE = {"cpu": 1e-5, "qat": 0.01}


@pytest.mark.parametrize("target", sorted(TOLERANCE))
def test_mediapipe_classifies_like_the_runtime_adapter(tflite_dir, target):
    """MediaPipe tokenizes the texts itself from the file's metadata (long texts cut at
    max_seq_length as ours are); its scores equal the adapter's, which tokenizes with
    tensorflow_text, on ASCII text."""
    path = tflite_dir / f"slimbert-{target}.tflite"
    scores, info = classify_texts(path, TEXTS)
    ours = Predictor(path).predict_texts(TEXTS)
    assert info["labels"] == ["neg", "pos"] and info["runtime"].startswith("mediapipe ")
    assert scores.shape == ours.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(scores, ours, atol=TOLERANCE[target])
    clear = np.abs(ours[:, 0] - ours[:, 1]) > 2 * TOLERANCE[target]
    assert clear.sum() >= 3
    assert np.array_equal(scores.argmax(-1)[clear], ours.argmax(-1)[clear])
    np.testing.assert_allclose(scores.sum(-1), 1, atol=1e-5)  # probabilities, not logits


def test_export_gate_records_mediapipe(exported_run):
    results = json.loads((exported_run / "export" / "verification.json").read_text())
    for target in TOKEN_ID_TARGETS:
        result = results["targets"][target]
        mediapipe = result["mediapipe"]
        assert mediapipe["passed"] and result["passed"], target
        assert mediapipe["verified_with"]["examples"] == results["gate"]["examples"]
        # The easy task's texts are ASCII: MediaPipe scores them as the adapter does,
        # up to int8 rounding (see TOLERANCE).
        assert mediapipe["agreement_with_runtime"] >= 0.95
        assert abs(mediapipe["accuracy_minus_runtime"]) <= 0.05
        if target in ("cpu", "gpu"):
            assert mediapipe["agreement_with_runtime"] == 1.0
            assert mediapipe["max_score_difference"] < 1e-4
    assert "mediapipe" not in results["targets"]["text"]


def test_metadata_refuses_what_mediapipe_cannot_use(tflite_dir, tmp_path):
    with_it = (tflite_dir / "slimbert-cpu.tflite").read_bytes()
    with pytest.raises(ValueError, match="already has associated files"):
        with_metadata(with_it, vocab=tflite_dir / "vocab.txt", labels=["neg", "pos"],
                      name="x", description="x", version="1")


def test_predict_with_mediapipe(tflite_dir, tmp_path, capsys):
    cpu = tflite_dir / "slimbert-cpu.tflite"
    assert main(["predict", str(cpu), "--runtime", "mediapipe", "--json", *TEXTS[:2]]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    ours = Predictor(cpu).predict_texts(TEXTS[:2])
    assert [r["text"] for r in rows] == TEXTS[:2]
    np.testing.assert_allclose([[r["probabilities"]["neg"], r["probabilities"]["pos"]]
                                for r in rows], ours, atol=1e-5)

    text_model = tflite_dir / "slimbert-text.tflite"
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"\x00" * 64)
    for model, message in ((text_model, f"{text_model} has no model metadata for "
                                        "MediaPipe's TextClassifier"),
                           (corrupt, f"{corrupt} is not a valid TFLite model"),
                           (tflite_dir, "is neither a SavedModel folder")):
        assert main(["predict", str(model), "--runtime", "mediapipe", "a text"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
