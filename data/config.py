"""Configuration of the data sources, splits and tokenization (`data.*` keys)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from core.config import Section, check

DATA_SOURCES = ("rotten_tomatoes", "tfds", "files")
FILE_FORMATS = ("auto", "csv", "tsv", "jsonl")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class DataConfig(Section):
    """Where examples come from and how they are split and tokenized (stage `prepare`).

    Attributes:
        source: `rotten_tomatoes` (built-in offline corpus), `tfds` (a catalog dataset)
            or `files` (the user's CSV/TSV/JSONL files).
        tfds_name: catalog name with optional config/version, e.g. `glue/sst2`.
        tfds_data_dir: tfds data folder ("" = tfds's default).
        tfds_download: let tfds download and prepare the dataset if absent.
        files: split name -> file, for `files` with given splits.
        path: one file for `files`, split with `split_fractions` and `seed`.
        format: `auto` (from the extension), `csv`, `tsv` or `jsonl`.
        text_key, label_key: column (or tfds feature) names of the text and the label.
            In JSONL the text must be a string; a label may also be a number (`1` ->
            "1", `2.5` -> "2.5") or a boolean ("true"/"false"); lists and objects are
            errors.
        group_key: optional column whose values never straddle two splits (e.g. movie).
        labels: the label vocabulary, in id order; empty = sorted values seen in train
            (then labels with fewer than 5 rows or 1% of the rows are warned about).
        drop_labels: label values whose rows are dropped before anything else.
        dedupe: drop rows whose text repeats an earlier row's.
        split_fractions: train/validation/test fractions when the source is one pool.
        splits: output split -> source split expression in tfds syntax
            (e.g. `train[:95%]`); missing entries map a split to itself.
        max_seq_length: tokens per example including [CLS] and [SEP].
        max_examples: keep at most this many examples per split (0 = all); for tiny runs.
    """

    SECTION: ClassVar[str] = "data"

    source: str = "rotten_tomatoes"
    tfds_name: str = ""
    tfds_data_dir: str = ""
    tfds_download: bool = True
    files: dict[str, str] = field(default_factory=dict)
    path: str = ""
    format: str = "auto"
    text_key: str = "text"
    label_key: str = "label"
    group_key: str = ""
    labels: tuple[str, ...] = ()
    drop_labels: tuple[str, ...] = ()
    dedupe: bool = False
    split_fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
    splits: dict[str, str] = field(default_factory=dict)
    max_seq_length: int = 128
    max_examples: int = 0

    def validate(self) -> None:
        check(self.source in DATA_SOURCES, "source",
              f"expected one of {', '.join(DATA_SOURCES)}, found {self.source!r}")
        check(self.format in FILE_FORMATS, "format",
              f"expected one of {', '.join(FILE_FORMATS)}, found {self.format!r}")
        check(2 < self.max_seq_length <= 4096, "max_seq_length",
              f"expected 3..4096, found {self.max_seq_length}")
        check(self.max_examples >= 0, "max_examples", "must be >= 0")
        check(len(self.split_fractions) == 3 and all(f > 0 for f in self.split_fractions)
              and abs(sum(self.split_fractions) - 1.0) < 1e-6, "split_fractions",
              "expected three positive fractions summing to 1, "
              f"found {list(self.split_fractions)}")
        for name in self.splits:
            check(name in SPLITS, f"splits.{name}", f"split names are {', '.join(SPLITS)}")
        check(len(set(self.labels)) == len(self.labels), "labels", "labels repeat")
        check(not set(self.labels) & set(self.drop_labels), "drop_labels",
              "a label cannot be both declared and dropped")
        check(bool(self.text_key) and bool(self.label_key), "text_key",
              "text_key and label_key must be set")
        if self.source == "tfds":
            check(bool(self.tfds_name), "tfds_name", "required when data.source is tfds")
        if self.source == "files":
            check(bool(self.files) != bool(self.path), "files",
                  "set exactly one of data.files (given splits) or data.path (one file)")
            if self.files:
                for name in self.files:
                    check(bool(self.files[name]), f"files.{name}", "empty path")

    def source_split(self, split: str) -> str:
        """The source split expression that feeds output split `split`."""
        return self.splits.get(split, split)
