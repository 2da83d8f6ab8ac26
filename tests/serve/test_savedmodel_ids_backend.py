"""`slimbert serve --backend savedmodel-ids`: the core-ops SavedModel behind TF Serving's
REST API, token ids in (its only signature), the text SavedModel's answers out."""

import httpx
import numpy as np
import pytest

from data.features import INPUT_NAMES
from export.graph import read_saved_model
from export.predictor import Predictor
from serve.testing import ServerProcess

TEXTS = ["a wonderful movie with actors", "the plot was awful", "", "Ünïcödé 🎬 wonderful"]
PREDICT = "/v1/models/slimbert:predict"


@pytest.fixture(scope="module")
def export_dir(exported_run):
    return exported_run / "export"


def test_token_ids_predict_equals_the_text_savedmodel(export_dir, tmp_path):
    import tensorflow as tf

    from data.tokenizer import BertTokenizer

    ids_dir = export_dir / "saved_model" / "slimbert-ids" / "1"
    tokenizer = BertTokenizer.load(ids_dir / "assets")  # what a client ships: its vocab
    features = {k: v.numpy() for k, v in tokenizer(tf.constant(TEXTS)).items()}
    rows = [{name: features[name][i, :n].tolist() for name in INPUT_NAMES}
            for i, n in enumerate(features["input_mask"].sum(-1))]
    expected = Predictor(export_dir / "saved_model" / "slimbert" / "1").predict_texts(TEXTS)

    server = ServerProcess(export_dir, "--backend", "savedmodel-ids",
                           log_dir=tmp_path).ready()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            health = client.get("/healthz").json()
            assert (health["backend"], health["runtime"]) == ("savedmodel-ids",
                                                              "tensorflow")
            assert sorted(health["batches"]) == ["token_ids"]
            response = client.post(PREDICT, json={"signature_name": "token_ids",
                                                  "instances": rows})
            assert response.status_code == 200, response.text
            predictions = response.json()["predictions"]
            np.testing.assert_allclose([p["probabilities"] for p in predictions], expected,
                                       atol=1e-5)
            assert [p["label"] for p in predictions] == \
                [["neg", "pos"][i] for i in expected.argmax(-1)]
            # Texts are not taken: the clients tokenize.
            response = client.post(PREDICT, json={"instances": TEXTS[:1]})
            assert response.status_code == 400
            assert 'signature name: "serving_default" not found' in response.json()["error"]
            metadata = client.get("/v1/models/slimbert/metadata").json()
            signatures = metadata["metadata"]["signature_def"]["signature_def"]
            assert sorted(signatures) == ["token_ids"]
            assert sorted(signatures["token_ids"]["inputs"]) == sorted(INPUT_NAMES)
            real = read_saved_model(ids_dir).meta_graphs[0].signature_def["token_ids"]
            assert sorted(signatures["token_ids"]["outputs"]) == sorted(real.outputs)
    finally:
        assert server.stop() == 0, server.stderr()[-3000:]
