"""tf.data input from a prepare artifact: parsed, batched and padded examples.

Training batches are padded to their longest example, not to max_seq_length; exports
use `pad_to=max_seq_length`.

Example:
    >>> ds = read_split("runs/default/prepare", "train")
    >>> batches = batch_examples(ds, batch_size=32)
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

FEATURES = {
    "input_ids": tf.io.RaggedFeature(tf.int64),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "text": tf.io.FixedLenFeature([], tf.string),
}


def read_split(artifact_dir: str | Path, split: str) -> tf.data.Dataset:
    """Examples of one split: {"input_ids": int32 [n] (unpadded), "label": int32, "text"}."""
    path = Path(artifact_dir) / f"{split}.tfrecord"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `slimbert prepare` first")

    def parse(record):
        example = tf.io.parse_single_example(record, FEATURES)
        return {"input_ids": tf.cast(example["input_ids"], tf.int32),
                "label": tf.cast(example["label"], tf.int32), "text": example["text"]}

    return tf.data.TFRecordDataset(str(path)).map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def batch_examples(dataset: tf.data.Dataset, batch_size: int, pad_to: int | None = None,
                   drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches of (features, label): input_ids, input_mask, segment_ids int32 [B, L].

    L is the batch's longest example, or `pad_to` when given.
    """
    shapes = {"input_ids": [pad_to], "label": [], "text": []}
    batched = dataset.padded_batch(batch_size, padded_shapes=shapes,
                                   drop_remainder=drop_remainder)

    def to_model_inputs(batch):
        ids = batch["input_ids"]
        mask = tf.cast(tf.not_equal(ids, 0), tf.int32)
        return {"input_ids": ids, "input_mask": mask,
                "segment_ids": tf.zeros_like(ids)}, batch["label"]

    return batched.map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE)
