"""SavedModels for TF Serving: raw strings (or token ids) in, class probabilities and label
names out.

The `savedmodel` target's serving graph is the data stage's tokenizer
(`data.tokenizer.BertTokenizer`, the same TF function) followed by the Keras classifier and
a softmax. Two signatures:

    serving_default(text: string [B])
        -> probabilities float32 [B, C], label string [B], label_id int32 [B],
           classes string [B, C] (label names, in the order of probabilities)
    token_ids(input_ids, input_mask, segment_ids: int32 [B, L], L <= max_seq_length)
        -> the same outputs

The `savedmodel-ids` target (`tokenizer=None`) is the same module without the tokenizer:
only `token_ids`, and only core TensorFlow ops (the label names are a string constant
gathered by `label_id`), so any TF Serving build loads it whatever TF Text it links.

Laid out as TF Serving expects: `<base>/<name>/<version>/saved_model.pb`, `variables/`,
`assets/` (labels.txt, vocab.txt, tokenizer.json) and
`assets.extra/tf_serving_warmup_requests` (a TFRecord of `PredictionLog`s from
tensorflow-serving-api, replayed by the server at load: texts to `serving_default`, or
for `savedmodel-ids` token ids to `token_ids`).

Loading `savedmodel` needs `import tensorflow_text` first: that registers the tokenizer's
ops. `savedmodel-ids` needs TensorFlow alone.

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

import numpy as np
import tensorflow as tf

from core.timing import phase
from data.features import INPUT_NAMES
from data.tokenizer import BertTokenizer

TEXT_SIGNATURE = "serving_default"
IDS_SIGNATURE = "token_ids"
WARMUP_FILE = "tf_serving_warmup_requests"


class IdsServingModule(tf.Module):
    """Classifier + label names behind the `token_ids` signature: core TensorFlow ops."""

    def __init__(self, model, labels: Sequence[str], assets: Sequence[Path] = ()) -> None:
        super().__init__(name="slimbert_serving")
        self.model = model
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

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name=name)
                                  for name in INPUT_NAMES])
    def serve_ids(self, input_ids, input_mask, segment_ids) -> dict[str, tf.Tensor]:
        return self._outputs({"input_ids": input_ids, "input_mask": input_mask,
                              "segment_ids": segment_ids})

    def serving_signatures(self) -> dict:
        return {IDS_SIGNATURE: self.serve_ids.get_concrete_function()}


class ServingModule(IdsServingModule):
    """Tokenizer + classifier + label names, with the two serving signatures."""

    def __init__(self, model, tokenizer: BertTokenizer, labels: Sequence[str],
                 assets: Sequence[Path] = ()) -> None:
        super().__init__(model, labels, assets)
        self.tokenizer = tokenizer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve_text(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(self.tokenizer(text))

    def serving_signatures(self) -> dict:
        return {TEXT_SIGNATURE: self.serve_text.get_concrete_function(),
                **super().serving_signatures()}


def write_warmup(path: Path, model_name: str, texts: Sequence[str] = (),
                 batch_sizes: Sequence[int] = (1, 4, 16), *,
                 token_ids: dict[str, np.ndarray] | None = None) -> int:
    """TF Serving warm-up requests, one per batch size: `PredictRequest`s to
    serving_default cycling through `texts`, or with `token_ids` (int32 [N, L] per input
    name) to token_ids cycling through its rows. Returns the number of records."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    count_rows = len(texts) if token_ids is None else len(token_ids[INPUT_NAMES[0]])
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for size in batch_sizes:
            rows = [(count + i) % count_rows for i in range(size)]
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
                name=model_name,
                signature_name=TEXT_SIGNATURE if token_ids is None else IDS_SIGNATURE))
            if token_ids is None:
                request.inputs["text"].CopyFrom(tf.make_tensor_proto(
                    [texts[i].encode("utf-8") for i in rows], dtype=tf.string))
            else:
                for name in INPUT_NAMES:
                    request.inputs[name].CopyFrom(tf.make_tensor_proto(
                        np.asarray(token_ids[name], np.int32)[rows], dtype=tf.int32))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
            count += 1
    return count


def read_warmup(path: Path) -> list[list[str] | dict[str, np.ndarray]]:
    """What each warm-up request holds: its texts (serving_default), or its token ids
    {input name: int32 [B, L]} (token_ids)."""
    from tensorflow_serving.apis import prediction_log_pb2

    out = []
    for record in tf.data.TFRecordDataset(str(path)):
        request = prediction_log_pb2.PredictionLog.FromString(
            record.numpy()).predict_log.request
        if request.model_spec.signature_name == IDS_SIGNATURE:
            out.append({name: tf.make_ndarray(request.inputs[name]) for name in INPUT_NAMES})
            continue
        tensor = tf.make_ndarray(request.inputs["text"])
        out.append([t.decode("utf-8") for t in tensor.tolist()])
    return out


@phase("convert")
def save_serving_model(model, tokenizer: BertTokenizer | None, labels: Sequence[str],
                       version_dir: Path, asset_files: Sequence[Path],
                       model_name: str, warmup_texts: Sequence[str] = (),
                       warmup_ids: dict[str, np.ndarray] | None = None) -> dict:
    """Write the SavedModel into `version_dir` (`<base>/<name>/<version>`).

    With `tokenizer=None` it is the core-ops `savedmodel-ids` export: only the
    `token_ids` signature, warmed up with `warmup_ids` (int32 [N, L] per input name).

    Returns {"warmup_requests": n, "files": [...]}.
    """
    module = IdsServingModule(model, labels, asset_files) if tokenizer is None else \
        ServingModule(model, tokenizer, labels, asset_files)
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(version_dir), signatures=module.serving_signatures())
    for path in asset_files:  # Asset() copies them; make sure of the names too
        target = version_dir / "assets" / Path(path).name
        if not target.exists():
            shutil.copyfile(path, target)
    warmup = version_dir / "assets.extra" / WARMUP_FILE
    if tokenizer is None:
        requests = write_warmup(warmup, model_name, token_ids=warmup_ids) \
            if warmup_ids is not None and len(warmup_ids[INPUT_NAMES[0]]) else 0
    else:
        requests = write_warmup(warmup, model_name, warmup_texts) if warmup_texts else 0
    return {"warmup_requests": requests,
            "files": sorted(str(p.relative_to(version_dir)) for p in version_dir.rglob("*")
                            if p.is_file())}


__all__ = ["IDS_SIGNATURE", "IdsServingModule", "ServingModule", "TEXT_SIGNATURE", "WARMUP_FILE",
           "read_warmup", "save_serving_model", "write_warmup"]
