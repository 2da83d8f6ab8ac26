"""SavedModel for TF Serving: raw strings in, class probabilities and label names out.

The serving graph is the data stage's tokenizer (`data.tokenizer.BertTokenizer`, the same
TF function) followed by the Keras classifier and a softmax. Two signatures:

    serving_default(text: string [B])
        -> probabilities float32 [B, C], label string [B], label_id int32 [B],
           classes string [B, C] (label names, in the order of probabilities)
    token_ids(input_ids, input_mask, segment_ids: int32 [B, L], L <= max_seq_length)
        -> the same outputs

Laid out as TF Serving expects: `<base>/<name>/<version>/saved_model.pb`, `variables/`,
`assets/` (vocab.txt, labels.txt) and `assets.extra/tf_serving_warmup_requests` (a
TFRecord of `PredictionLog`s from tensorflow-serving-api, replayed by the server at load).

Loading it needs `import tensorflow_text` first: that registers the tokenizer's ops.

Example:
    >>> import tensorflow as tf, tensorflow_text  # noqa: F401
    >>> served = tf.saved_model.load("export/saved_model/slimbert/1")
    >>> served.signatures["serving_default"](text=tf.constant(["a fine film"]))["label"]
    <tf.Tensor: shape=(1,), dtype=string, numpy=array([b'fresh'], dtype=object)>
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

from data.features import INPUT_NAMES
from data.tokenizer import BertTokenizer

TEXT_SIGNATURE = "serving_default"
IDS_SIGNATURE = "token_ids"
WARMUP_FILE = "tf_serving_warmup_requests"


class ServingModule(tf.Module):
    """Tokenizer + classifier + label names, with the two serving signatures."""

    def __init__(self, model, tokenizer: BertTokenizer, labels: Sequence[str],
                 assets: Sequence[Path] = ()) -> None:
        super().__init__(name="slimbert_serving")
        self.model = model
        self.tokenizer = tokenizer
        self.label_names = tf.constant(list(labels))
        self.assets = [tf.saved_model.Asset(str(path)) for path in assets]

    def _outputs(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        logits = self.model(features, training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        label_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        batch = tf.shape(probabilities)[0]
        return {"probabilities": probabilities, "label_id": label_id,
                "label": tf.gather(self.label_names, label_id),
                "classes": tf.tile(self.label_names[tf.newaxis], [batch, 1])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve_text(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(self.tokenizer(text))

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name=name)
                                  for name in INPUT_NAMES])
    def serve_ids(self, input_ids, input_mask, segment_ids) -> dict[str, tf.Tensor]:
        return self._outputs({"input_ids": input_ids, "input_mask": input_mask,
                              "segment_ids": segment_ids})


def write_warmup(path: Path, model_name: str, texts: Sequence[str],
                 batch_sizes: Sequence[int] = (1, 4, 16)) -> int:
    """TF Serving warm-up requests: `PredictRequest`s to serving_default, one per batch
    size, cycling through `texts`. Returns the number of records."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for size in batch_sizes:
            batch = [texts[(count + i) % len(texts)] for i in range(size)]
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name,
                                               signature_name=TEXT_SIGNATURE))
            request.inputs["text"].CopyFrom(tf.make_tensor_proto(
                [t.encode("utf-8") for t in batch], dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
            count += 1
    return count


def read_warmup(path: Path) -> list[list[str]]:
    """The texts of each warm-up request (for tests and `slimbert predict --warmup`)."""
    from tensorflow_serving.apis import prediction_log_pb2

    out = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        tensor = tf.make_ndarray(log.predict_log.request.inputs["text"])
        out.append([t.decode("utf-8") for t in tensor.tolist()])
    return out


def save_serving_model(model, tokenizer: BertTokenizer, labels: Sequence[str],
                       version_dir: Path, asset_files: Sequence[Path],
                       model_name: str, warmup_texts: Sequence[str]) -> dict:
    """Write the SavedModel into `version_dir` (`<base>/<name>/<version>`).

    Returns {"warmup_requests": n, "files": [...]}.
    """
    module = ServingModule(model, tokenizer, labels, asset_files)
    signatures = {TEXT_SIGNATURE: module.serve_text.get_concrete_function(),
                  IDS_SIGNATURE: module.serve_ids.get_concrete_function()}
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(version_dir), signatures=signatures)
    for path in asset_files:  # Asset() copies them; make sure of the names too
        target = version_dir / "assets" / Path(path).name
        if not target.exists():
            shutil.copyfile(path, target)
    requests = write_warmup(version_dir / "assets.extra" / WARMUP_FILE, model_name,
                            warmup_texts) if warmup_texts else 0
    return {"warmup_requests": requests,
            "files": sorted(str(p.relative_to(version_dir)) for p in version_dir.rglob("*")
                            if p.is_file())}


__all__ = ["IDS_SIGNATURE", "ServingModule", "TEXT_SIGNATURE", "WARMUP_FILE",
           "read_warmup", "save_serving_model", "write_warmup"]
