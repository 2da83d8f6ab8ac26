"""Prepare: read a dataset, split it, tokenize it and cache the splits.

Reads the source named by `data.source` (the built-in Rotten Tomatoes corpus, a
tensorflow-datasets catalog dataset or local CSV/TSV/JSONL files), maps labels to ids,
tokenizes with the checkpoint's WordPiece vocabulary (the same TF function the exported
models carry) and writes:

    <run-dir>/prepare/
        train.tfrecord, validation.tfrecord, test.tfrecord
            tf.train.Example per text: `input_ids` (int64 list: [CLS] ... [SEP], truncated
            to data.max_seq_length, not padded), `label` (int64), `text` (bytes)
        labels.txt        label names, one per line, in id order
        vocab.txt         the WordPiece vocabulary
        tokenizer.json    {"lower_case", "max_seq_length", "vocab_size", special token ids}
        config.yaml       the resolved pipeline config
        manifest.json     per-split counts, label counts, token length percentiles,
                          truncation rate, groups per split, groups and texts shared
                          between splits (`shared_groups`, `shared_texts`: distinct
                          values found in both splits of each pair), `rare_labels`
                          (inferred labels with very few rows, and where they are);
                          `external_inputs`: each data file (or the tfds dataset's name
                          and version) and the vocabulary files, with size and sha256

Editing any byte of a data or vocabulary file makes `prepare` (and the stages after
it) rerun. Rows whose text also occurs in another split, and inferred labels with
fewer than 5 rows or 1% of all rows (a cut-off last line, a typo), are warned about.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigValueError
from core.progress import progress
from data.checks import rare_labels, shared_texts
from data.text_files.builder import DataError
from pipeline.cli import stage_main
from pipeline.config import SPLITS, PipelineConfig

log = logging.getLogger(__name__)

INPUTS: tuple[str, ...] = ()
TOKENIZE_BATCH = 512


def fingerprint_config(config: PipelineConfig) -> dict[str, Any]:
    model = config.model
    return {"seed": config.seed, "data": config.data,
            "tokenizer": {"checkpoint": model.checkpoint, "vocab": model.vocab,
                          "lower_case": model.lower_case}}


def external_inputs(config: PipelineConfig) -> dict[str, Any]:
    """The data files (or tfds dataset version) and vocabulary files, by content."""
    from data.sources import describe_source
    from models.checkpoints import describe_tokenizer

    return {"data": describe_source(config.data), "tokenizer": describe_tokenizer(config.model)}


def _collect(config: PipelineConfig, source) -> dict[str, list[tuple[str, str, str, str]]]:
    """All rows (text, label, group, origin) of each split, checked: no blank text, no
    empty split."""
    cfg = config.data
    rows: dict[str, list] = {}
    for split in SPLITS:
        kept, blank = [], 0
        for text, label, group, origin in progress(source.splits[split](),
                                                   desc=f"read {split}", unit=" rows"):
            if label in cfg.drop_labels:
                continue
            if not text.strip():
                blank += 1
                continue
            kept.append((text, label, group, origin))
            if cfg.max_examples and len(kept) >= cfg.max_examples:
                break
        if blank:
            log.warning("%s: dropped %d blank texts", split, blank)
        if not kept:
            raise DataError(f"split '{split}' (source split {cfg.source_split(split)!r}) is "
                            "empty; check data.splits and the data")
        rows[split] = kept
    return rows


def _label_names(config: PipelineConfig, source, rows) -> tuple[str, ...]:
    names = tuple(config.data.labels) or source.label_names or \
        tuple(sorted({label for _, label, _, _ in rows["train"]}))
    if len(names) < 2:
        raise DataError(f"need at least two labels, found {list(names)}; set data.labels or "
                        "check data.label_key")
    known = set(names)
    for split, split_rows in rows.items():
        unknown = Counter(label for _, label, _, _ in split_rows if label not in known)
        if unknown:
            label, count = unknown.most_common(1)[0]
            raise DataError(f"split '{split}' has label {label!r} ({count} rows) outside the "
                            f"labels {list(names)}; declare it in data.labels or drop it with "
                            "data.drop_labels")
    return names


def _tokenize(tokenizer, texts: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(TOKENIZE_BATCH)
    dataset = dataset.map(tokenizer.tokenize, num_parallel_calls=tf.data.AUTOTUNE)
    ids, lengths = [], []
    for ragged, length in progress(dataset.as_numpy_iterator(), desc="tokenize",
                                   total=-(-len(texts) // TOKENIZE_BATCH)):
        ids.extend(row.tolist() for row in ragged)  # numpy rows, one per text
        lengths.append(length)
    return [np.asarray(row, dtype=np.int64) for row in ids], np.concatenate(lengths)


def _write_split(path: Path, texts, label_ids, ids) -> None:
    import tensorflow as tf

    def feature_int(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    with tf.io.TFRecordWriter(str(path)) as writer:
        for text, label, row in zip(texts, label_ids, ids):
            example = tf.train.Example(features=tf.train.Features(feature={
                "input_ids": feature_int(row.tolist()),
                "label": feature_int([int(label)]),
                "text": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[text.encode("utf-8")])),
            }))
            writer.write(example.SerializeToString())


def _split_stats(labels: list[str], names, lengths: np.ndarray, max_seq_length: int,
                 groups) -> dict:
    counts = Counter(labels)
    p = np.percentile(lengths, [50, 90, 95, 99])
    return {
        "examples": len(labels),
        "label_counts": {name: counts.get(name, 0) for name in names},
        "label_fractions": {name: round(counts.get(name, 0) / len(labels), 4)
                            for name in names},
        "tokens": {"p50": float(p[0]), "p90": float(p[1]), "p95": float(p[2]),
                   "p99": float(p[3]), "max": int(lengths.max()), "mean": float(lengths.mean())},
        "truncated": int((lengths > max_seq_length).sum()),
        "truncation_rate": round(float((lengths > max_seq_length).mean()), 6),
        "groups": len(set(groups) - {""}),
    }


def run(config: PipelineConfig, inputs: dict[str, Path], out_dir: Path,
        work_dir: Path) -> dict[str, Any]:
    from data.sources import load_source
    from data.tokenizer import BertTokenizer
    from models.checkpoints import architecture, tokenizer_spec

    max_seq_length = config.data.max_seq_length
    positions = architecture(config.model).max_positions
    if max_seq_length > positions:  # fail before reading any data, not at finetune
        raise ConfigValueError(
            "max_seq_length", f"{max_seq_length} exceeds the {positions} positions of "
            f"model.checkpoint {config.model.checkpoint!r}; set it to at most {positions}",
            "data")
    spec = tokenizer_spec(config.model)
    source = load_source(config.data, config.seed)
    rows = _collect(config, source)
    names = _label_names(config, source, rows)
    label_id = {name: i for i, name in enumerate(names)}
    inferred = not (config.data.labels or source.label_names)
    rare = _warn_rare_labels(rows) if inferred else {}
    tokenizer = BertTokenizer(list(spec.vocab), lower_case=spec.lower_case,
                              max_seq_length=max_seq_length)
    if tokenizer.pad_id != 0:  # batching pads with 0 and masks on ids != 0
        raise DataError(f"{spec.origin}: [PAD] must be token 0 of the vocabulary, found it at "
                        f"{tokenizer.pad_id}")

    splits: dict[str, Any] = {}
    groups: dict[str, set[str]] = {}
    for split in SPLITS:
        texts, labels, split_groups, _ = (list(col) for col in zip(*rows[split]))
        ids, lengths = _tokenize(tokenizer, texts)
        _write_split(out_dir / f"{split}.tfrecord", texts, [label_id[x] for x in labels], ids)
        splits[split] = _split_stats(labels, names, lengths, max_seq_length, split_groups)
        groups[split] = set(split_groups) - {""}
        log.info("%s: %d examples, labels %s, median %.0f tokens, %.2f%% truncated", split,
                 len(texts), splits[split]["label_counts"], splits[split]["tokens"]["p50"],
                 100 * splits[split]["truncation_rate"])

    shared = {f"{a}/{b}": len(groups[a] & groups[b])
              for i, a in enumerate(SPLITS) for b in SPLITS[i + 1:]}
    if config.data.group_key or config.data.source == "rotten_tomatoes":
        log.info("groups shared between splits: %s", shared)
    same_texts = _warn_shared_texts(rows)

    (out_dir / "labels.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    tokenizer_info = tokenizer.save(out_dir, spec.vocab, origin=spec.origin)
    return {"labels": list(names), "splits": splits, "shared_groups": shared,
            "shared_texts": same_texts, "rare_labels": rare,
            "tokenizer": tokenizer_info, "source": source.description}


def _warn_rare_labels(rows) -> dict[str, dict]:
    """Inferred labels with very few rows (see data.checks), each warned about."""
    total = sum(len(split_rows) for split_rows in rows.values())
    rare = rare_labels(rows)
    for label, found in rare.items():
        log.warning("label %r has only %d of %d rows (%s): a cut-off or mistyped label? "
                    "List the real labels in data.labels to make others an error, or drop "
                    "them with data.drop_labels", label, found["rows"], total,
                    ", ".join(found["where"]))
    return rare


def _warn_shared_texts(rows) -> dict[str, int]:
    """Distinct texts found in two splits, per pair; warned about when there are any."""
    shared = shared_texts(rows)
    for pair, found in shared.items():
        if found:
            log.warning("%s: %d distinct texts occur in both splits (e.g. %s): scores on "
                        "them measure memory, not generalisation; remove them, or set "
                        "data.dedupe to keep only each text's first row", pair, len(found),
                        "; ".join(f"{a} = {b}" for a, b in found[:3]))
    return {pair: len(found) for pair, found in shared.items()}


if __name__ == "__main__":
    stage_main("prepare")
