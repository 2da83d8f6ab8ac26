"""`slimbert_text_files`: a tfds builder over local CSV/TSV/JSONL files.

Rows are read and validated once, in `_split_generators`, so every bad row is reported
with its file and line before tfds writes anything. tfds writes into its own temporary
folder and renames it on success; `data.sources` removes the empty folders a failed
build leaves around it.

JSONL values: the text must be a JSON string; labels and groups may also be numbers
(`1` -> "1", `2.5` -> "2.5") or booleans (`true` -> "true"); `null` is an empty value;
a list or an object is an error naming the file, line and key. JSONL lines end at "\n"
only (JSON's own rule: U+2028, U+2029 and U+0085 are ordinary characters in a string).
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import lzma
import zlib
from collections import Counter
from pathlib import Path

import tensorflow_datasets as tfds

from core.errors import SlimbertError

csv.field_size_limit(1 << 27)

_OPENERS = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}


class DataError(SlimbertError):
    """Input data that cannot be used as given."""


@dataclasses.dataclass(eq=False)
class TextFilesConfig(tfds.core.BuilderConfig):
    """Which files to read and how; `name` must identify all of it (see sources.py).

    `files` holds (split, path) pairs; the single split name `all` means one pool that is
    split into train/validation/test by `fractions`, keyed by `group_key` (or the text).
    """

    files: tuple[tuple[str, str], ...] = ()
    format: str = "auto"
    text_key: str = "text"
    label_key: str = "label"
    group_key: str = ""
    labels: tuple[str, ...] = ()
    drop_labels: tuple[str, ...] = ()
    dedupe: bool = False
    fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
    seed: int = 0


def file_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in _OPENERS]
    ext = suffixes[-1] if suffixes else ""
    formats = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
               ".ndjson": "jsonl"}
    if ext not in formats:
        raise DataError(f"{path}: cannot tell the format from the extension {ext or '(none)'}; "
                        "set data.format to csv, tsv or jsonl")
    return formats[ext]


def read_text(path: Path) -> str:
    """The whole file as text; non-UTF-8 bytes are an error naming the line."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    opener = _OPENERS.get(path.suffix.lower(), open)
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as err:
        # zlib.error: a gzip body that does not decompress (gzip raises it unwrapped).
        raise DataError(f"{path}: cannot read: {err}; the file is damaged or not in the "
                        "format its extension says") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes {raw[err.start:err.end]!r} are not UTF-8; "
                        "re-encode the file as UTF-8") from None


def read_rows(path: Path, fmt: str, keys: tuple[str, ...], optional: tuple[str, ...] = (),
              text_keys: tuple[str, ...] = ()):
    """Yield (line, {key: str}) for each row; missing columns are errors.

    In JSONL, the values of `text_keys` must be strings; the other keys also take numbers
    and booleans (see the module docstring).
    """
    text = read_text(path)
    if fmt == "jsonl":
        # JSON Lines ends a record at "\n" (a "\r" before it is JSON whitespace);
        # str.splitlines would also split strings at U+2028, U+2029, U+0085, ...
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: invalid JSON: {err.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line")
            for key in keys:
                if key not in row:
                    raise DataError(f"{path}:{number}: missing key '{key}' (keys present: "
                                    f"{', '.join(row) or 'none'}); set data.text_key / "
                                    "data.label_key / data.group_key")
            yield number, {k: _json_value(row.get(k), k in text_keys, f"{path}:{number}", k)
                           for k in keys + optional}
        return
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",")
    header = reader.fieldnames or []
    if not header:
        raise DataError(f"{path}: empty file (expected a header row)")
    for key in keys:
        if key not in header:
            raise DataError(f"{path}:1: missing column '{key}' (columns: {', '.join(header)}); "
                            "set data.text_key / data.label_key / data.group_key")
    end = reader.line_num  # last line of the previous record
    for row in reader:
        if None in row or any(row[k] is None for k in keys):
            raise DataError(f"{path}:{end + 1}: the row's field count differs from the "
                            f"header's ({len(header)} fields)")
        yield end + 1, {k: row.get(k) or "" for k in keys + optional}
        end = reader.line_num


_JSON_TYPES = {dict: "an object", list: "a list", bool: "a boolean", int: "a number",
               float: "a number"}


def _json_value(value, text_only: bool, where: str, key: str) -> str:
    """A JSONL value as the string it stands for; `null` is empty. A text must be a
    string; a label or group may also be a number or a boolean, never a list or object."""
    if value is None or isinstance(value, str):
        return value or ""
    if text_only or isinstance(value, (dict, list)):
        expected = "a string" if text_only else "a string, number or boolean"
        raise DataError(f"{where}: key '{key}' holds {_JSON_TYPES[type(value)]} "
                        f"({json.dumps(value, ensure_ascii=False)[:60]}), expected {expected}")
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # ints as written; floats in Python's shortest form


def assign_splits(keys: list[str], seed: int, fractions: tuple[float, ...]) -> dict[str, str]:
    """Deterministic split per group key, sized by examples, never splitting a group.

    Groups are put in the order of a seeded hash of their key; each group then goes to
    the split where the midpoint of its examples falls on the cumulative scale, so split
    sizes land close to `fractions` even when groups are large.
    """
    sizes = Counter(keys)
    order = sorted(sizes, key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).digest())
    bounds = (fractions[0], fractions[0] + fractions[1])
    total, seen, out = len(keys), 0, {}
    for key in order:
        middle = (seen + sizes[key] / 2) / total
        out[key] = "train" if middle < bounds[0] else \
            "validation" if middle < bounds[1] else "test"
        seen += sizes[key]
    return out


class SlimbertTextFiles(tfds.core.GeneratorBasedBuilder):
    """Text classification examples from local files."""

    # Bump when reading or splitting changes: cached datasets are keyed by version.
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "First version.",
                     "1.1.0": "Feature `origin` (file:line of each row); JSONL lines split "
                              "at \\n only; lists and objects in JSONL refused."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(),
                "label": tfds.features.Text(),
                "group": tfds.features.Text(),
                "origin": tfds.features.Text(),  # file:line, for messages about rows
            }),
            supervised_keys=("text", "label"),
            description="Local text classification files read by slimbert.",
        )

    def _split_generators(self, dl_manager):
        rows = self._read_all()
        return {split: self._generate_examples(examples) for split, examples in rows.items()}

    def _generate_examples(self, examples):
        for key, text, label, group, origin in examples:
            yield key, {"text": text, "label": label, "group": group, "origin": origin}

    def _read_all(self) -> dict[str, list[tuple[str, str, str, str, str]]]:
        """Split -> rows (key, text, label, group, origin), every row checked. The key
        ("name:line") orders the examples (tfds sorts by its hash); the origin is the
        path and line that messages about the row name."""
        cfg: TextFilesConfig = self.builder_config
        keys = (cfg.text_key, cfg.label_key) + ((cfg.group_key,) if cfg.group_key else ())
        declared = set(cfg.labels)
        seen_texts: set[str] = set()
        out: dict[str, list] = {}
        for split, name in cfg.files:
            path = Path(name)
            count = 0
            for line, row in read_rows(path, file_format(path, cfg.format), keys,
                                       text_keys=(cfg.text_key,)):
                label = row[cfg.label_key].strip()
                if label in cfg.drop_labels:
                    continue
                text = row[cfg.text_key]
                where = f"{path}:{line}"
                if not text.strip():
                    raise DataError(f"{where}: blank text in column '{cfg.text_key}'")
                if not label:
                    raise DataError(f"{where}: empty label in column '{cfg.label_key}'")
                if declared and label not in declared:
                    raise DataError(
                        f"{where}: label {label!r} is not one of the declared labels "
                        f"{sorted(declared)}; add it to data.labels or to data.drop_labels")
                if cfg.dedupe:
                    if text in seen_texts:
                        continue
                    seen_texts.add(text)
                group = row.get(cfg.group_key, "") if cfg.group_key else ""
                out.setdefault(split, []).append((f"{path.name}:{line}", text, label, group,
                                                  where))
                count += 1
            if count == 0:
                raise DataError(f"{path}: no usable rows (after dropping labels "
                                f"{list(cfg.drop_labels)})" if cfg.drop_labels
                                else f"{path}: no data rows")
        pool = out.pop("all", None)
        if pool is not None:
            # Rows without a group value are their own group, keyed by their text.
            split_keys = [group or f"\0{text}" for _, text, _, group, _ in pool]
            where = assign_splits(split_keys, cfg.seed, cfg.fractions)
            for row, key in zip(pool, split_keys):
                out.setdefault(where[key], []).append(row)
        for split in ("train", "validation", "test") if pool is not None else \
                [s for s, _ in cfg.files]:
            if not out.get(split):
                raise DataError(f"split '{split}' is empty; use more data or other "
                                "data.split_fractions")
        return out
