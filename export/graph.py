"""What a SavedModel's `saved_model.pb` says, read without loading the model: its
signature names and the op types of its graph. Loading the raw-string SavedModel needs
tensorflow_text's ops registered; reading the proto does not, so a process can tell the
two SavedModel targets apart (and check which ops one needs) without importing it.

Example:
    >>> signature_names("runs/default/export/saved_model/slimbert-ids/1")
    ['token_ids']
    >>> unregistered_ops("runs/default/export/saved_model/slimbert/1")  # no tensorflow_text
    ['FastBertNormalize', 'FastWordpieceTokenizeWithOffsets']
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import ArtifactError

SAVED_MODEL_FILE = "saved_model.pb"


def read_saved_model(folder: str | os.PathLike):
    """The `SavedModel` proto of `folder/saved_model.pb`; ArtifactError if unreadable."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(folder) / SAVED_MODEL_FILE
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(path.read_bytes())
    except (OSError, DecodeError) as err:
        raise ArtifactError(f"{path} cannot be read as a SavedModel ({err})") from None
    if not proto.meta_graphs:
        raise ArtifactError(f"{path} holds no MetaGraph")
    return proto


def signature_names(folder: str | os.PathLike) -> list[str]:
    """The serving signatures of the SavedModel in `folder`, sorted."""
    return sorted(read_saved_model(folder).meta_graphs[0].signature_def)


def op_types(folder: str | os.PathLike) -> list[str]:
    """Every op type of the SavedModel's graph: its nodes and its function library's
    (a node that calls a library function by name is not an op type)."""
    graph = read_saved_model(folder).meta_graphs[0].graph_def
    types = {node.op for node in graph.node}
    for function in graph.library.function:
        types.update(node.op for node in function.node_def)
    return sorted(types - {function.signature.name for function in graph.library.function})


def unregistered_ops(folder: str | os.PathLike) -> list[str]:
    """The op types of the SavedModel that no library loaded in this process defines: in
    a process that never imported tensorflow_text, the ops core TensorFlow lacks."""
    from tensorflow.python.framework import op_def_registry

    return [op for op in op_types(folder) if op_def_registry.get(op) is None]


__all__ = ["SAVED_MODEL_FILE", "op_types", "read_saved_model", "signature_names",
           "unregistered_ops"]
