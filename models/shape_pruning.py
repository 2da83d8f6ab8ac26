"""Shape pruning: a smaller BERT classifier cut out of a fine-tuned one.

`prune_shape` keeps some transformer layers, the most important attention heads and FFN
neurons of each (scores from `models.shape_importance`) and some vocabulary ids, and
builds the student with `models.bert.build_classifier` at the smaller
`BertArchitecture`: a plain model of our BERT class, so quantization, export and serving
take it unchanged. The student is then fine-tuned with distillation from its teacher.

What is copied from the teacher (every student weight comes from one teacher slice):

- embeddings: position, segment and LayerNorm whole; word embeddings: the kept rows;
- attention: the kept heads' q/k/v kernel and bias slices and their rows of the output
  kernel, the output bias whole. Heads keep their width (`head_size`), so with fewer
  heads `num_heads * head_size < hidden_size`;
- FFN: the kept neurons' columns of `ffn_in` (kernel and bias) and rows of `ffn_out`;
  its bias and both LayerNorms whole;
- pooler and classifier whole.

The vocabulary: the student keeps the teacher's tokenizer (a WordPiece tokenizer with a
smaller vocabulary would split words differently) and so the original ids. Its first
layer (`IdRemap`, `embeddings_remap`) maps each original id to a row of its smaller
table, every removed id to the [UNK] row.

Example:
    >>> heads = head_importance(teacher, batches)
    >>> neurons = neuron_importance(teacher, batches)
    >>> student = prune_shape(teacher, arch, keep_layers=[0, 2, 4], heads_per_layer=8,
    ...                       intermediate_size=768, head_scores=heads,
    ...                       neuron_scores=neurons)
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import tf_keras as keras

from models.bert import BertArchitecture, build_classifier, num_transformer_layers

_LAYER = re.compile(r"layer_(\d+)_(.+)")


def _kept_units(scores: np.ndarray | None, count: int | None, total: int, num_layers: int,
                what: str, scores_name: str) -> list[np.ndarray]:
    """Per teacher layer, the sorted indices of the `count` highest-scoring units."""
    if count is None or count == total:
        return [np.arange(total)] * num_layers
    if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= total:
        raise ValueError(f"{what} must be an int in [1, {total}], found {count!r}")
    if scores is None:
        raise ValueError(f"keeping {count} of {total} {what.split('_')[0]} needs "
                         f"{scores_name} (from models.shape_importance)")
    scores = np.asarray(scores)
    if scores.shape != (num_layers, total):
        raise ValueError(f"{scores_name} has shape {scores.shape}, expected "
                         f"{(num_layers, total)} (teacher layers, units)")
    return [np.sort(np.argsort(-row, kind="stable")[:count]) for row in scores]


def _vocabulary(model: keras.Model, arch: BertArchitecture, keep_tokens, unk_id
                ) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """(teacher rows of the student's table, student remap table or None,
    student input_vocab_size)."""
    names = {layer.name for layer in model.layers}
    input_vocab = arch.input_vocab_size or arch.vocab_size
    teacher_table = (model.get_layer("embeddings_remap").table.numpy()
                     if "embeddings_remap" in names else np.arange(input_vocab))
    if keep_tokens is None:
        table = teacher_table if "embeddings_remap" in names else None
        return np.arange(arch.vocab_size), table, arch.input_vocab_size
    if unk_id is None:
        raise ValueError("keep_tokens needs unk_id: the [UNK] id removed ids map to")
    keep = np.unique(np.append(np.asarray(keep_tokens, dtype=np.int64).ravel(), unk_id))
    if keep[0] < 0 or keep[-1] >= input_vocab:
        raise ValueError(f"keep_tokens must be ids in [0, {input_vocab}), found "
                         f"{keep[0]}..{keep[-1]}")
    table = np.full(input_vocab, np.searchsorted(keep, unk_id), dtype=np.int32)
    table[keep] = np.arange(len(keep), dtype=np.int32)
    return teacher_table[keep], table, input_vocab


def _check_teacher(model: keras.Model, arch: BertArchitecture) -> None:
    found = (model.get_layer("embeddings_word").input_dim, num_transformer_layers(model),
             model.get_layer("layer_0_attention")._num_heads,  # noqa: SLF001
             model.get_layer("layer_0_ffn_in").units)
    expected = (arch.vocab_size, arch.num_layers, arch.num_heads, arch.intermediate_size)
    if found != expected:
        raise ValueError(f"model {model.name!r} has (vocab, layers, heads, intermediate) "
                         f"{found} but arch says {expected}: pass the teacher's architecture")


def prune_shape(model: keras.Model, arch: BertArchitecture, *,
                keep_layers: list[int] | None = None, heads_per_layer: int | None = None,
                intermediate_size: int | None = None, keep_tokens: np.ndarray | None = None,
                head_scores: np.ndarray | None = None,
                neuron_scores: np.ndarray | None = None,
                unk_id: int | None = None) -> keras.Model:
    """A new, smaller classifier holding the kept slices of `model`'s weights.

    Args:
        model: keras.Model. The teacher: a float classifier from
            `models.bert.build_classifier` (pooling, head dropout, mask value and
            number of classes are read from it).
        arch: BertArchitecture. The teacher's architecture.
        keep_layers: list[int] | None. Teacher layers to keep, in order; None: all.
        heads_per_layer: int | None. Heads kept in every layer, the highest
            `head_scores` of that layer; None: all.
        intermediate_size: int | None. FFN neurons kept in every layer, the highest
            `neuron_scores`; None: all.
        keep_tokens: np.ndarray | None. Vocabulary ids the student keeps an embedding
            row for (include the special tokens; `unk_id` is added); None: all, and no
            new remap.
        head_scores: np.ndarray | None. [teacher layers, heads], from
            `models.shape_importance.head_importance`; needed when removing heads.
        neuron_scores: np.ndarray | None. [teacher layers, intermediate_size], from
            `neuron_importance`; needed when removing neurons.
        unk_id: int | None. Id of [UNK] (`BertTokenizer.unk_id`); needed with
            `keep_tokens`.

    Returns:
        A `bert_classifier` at the student architecture (`student_architecture`
        gives it), inputs and outputs as the teacher's; its `input_ids` are still the
        teacher's token ids.

    Raises:
        ValueError: arguments that do not fit the teacher (what to fix is named).

    Example:
        >>> student = prune_shape(teacher, arch, keep_layers=[0], heads_per_layer=1,
        ...                       head_scores=head_importance(teacher, batches))
        >>> student_architecture(student, arch).num_heads
        1
    """
    _check_teacher(model, arch)
    layers = list(range(arch.num_layers)) if keep_layers is None else list(keep_layers)
    if not layers or len(set(layers)) != len(layers) or not all(
            isinstance(i, (int, np.integer)) and 0 <= i < arch.num_layers for i in layers):
        raise ValueError(f"keep_layers must be distinct layer indices in "
                         f"[0, {arch.num_layers}), found {keep_layers!r}")
    layers = [int(i) for i in layers]
    heads = _kept_units(head_scores, heads_per_layer, arch.num_heads, arch.num_layers,
                        "heads_per_layer", "head_scores")
    neurons = _kept_units(neuron_scores, intermediate_size, arch.intermediate_size,
                          arch.num_layers, "intermediate_size", "neuron_scores")
    rows, table, input_vocab = _vocabulary(model, arch, keep_tokens, unk_id)

    student_arch = dataclasses.replace(
        arch, num_layers=len(layers), num_heads=len(heads[0]), head_size=arch.head_size,
        intermediate_size=len(neurons[0]), vocab_size=len(rows),
        input_vocab_size=input_vocab)
    names = {layer.name for layer in model.layers}
    student = build_classifier(
        student_arch, model.get_layer("classifier").units,
        pooling="cls" if "pooler" in names else "mean",
        head_dropout=model.get_layer("head_dropout").rate,
        mask_value=model.get_layer("layer_0_attention").mask_value)

    values = {}  # id(student variable) -> (variable, value)

    def put(variable, value) -> None:
        value = np.asarray(value)
        if tuple(variable.shape) != value.shape:
            raise AssertionError(f"{variable.name}: slice of shape {value.shape}, "
                                 f"expected {tuple(variable.shape)}")
        values[id(variable)] = (variable, value)

    for layer in student.layers:
        if not layer.weights:
            continue
        match = _LAYER.fullmatch(layer.name)
        old = layers[int(match[1])] if match else None
        part = match[2] if match else layer.name
        if part == "embeddings_remap":  # the teacher may have none
            put(layer.table, table)
            continue
        source = model.get_layer(f"layer_{old}_{part}" if match else layer.name)
        if part == "embeddings_word":
            put(layer.embeddings, source.embeddings.numpy()[rows])
        elif part == "attention":
            kept = heads[old]
            for dense in ("_query_dense", "_key_dense", "_value_dense"):
                ours, theirs = getattr(layer, dense), getattr(source, dense)
                put(ours.kernel, theirs.kernel.numpy()[:, kept])
                put(ours.bias, theirs.bias.numpy()[kept])
            put(layer._output_dense.kernel,  # noqa: SLF001
                source._output_dense.kernel.numpy()[kept])  # noqa: SLF001
            put(layer._output_dense.bias, source._output_dense.bias.numpy())  # noqa: SLF001
        elif part == "ffn_in":
            put(layer.kernel, source.kernel.numpy()[:, neurons[old]])
            put(layer.bias, source.bias.numpy()[neurons[old]])
        elif part == "ffn_out":
            put(layer.kernel, source.kernel.numpy()[neurons[old]])
            put(layer.bias, source.bias.numpy())
        else:
            for ours, theirs in zip(layer.weights, source.weights, strict=True):
                put(ours, theirs.numpy())
    missing = [w.name for w in student.weights if id(w) not in values]
    if missing:
        raise AssertionError(f"prune_shape copies nothing into {missing}")
    for variable, value in values.values():
        variable.assign(value.astype(variable.dtype.as_numpy_dtype))
    return student


def student_architecture(student: keras.Model, arch: BertArchitecture) -> BertArchitecture:
    """The architecture of a model `prune_shape` made from a teacher of `arch`.

    The sizes are read from the student's layers, everything else (widths, positions,
    dropout, activation) from `arch`: what a stage writes into the student's
    `model.json` so that later stages rebuild and check it.

    Args:
        student: keras.Model. Returned by `prune_shape`.
        arch: BertArchitecture. The teacher's architecture.

    Example:
        >>> student_architecture(prune_shape(teacher, arch, keep_layers=[0]), arch).num_layers
        1
    """
    attention = student.get_layer("layer_0_attention")
    names = {layer.name for layer in student.layers}
    return dataclasses.replace(
        arch, num_layers=num_transformer_layers(student),
        num_heads=attention._num_heads, head_size=attention._key_dim,  # noqa: SLF001
        intermediate_size=student.get_layer("layer_0_ffn_in").units,
        vocab_size=student.get_layer("embeddings_word").input_dim,
        input_vocab_size=(student.get_layer("embeddings_remap").input_vocab_size
                          if "embeddings_remap" in names else None))


def evenly_spaced_layers(total: int, keep: int) -> list[int]:
    """`keep` of `total` layer indices, evenly spaced and ending with the last layer
    (6 -> 3: [1, 3, 5]; 6 -> 2: [2, 5]); the default choice of the distill stage.

    Example:
        >>> evenly_spaced_layers(6, 4)
        [0, 2, 3, 5]
    """
    if not 0 < keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} layers")
    return [(i + 1) * total // keep - 1 for i in range(keep)]


def kept_vocabulary(counts: np.ndarray, special_ids, *, min_count: int = 1,
                    extra: int = 0) -> np.ndarray:
    """The token ids a vocabulary-pruned student keeps a row for, sorted.

    Args:
        counts: int [vocab_size]: occurrences of every id in the training split.
        special_ids: ids kept whatever their count ([PAD], [UNK], [CLS], [SEP], [MASK]).
        min_count: occurrences an id needs to be kept.
        extra: also keep this many of the lowest ids not kept otherwise.

    Example:
        >>> kept_vocabulary(np.array([0, 3, 0, 1, 0]), [0], extra=1).tolist()
        [0, 1, 2, 3]
    """
    counts = np.asarray(counts)
    keep = np.zeros(len(counts), bool)
    keep[counts >= min_count] = True
    keep[np.asarray(list(special_ids), dtype=np.int64)] = True
    if extra:
        keep[np.flatnonzero(~keep)[:extra]] = True
    return np.flatnonzero(keep)


def parameter_breakdown(model: keras.Model) -> dict[str, int]:
    """Parameters of a `models.bert` classifier by part: word embeddings (the table),
    other embeddings (positions, segments, LayerNorm), encoder layers, head (pooler and
    classifier) and the total. The id remap table holds no trainable weights and is
    not counted."""
    parts = {"word_embeddings": 0, "other_embeddings": 0, "encoder": 0, "head": 0}
    for layer in model.layers:
        count = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
        if layer.name == "embeddings_word":
            parts["word_embeddings"] += count
        elif layer.name.startswith("embeddings"):
            parts["other_embeddings"] += count
        elif _LAYER.fullmatch(layer.name):
            parts["encoder"] += count
        else:
            parts["head"] += count
    return {**parts, "total": sum(parts.values())}


def flops_per_example(arch: BertArchitecture, seq_length: int, num_classes: int,
                      pooler: bool = False) -> int:
    """Floating-point operations (2 per multiply-add) of one example of `seq_length`
    tokens through the matmuls of the encoder and head: query/key/value and output
    projections, attention scores and context, both FFN matmuls, pooler, classifier.
    Embedding lookups, LayerNorm, softmax and activations (a few percent) are left out.

    Example:
        >>> arch = BertArchitecture(vocab_size=100, hidden_size=8, num_layers=1,
        ...                         num_heads=2, intermediate_size=16, max_positions=8,
        ...                         type_vocab_size=2)
        >>> flops_per_example(arch, 4, 2)
        4640
    """
    length, hidden = seq_length, arch.hidden_size
    width = arch.num_heads * arch.head_size
    per_layer = (2 * length * hidden * width * 4        # q, k, v and output projections
                 + 2 * 2 * length * length * width      # scores and context
                 + 2 * 2 * length * hidden * arch.intermediate_size)  # FFN in and out
    head = 2 * hidden * num_classes + (2 * hidden * hidden if pooler else 0)
    return arch.num_layers * per_layer + head


__all__ = ["evenly_spaced_layers", "flops_per_example", "kept_vocabulary",
           "parameter_breakdown", "prune_shape", "student_architecture"]
