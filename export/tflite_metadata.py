"""TFLite model metadata for MediaPipe Tasks' `TextClassifier`: one file that classifies
raw text on Android, iOS, the web and in Python.

MediaPipe (like the TFLite Task Library's `BertNLClassifier` before it) reads the model
metadata flatbuffer (schema `metadata_schema.fbs`, file identifier `M001`) stored in the
model's `TFLITE_METADATA` buffer, and the files it names from a zip archive appended to
the flatbuffer. For a BERT classifier it needs:

- three int32 inputs of shape [1, max_seq_length], whose metadata names are `ids`,
  `mask` and `segment_ids` (in the order of the subgraph's inputs);
- a `BertTokenizerOptions` input process unit naming the WordPiece vocabulary file;
- one float32 output of class scores; MediaPipe applies no softmax, so the model must
  return probabilities (`export.tflite.to_tflite` ends in a SOFTMAX); a
  `TENSOR_AXIS_LABELS` file gives the class names.

MediaPipe's own writer (`mediapipe.tasks.python.metadata.metadata_writers`) cannot be
imported from the mediapipe 1.2.2 wheel (its `mediapipe.tasks.cc.metadata.python` module
is missing), and tflite-support pins protobuf 3, which TensorFlow 2.21 does not allow.
So the metadata flatbuffer is built here with the `flatbuffers` runtime from the schema's
field order, and added to the model with ai-edge-litert's model schema.

MediaPipe's BERT preprocessing differs from `data.tokenizer.BertTokenizer` on non-ASCII
text (docs/deployment.md, "MediaPipe's tokenizer"): it lower-cases ASCII letters only,
keeps accents, and lower-cases always, so the export stage gives a cased checkpoint's
model no metadata.

Example:
    >>> flat = with_metadata(flat, vocab=Path("vocab.txt"), labels=["neg", "pos"],
    ...                      name="slimbert", description="...", version="1")
    >>> read_metadata(flat)["inputs"]
    ['segment_ids', 'mask', 'ids']
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np

from data.features import INPUT_NAMES

METADATA_BUFFER = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
# The newest schema feature used here: input process units (BertTokenizerOptions), 1.1.0.
MIN_PARSER_VERSION = "1.1.0"
VOCAB_FILE = "vocab.txt"
LABELS_FILE = "labels.txt"
# Our input names -> the names MediaPipe's BertPreprocessorCalculator looks up.
MEDIAPIPE_INPUT_NAMES = {"input_ids": "ids", "input_mask": "mask",
                         "segment_ids": "segment_ids"}
OUTPUT_NAME = "probabilities"

# Enum values of metadata_schema.fbs.
_VOCABULARY, _TENSOR_AXIS_LABELS = 5, 2          # AssociatedFileType
_FEATURE_PROPERTIES = 1                          # ContentProperties union
_BERT_TOKENIZER_OPTIONS = 4                      # ProcessUnitOptions union


class _Writer:
    """Tables of the metadata schema, built bottom-up (children before parents)."""

    def __init__(self) -> None:
        self.b = flatbuffers.Builder(4096)

    def table(self, slots: dict[int, tuple[str, Any]]) -> int:
        """A table; `slots` maps a field's slot (its position in the schema, a union
        taking two: type then value) to ("offset" | "ubyte", value); None is omitted."""
        b = self.b
        b.StartObject(max(slots) + 1)
        for slot, (kind, value) in slots.items():
            if value is None:
                continue
            if kind == "offset":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            else:
                b.PrependUint8Slot(slot, value, 0)
        return b.EndObject()

    def string(self, text: str | None) -> int | None:
        return None if text is None else self.b.CreateString(text)

    def tables(self, offsets: list[int]) -> int:
        self.b.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            self.b.PrependUOffsetTRelative(offset)
        return self.b.EndVector()

    def floats(self, values: list[float]) -> int:
        self.b.StartVector(4, len(values), 4)
        for value in reversed(values):
            self.b.PrependFloat32(value)
        return self.b.EndVector()

    def associated_file(self, name: str, description: str, file_type: int) -> int:
        name_at, description_at = self.string(name), self.string(description)
        return self.table({0: ("offset", name_at), 1: ("offset", description_at),
                           2: ("ubyte", file_type)})

    def feature_content(self) -> int:
        self.b.StartObject(0)
        properties = self.b.EndObject()  # FeatureProperties has no fields
        return self.table({0: ("ubyte", _FEATURE_PROPERTIES), 1: ("offset", properties)})

    def tensor(self, name: str, description: str, stats: tuple[float, float] | None = None,
               files: list[int] | None = None) -> int:
        name_at, description_at = self.string(name), self.string(description)
        content = self.feature_content()
        stats_at = None
        if stats is not None:
            high, low = self.floats([stats[1]]), self.floats([stats[0]])
            stats_at = self.table({0: ("offset", high), 1: ("offset", low)})
        files_at = self.tables(files) if files else None
        return self.table({0: ("offset", name_at), 1: ("offset", description_at),
                           3: ("offset", content), 5: ("offset", stats_at),
                           6: ("offset", files_at)})


def metadata_flatbuffer(input_order: list[str], num_classes: int, *, name: str,
                        description: str, version: str, author: str = "slimbert",
                        license: str | None = None) -> bytes:
    """The ModelMetadata flatbuffer of a BERT classifier (see the module docstring).

    Args:
        input_order: list[str]. Our input names (`data.features.INPUT_NAMES`) in the
            order of the model subgraph's inputs.
        num_classes: int. Number of classes (described in the output's description).
        name, description, version, author, license: str. What MediaPipe shows.
    """
    if sorted(input_order) != sorted(INPUT_NAMES):
        raise ValueError(f"a BERT classifier's inputs are {INPUT_NAMES}, found {input_order}")
    w = _Writer()
    what = {"input_ids": "WordPiece ids: [CLS] text [SEP], then 0",
            "input_mask": "1 for each real token, 0 for padding",
            "segment_ids": "all 0 (one text)"}
    inputs = [w.tensor(MEDIAPIPE_INPUT_NAMES[n], what[n]) for n in input_order]
    vocab = w.associated_file(VOCAB_FILE, "WordPiece vocabulary of the BERT tokenizer",
                              _VOCABULARY)
    tokenizer_options = w.table({0: ("offset", w.tables([vocab]))})
    tokenizer = w.table({0: ("ubyte", _BERT_TOKENIZER_OPTIONS),
                         1: ("offset", tokenizer_options)})
    labels = w.associated_file(LABELS_FILE, "class names, one per line, in the order of "
                               "the scores", _TENSOR_AXIS_LABELS)
    output = w.tensor(OUTPUT_NAME, f"probability of each of the {num_classes} classes "
                      "(softmax)", stats=(0.0, 1.0), files=[labels])
    subgraph_name = w.string("text classifier")
    subgraph = w.table({0: ("offset", subgraph_name), 2: ("offset", w.tables(inputs)),
                        3: ("offset", w.tables([output])),
                        5: ("offset", w.tables([tokenizer]))})
    strings = [w.string(text) for text in (name, description, version, author, license,
                                           MIN_PARSER_VERSION)]
    root = w.table({0: ("offset", strings[0]), 1: ("offset", strings[1]),
                    2: ("offset", strings[2]), 3: ("offset", w.tables([subgraph])),
                    4: ("offset", strings[3]), 5: ("offset", strings[4]),
                    7: ("offset", strings[5])})
    w.b.Finish(root, file_identifier=METADATA_IDENTIFIER)
    return bytes(w.b.Output())


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _plain(tflite: bytes) -> bytes:
    """`tflite`, checked to have no archive of associated files appended yet."""
    if zipfile.is_zipfile(io.BytesIO(tflite)):
        raise ValueError("this TFLite file already has associated files packed in; add "
                         "metadata to the converter's output")
    return tflite


def input_order(tflite: bytes) -> list[str]:
    """Our names of a token-id model's inputs, in the order of its subgraph's inputs."""
    schema = _schema()
    model = schema.Model.GetRootAs(tflite, 0)
    graph = model.Subgraphs(0)
    order = []
    for i in range(graph.InputsLength()):
        tensor_name = graph.Tensors(graph.Inputs(i)).Name().decode()
        found = [n for n in INPUT_NAMES if n in tensor_name]
        if len(found) != 1:
            raise ValueError(f"TFLite input {tensor_name!r} is none of {INPUT_NAMES}")
        order.append(found[0])
    return order


def with_metadata(tflite: bytes, *, vocab: Path, labels: list[str], name: str,
                  description: str, version: str) -> bytes:
    """`tflite` (a token-id classifier from `export.tflite.to_tflite`) with MediaPipe's
    metadata and its vocabulary and labels packed in (module docstring)."""
    schema = _schema()
    flat = _plain(tflite)
    order = input_order(flat)
    model = schema.ModelT.InitFromPackedBuf(flat, 0)
    graph = model.subgraphs[0]
    outputs = [graph.tensors[i] for i in graph.outputs]
    if len(outputs) != 1 or outputs[0].type != schema.TensorType.FLOAT32:
        raise ValueError("MediaPipe's classifier needs one float32 output of scores")
    signatures = model.signatureDefs or []
    if signatures and [_text(o.name) for o in signatures[0].outputs or []] == ["logits"]:
        raise ValueError("this TFLite model returns logits (converted before the softmax "
                         "moved into the graph); MediaPipe needs probabilities: rerun "
                         "`slimbert quantize` and `slimbert export`")
    num_classes = int(outputs[0].shape[-1])
    if num_classes != len(labels):
        raise ValueError(f"the model has {num_classes} outputs for {len(labels)} labels")
    metadata = metadata_flatbuffer(order, num_classes, name=name, description=description,
                                   version=version)
    entries = [m for m in (model.metadata or []) if _text(m.name) != METADATA_BUFFER]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_BUFFER
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*entries, entry]
    builder = flatbuffers.Builder(len(flat) + len(metadata) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = io.BytesIO(bytes(builder.Output()))
    out.seek(0, io.SEEK_END)
    # Stored, not deflated: MediaPipe maps the associated files straight from the model.
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(VOCAB_FILE, Path(vocab).read_bytes())
        archive.writestr(LABELS_FILE, "".join(f"{label}\n" for label in labels))
    return out.getvalue()


def read_metadata(tflite: bytes) -> dict[str, Any] | None:
    """What MediaPipe will find in a TFLite file: None without a `TFLITE_METADATA`
    buffer, else {"inputs": metadata names of the inputs, "process_units": count,
    "outputs": names, "files": names packed in, "min_parser_version"}."""
    if len(tflite) < 8 or tflite[4:8] != b"TFL3":
        raise ValueError("no TFLite file identifier (TFL3)")
    schema = _schema()
    model = schema.Model.GetRootAs(tflite, 0)
    buffer_index = None
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name().decode() == METADATA_BUFFER:
            buffer_index = model.Metadata(i).Buffer()
    if buffer_index is None:
        return None
    data = model.Buffers(buffer_index).DataAsNumpy().tobytes()
    if data[4:8] != METADATA_IDENTIFIER:
        raise ValueError(f"the {METADATA_BUFFER} buffer is not a metadata flatbuffer")
    root = _Table(data, int.from_bytes(data[:4], "little"))
    subgraph = root.tables(3)[0]
    files = []
    if zipfile.is_zipfile(io.BytesIO(tflite)):
        with zipfile.ZipFile(io.BytesIO(tflite)) as archive:
            files = archive.namelist()
    return {"name": root.string(0), "version": root.string(2),
            "inputs": [t.string(0) for t in subgraph.tables(2)],
            "outputs": [t.string(0) for t in subgraph.tables(3)],
            "process_units": len(subgraph.tables(5)), "files": files,
            "min_parser_version": root.string(7)}


class _Table:
    """Read access to a metadata table's string and table-vector fields."""

    def __init__(self, data: bytes, position: int) -> None:
        self.table = flatbuffers.table.Table(bytearray(data), position)

    def _field(self, slot: int) -> int:
        return self.table.Offset(4 + 2 * slot)

    def string(self, slot: int) -> str | None:
        offset = self._field(slot)
        return self.table.String(offset + self.table.Pos).decode() if offset else None

    def tables(self, slot: int) -> list[_Table]:
        offset = self._field(slot)
        if not offset:
            return []
        start = self.table.Vector(offset)
        out = []
        for i in range(self.table.VectorLen(offset)):
            element = start + 4 * i
            out.append(_Table(bytes(self.table.Bytes), self.table.Indirect(element)))
        return out


__all__ = ["MEDIAPIPE_INPUT_NAMES", "input_order", "metadata_flatbuffer", "read_metadata",
           "with_metadata"]
