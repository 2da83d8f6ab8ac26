"""tf.data input from a prepare artifact: parsed, batched and padded examples.

Training batches are bucketed by length and padded to their bucket's length, not to
max_seq_length (review snippets have a median of 26 tokens), which also keeps the set of
batch shapes small for XLA. Evaluation batches are padded to their longest example (of
length-sorted examples: `length_sorted`); exports use a fixed length
(`pad_to=max_seq_length`).

Example:
    >>> ds = read_split("runs/default/prepare", "train")
    >>> batches = batch_examples(ds, batch_size=32)
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import tensorflow as tf

FEATURES = {
    "input_ids": tf.io.RaggedFeature(tf.int64),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "text": tf.io.FixedLenFeature([], tf.string),
}


def read_split(artifact_dir: str | Path, split: str, with_text: bool = True) -> tf.data.Dataset:
    """Examples of one split: {"input_ids": int32 [n] (unpadded), "label": int32, "text"}."""
    path = Path(artifact_dir) / f"{split}.tfrecord"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `slimbert prepare` first")

    def parse(record):
        example = tf.io.parse_single_example(record, FEATURES)
        out = {"input_ids": tf.cast(example["input_ids"], tf.int32),
               "label": tf.cast(example["label"], tf.int32)}
        if with_text:
            out["text"] = example["text"]
        return out

    return tf.data.TFRecordDataset(str(path)).map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def model_inputs(batch: dict) -> tuple[dict, tf.Tensor]:
    """A padded batch -> (input_ids, input_mask, segment_ids), label. [PAD] is id 0."""
    ids = batch["input_ids"]
    mask = tf.cast(tf.not_equal(ids, 0), tf.int32)
    return {"input_ids": ids, "input_mask": mask, "segment_ids": tf.zeros_like(ids)}, \
        batch["label"]


def _shapes(dataset: tf.data.Dataset, pad_to: int | None) -> dict:
    return {key: [pad_to] if key == "input_ids" else [] for key in dataset.element_spec}


def batch_examples(dataset: tf.data.Dataset, batch_size: int, pad_to: int | None = None,
                   drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches of (features, label), features int32 [B, L]; L is the batch's longest
    example, or `pad_to` when given."""
    batched = dataset.padded_batch(batch_size, padded_shapes=_shapes(dataset, pad_to),
                                   drop_remainder=drop_remainder)
    return without_autotune(batched.map(model_inputs, num_parallel_calls=tf.data.AUTOTUNE))


def without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` (and every dataset made from it) with tf.data's autotuner off.

    The autotuner runs a thread per iterator that wakes after 10 ms, then after periods
    doubling up to 60 s: 82, 142, 202... s after the iterator was made. With it on, an
    epoch often ended only at such a wake-up: epochs of the default pipeline lasted
    exactly 82, 142 or 202 s, a 90-s fine-tuning epoch took 142 s and the student's QAT
    epoch 142 s instead of 83. The batches are the same either way, and the input
    pipeline is cheap next to the model's steps.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def length_sorted(dataset: tf.data.Dataset) -> tuple[tf.data.Dataset, np.ndarray]:
    """The examples of `dataset` ordered by length (stable), and that order: element k
    of the result is example `order[k]` of `dataset`. Batches of sorted examples are
    padded to about their own length (evaluation: about half the work of file order on
    review snippets). Reads the whole split into memory.

    Example:
        >>> examples, order = length_sorted(read_split(prep_dir, "test", with_text=False))
        >>> restore = np.argsort(order)  # outputs[restore] is in file order again
    """
    rows = list(dataset.as_numpy_iterator())
    order = np.argsort([len(row["input_ids"]) for row in rows], kind="stable")

    def generate():
        for i in order:
            yield rows[i]

    return tf.data.Dataset.from_generator(
        generate, output_signature=dataset.element_spec), order


def bucket_lengths(max_seq_length: int, boundaries: tuple[int, ...] = ()) -> list[int]:
    """Padded lengths of the training buckets: `boundaries` (or multiples of a step of
    at least 8) below max_seq_length, then max_seq_length."""
    if not boundaries:
        step = max(8, (max_seq_length // 16 + 7) // 8 * 8)
        boundaries = tuple(range(2 * step, max_seq_length, step))
    return [b for b in boundaries if b < max_seq_length] + [max_seq_length]


def bucket_examples(dataset: tf.data.Dataset, batch_size: int, lengths: list[int]
                    ) -> tf.data.Dataset:
    """Batches of examples of similar length, padded to their bucket's length."""
    batched = dataset.bucket_by_sequence_length(
        element_length_func=lambda e: tf.shape(e["input_ids"])[0],
        bucket_boundaries=[n + 1 for n in lengths],
        bucket_batch_sizes=[batch_size] * (len(lengths) + 1),
        padded_shapes=_shapes(dataset, None), pad_to_bucket_boundary=True)
    return without_autotune(batched.map(model_inputs, num_parallel_calls=tf.data.AUTOTUNE))


def example_lengths(dataset: tf.data.Dataset) -> np.ndarray:
    lengths = dataset.map(lambda e: tf.shape(e["input_ids"])[0],
                          num_parallel_calls=tf.data.AUTOTUNE)
    return np.fromiter(lengths.as_numpy_iterator(), dtype=np.int64)


def count_bucket_batches(lengths: np.ndarray, batch_size: int, buckets: list[int]) -> int:
    """Exactly how many batches `bucket_examples` yields for examples of these lengths."""
    per_bucket = Counter(int(np.searchsorted(buckets, n)) for n in lengths)
    return sum(math.ceil(count / batch_size) for count in per_bucket.values())


def split_arrays(artifact_dir: str | Path, split: str, max_seq_length: int
                 ) -> tuple[dict, list[str], np.ndarray]:
    """One split as numpy: features int32 [N, max_seq_length] (input_ids, input_mask,
    segment_ids; longer examples cut), the texts and the labels int32 [N].

    Raises:
        ValueError: the split has no examples.
    """
    rows = list(read_split(artifact_dir, split, with_text=True).as_numpy_iterator())
    if not rows:
        raise ValueError(f"the {split} split of {artifact_dir} is empty")
    ids = np.zeros((len(rows), max_seq_length), np.int32)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        n = min(len(row["input_ids"]), max_seq_length)
        ids[i, :n] = row["input_ids"][:n]
        mask[i, :n] = 1
    texts = [row["text"].decode("utf-8") for row in rows]
    labels = np.array([int(row["label"]) for row in rows], np.int32)
    return ({"input_ids": ids, "input_mask": mask, "segment_ids": np.zeros_like(ids)},
            texts, labels)


def training_sample(artifact_dir: str | Path, batches: int, batch_size: int, seed: int,
                    pad_to: int | None = None) -> list:
    """`batches` batches (features, label) of training examples drawn with `seed`: the
    fixed sample that calibrates quantization ranges.

    The draw is numpy's from `seed` alone. A seeded `tf.data` shuffle also depends on
    TensorFlow's global seed, so the sample (and every range calibrated on it) changed
    with whatever had run before in the process: `slimbert run` and `slimbert quantize`
    alone calibrated on different examples."""
    train = read_split(artifact_dir, "train", with_text=False)
    rows = list(train.as_numpy_iterator())
    order = np.random.default_rng(seed).permutation(len(rows))[:batches * batch_size]
    picked = tf.data.Dataset.from_generator(lambda: (rows[i] for i in order),
                                            output_signature=train.element_spec)
    return list(batch_examples(picked, batch_size, pad_to=pad_to).take(batches))


def representative_examples(artifact_dir: str | Path, count: int, max_seq_length: int,
                            seed: int) -> list[dict]:
    """`count` training examples (shuffled with `seed`), each a feature dict of int32
    [1, max_seq_length] arrays: the representative dataset of int8 TFLite conversion."""
    return [{name: value.numpy() for name, value in features.items()}
            for features, _ in training_sample(artifact_dir, count, 1, seed, pad_to=max_seq_length)]


def token_pool(dataset: tf.data.Dataset) -> np.ndarray:
    """Every token id of every example, without each example's first and last token
    ([CLS], [SEP]): sampling from it draws tokens at their corpus frequency."""
    inner = dataset.map(lambda e: e["input_ids"][1:-1], num_parallel_calls=tf.data.AUTOTUNE)
    return np.concatenate([np.zeros(0, np.int32), *inner.as_numpy_iterator()]).astype(np.int32)


def perturb_examples(dataset: tf.data.Dataset, pool: np.ndarray, mask_id: int | None,
                     fraction: float, rate: float, seed: int) -> tf.data.Dataset:
    """Replace a `fraction` of the examples by perturbed copies, labelled -1 (unknown).

    In a perturbed copy every token but the first and last is, with probability `rate`,
    masked (`mask_id`), replaced by a token drawn from `pool`, or deleted, each equally
    likely (replaced or deleted only when `mask_id` is None). The copies carry no label:
    a training step learns them from a teacher's soft labels only. The draws are
    stateless, from `seed` and the example's position, so the same dataset gives the
    same copies every time it is read (a resumed epoch skips to identical batches).
    """
    if not len(pool):
        raise ValueError("the token pool is empty: the examples have no tokens to draw")
    pool_t = tf.constant(pool, tf.int32)
    kinds = 2 if mask_id is None else 3

    def perturb(index, example):
        seeds = tf.random.experimental.stateless_split(
            tf.stack([tf.constant(seed, tf.int64), index]), 4)
        ids, label = example["input_ids"], example["label"]
        n = tf.shape(ids)[0]
        position = tf.range(n)
        change = (position > 0) & (position < n - 1) & \
            (tf.random.stateless_uniform([n], seeds[0]) < rate)
        kind = tf.random.stateless_uniform([n], seeds[1], minval=0, maxval=kinds,
                                           dtype=tf.int32)
        drawn = tf.gather(pool_t, tf.random.stateless_uniform(
            [n], seeds[2], minval=0, maxval=tf.shape(pool_t)[0], dtype=tf.int32))
        new = tf.where(change & (kind == 0), drawn, ids)
        if mask_id is not None:
            new = tf.where(change & (kind == 2), tf.constant(mask_id, tf.int32), new)
        new = tf.boolean_mask(new, ~(change & (kind == 1)))
        chosen = tf.random.stateless_uniform([], seeds[3]) < fraction
        return {**example,
                "input_ids": tf.cond(chosen, lambda: new, lambda: ids),
                "label": tf.where(chosen, tf.constant(-1, label.dtype), label)}

    return dataset.enumerate().map(perturb, num_parallel_calls=tf.data.AUTOTUNE)
