"""Pretrained checkpoints: where they are and what tokenizer they come with.

`model.checkpoint` is one of:
    builtin                 all-MiniLM-L6-v2, installed offline by `make setup`
    random                  random init (vocabulary from `model.vocab`, else the built-in one)
    <folder>                a Hugging Face BERT folder (config.json, model.safetensors, vocab.txt)
    keras_hub:<preset>      a keras-hub preset name or a local preset folder

`architecture(cfg)` reads the encoder's shape from the checkpoint (or from `cfg` for
`random`) and `load_weights(model, cfg)` ports the checkpoint's tensors into a model built
by `models.bert` (encoder or classifier; the classifier head stays freshly initialised).
`describe_tokenizer(cfg)` and `describe_checkpoint(cfg)` list the files those read, by
content (path, size, sha256), for the stages' fingerprints.
Hugging Face folders are read with `safetensors.numpy` only (no torch, no transformers);
keras-hub presets are loaded with keras-hub (Keras 3) and copied over variable by variable.
Every tensor's shape is checked before anything is assigned.

Example:
    >>> from models.config import ModelConfig
    >>> spec = tokenizer_spec(ModelConfig())
    >>> len(spec.vocab), spec.lower_case
    (30522, True)
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tf_keras as keras

from core.errors import SlimbertError
from core.files import describe_files
from data.tokenizer import load_vocab
from models import assets
from models.bert import BertArchitecture, num_transformer_layers
from models.config import ModelConfig

logger = logging.getLogger(__name__)

KERAS_HUB_PREFIX = "keras_hub:"


class CheckpointError(SlimbertError):
    """A checkpoint that is missing, incomplete or not a BERT checkpoint."""


@dataclass(frozen=True)
class TokenizerSpec:
    """The WordPiece vocabulary and casing a checkpoint was trained with."""

    vocab: tuple[str, ...]
    lower_case: bool
    origin: str


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read JSON: {err}") from None


def checkpoint_dir(cfg: ModelConfig) -> Path | None:
    """Local folder of the configured checkpoint (None for `random` and hub preset names)."""
    if cfg.checkpoint == "builtin":
        return assets.minilm_dir()
    if cfg.checkpoint == "random":
        return None
    if cfg.checkpoint.startswith(KERAS_HUB_PREFIX):
        folder = Path(cfg.checkpoint[len(KERAS_HUB_PREFIX):]).expanduser()
        return folder if folder.is_dir() else None
    folder = Path(cfg.checkpoint).expanduser()
    if not folder.is_dir():
        raise CheckpointError(
            f"model.checkpoint {cfg.checkpoint!r} is neither 'builtin', 'random', "
            "'keras_hub:<preset>' nor an existing Hugging Face BERT folder")
    return folder


def _hf_tokenizer(folder: Path, cfg: ModelConfig) -> TokenizerSpec:
    vocab_path = folder / "vocab.txt"
    if not vocab_path.is_file():
        raise CheckpointError(f"{folder} has no vocab.txt: not a Hugging Face BERT folder")
    lower = cfg.lower_case
    if lower is None:
        tok_cfg = folder / "tokenizer_config.json"
        # Hugging Face's BertTokenizer lower-cases unless told otherwise.
        lower = bool(_read_json(tok_cfg).get("do_lower_case", True)) if tok_cfg.is_file() \
            else True
    return TokenizerSpec(_vocab(vocab_path), lower, str(vocab_path))


def _vocab(path: Path) -> tuple[str, ...]:
    """The checkpoint's vocabulary; an unreadable or invalid file is a CheckpointError."""
    try:
        return tuple(load_vocab(path))
    except ValueError as err:
        raise CheckpointError(str(err)) from None


def _keras_hub_tokenizer(cfg: ModelConfig) -> TokenizerSpec:
    name = cfg.checkpoint[len(KERAS_HUB_PREFIX):]
    folder = Path(name).expanduser()
    if folder.is_dir():
        vocab_path = folder / "assets" / "tokenizer" / "vocabulary.txt"
        tok_json = folder / "tokenizer.json"  # keras-hub's preset file, not ours
        if not vocab_path.is_file() or not tok_json.is_file():
            raise CheckpointError(f"{folder} is not a keras-hub BERT preset folder "
                                  "(expected tokenizer.json and assets/tokenizer/vocabulary.txt)")
        lower = cfg.lower_case
        if lower is None:
            lower = bool(_read_json(tok_json).get("config", {}).get("lowercase", True))
        return TokenizerSpec(_vocab(vocab_path), lower, str(vocab_path))
    try:
        import keras_hub

        tokenizer = keras_hub.models.BertTokenizer.from_preset(name)
    except Exception as err:  # keras-hub raises many kinds when offline or unknown
        raise CheckpointError(
            f"cannot load keras-hub preset {name!r}: {type(err).__name__}: {err}. Without a "
            "network, pass a local preset folder (keras_hub:/path/to/preset)") from None
    lower = tokenizer.lowercase if cfg.lower_case is None else cfg.lower_case
    return TokenizerSpec(tuple(tokenizer.get_vocabulary()), bool(lower), f"keras_hub:{name}")


def tokenizer_spec(cfg: ModelConfig) -> TokenizerSpec:
    """Vocabulary and casing for the configured checkpoint."""
    if cfg.checkpoint == "random":
        vocab_path = Path(cfg.vocab).expanduser() if cfg.vocab else \
            assets.minilm_dir() / "vocab.txt"
        lower = True if cfg.lower_case is None else cfg.lower_case
        return TokenizerSpec(_vocab(vocab_path), lower, str(vocab_path))
    if cfg.checkpoint.startswith(KERAS_HUB_PREFIX):
        return _keras_hub_tokenizer(cfg)
    return _hf_tokenizer(checkpoint_dir(cfg), cfg)


def _tokenizer_files(cfg: ModelConfig) -> list[Path]:
    """The files `tokenizer_spec(cfg)` reads (those that exist; a missing required one
    is reported by `tokenizer_spec`)."""
    if cfg.checkpoint == "random":
        paths = [Path(cfg.vocab).expanduser() if cfg.vocab else assets.minilm_dir() / "vocab.txt"]
    elif cfg.checkpoint.startswith(KERAS_HUB_PREFIX):
        folder = Path(_keras_hub_name(cfg)).expanduser()
        paths = [folder / "assets" / "tokenizer" / "vocabulary.txt", folder / "tokenizer.json"]
    else:
        folder = checkpoint_dir(cfg)
        paths = [folder / "vocab.txt", folder / "tokenizer_config.json"]
    return [path for path in paths if path.is_file()]


def describe_tokenizer(cfg: ModelConfig) -> dict:
    """What `tokenizer_spec(cfg)` reads: `{"checkpoint", "files": [{path, bytes, sha256}]}`;
    a keras-hub preset name (downloaded by keras-hub) is described by its name only."""
    return {"checkpoint": cfg.checkpoint, "files": describe_files(_tokenizer_files(cfg))}


def describe_checkpoint(cfg: ModelConfig) -> dict:
    """What `architecture(cfg)` and `load_weights(model, cfg)` read, by content:
    `{"checkpoint", "files": [{path, bytes, sha256}]}`.

    A Hugging Face folder: config.json and the safetensors files (not the folder's other
    files, e.g. a pytorch_model.bin it also holds); a keras-hub preset folder: all its
    files; `random`: the vocabulary that sets its vocabulary size; a keras-hub preset
    name: the name only.

    Example:
        >>> [Path(f["path"]).name for f in describe_checkpoint(ModelConfig())["files"]]
        ['config.json', 'model.safetensors']
    """
    if cfg.checkpoint == "random":
        paths = _tokenizer_files(cfg)
    elif cfg.checkpoint.startswith(KERAS_HUB_PREFIX):
        folder = Path(_keras_hub_name(cfg)).expanduser()
        paths = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    else:
        folder = checkpoint_dir(cfg)
        paths = [folder / "config.json", *_hf_weight_files(folder)]
    return {"checkpoint": cfg.checkpoint, "files": describe_files(p for p in paths if p.is_file())}


# === Architecture ===

# Hugging Face `hidden_act` -> BertArchitecture.hidden_act
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate",
                   "gelu_pytorch_tanh": "gelu_approximate"}
_HF_FIELDS = {"vocab_size": "vocab_size", "hidden_size": "hidden_size",
              "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
              "intermediate_size": "intermediate_size",
              "max_positions": "max_position_embeddings"}
_KERAS_HUB_FIELDS = {"vocab_size": "vocabulary_size", "hidden_size": "hidden_dim",
                     "num_layers": "num_layers", "num_heads": "num_heads",
                     "intermediate_size": "intermediate_dim",
                     "max_positions": "max_sequence_length"}


def _make_architecture(origin: str, **fields) -> BertArchitecture:
    try:
        return BertArchitecture(**fields)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{origin}: unsupported BERT architecture: {err}") from None


def _missing_fields(config: dict, names: list[str], origin: str) -> None:
    missing = [name for name in names if name not in config]
    if missing:
        raise CheckpointError(f"{origin}: missing BERT config keys {missing}")


def _hf_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json: not a Hugging Face BERT folder")
    config = _read_json(path)
    if config.get("model_type") != "bert":
        raise CheckpointError(f"{path}: model_type is {config.get('model_type')!r}, expected "
                              "'bert' (only BERT checkpoints are supported)")
    return config


def _hf_architecture(folder: Path, cfg: ModelConfig) -> BertArchitecture:
    config = _hf_config(folder)
    origin = str(folder / "config.json")
    _missing_fields(config, list(_HF_FIELDS.values()), origin)
    act = config.get("hidden_act", "gelu")
    if act not in _HF_ACTIVATIONS:
        raise CheckpointError(f"{origin}: hidden_act {act!r} is not supported (expected one of "
                              f"{sorted(_HF_ACTIVATIONS)})")
    position_type = config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise CheckpointError(f"{origin}: position_embedding_type {position_type!r} is not "
                              "supported (expected 'absolute')")
    return _make_architecture(
        origin, **{ours: config[theirs] for ours, theirs in _HF_FIELDS.items()},
        type_vocab_size=config.get("type_vocab_size", 2),
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        dropout=cfg.dropout, hidden_act=_HF_ACTIVATIONS[act])


def _keras_hub_name(cfg: ModelConfig) -> str:
    return cfg.checkpoint[len(KERAS_HUB_PREFIX):]


def _load_keras_hub_backbone(name: str, load_weights: bool = True):
    """keras-hub `BertBackbone.from_preset` (Keras 3); any failure is a CheckpointError."""
    folder = Path(name).expanduser()
    preset = str(folder) if folder.is_dir() else name
    try:
        import keras_hub

        return keras_hub.models.BertBackbone.from_preset(preset, load_weights=load_weights)
    except Exception as err:  # keras-hub raises many kinds when offline or unknown
        hint = "" if folder.is_dir() else (
            ". Without a network, pass a local preset folder (keras_hub:/path/to/preset)")
        raise CheckpointError(f"cannot load keras-hub BertBackbone preset {name!r}: "
                              f"{type(err).__name__}: {err}{hint}") from None


def _keras_hub_architecture(cfg: ModelConfig) -> BertArchitecture:
    name = _keras_hub_name(cfg)
    folder = Path(name).expanduser()
    if folder.is_dir():
        path = folder / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{folder} has no config.json: not a keras-hub preset folder")
        config = _read_json(path)
        if "model_type" in config:  # a Hugging Face folder, which keras-hub converts
            return _hf_architecture(folder, cfg)
        if config.get("class_name") != "BertBackbone":
            raise CheckpointError(f"{path}: class_name is {config.get('class_name')!r}, "
                                  "expected 'BertBackbone'")
        config, origin = config.get("config", {}), str(path)
    else:
        config, origin = _load_keras_hub_backbone(name, False).get_config(), cfg.checkpoint
    _missing_fields(config, list(_KERAS_HUB_FIELDS.values()), origin)
    # keras-hub's BertBackbone hard-codes LayerNorm epsilon 1e-12 and tanh-approximate GELU.
    return _make_architecture(
        origin, **{ours: config[theirs] for ours, theirs in _KERAS_HUB_FIELDS.items()},
        type_vocab_size=config.get("num_segments", 2), layer_norm_eps=1e-12,
        dropout=cfg.dropout, hidden_act="gelu_approximate")


def architecture(cfg: ModelConfig) -> BertArchitecture:
    """The encoder shape of the configured checkpoint; `cfg.dropout` sets the dropout.

    `random` takes the shape from `cfg` and the vocabulary size from its vocabulary;
    Hugging Face folders from `config.json`; keras-hub presets from the preset's config.

    Example:
        >>> architecture(ModelConfig()).num_layers
        6
    """
    if cfg.checkpoint == "random":
        return _make_architecture(
            "model config", vocab_size=len(tokenizer_spec(cfg).vocab),
            hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size, max_positions=cfg.max_positions,
            type_vocab_size=cfg.type_vocab_size, dropout=cfg.dropout)
    if cfg.checkpoint.startswith(KERAS_HUB_PREFIX):
        return _keras_hub_architecture(cfg)
    return _hf_architecture(checkpoint_dir(cfg), cfg)


# === Weights ===

# How a Hugging Face tensor maps onto one of our variables. `shape` gives the Hugging Face
# shape for a variable shape; `to_keras`/`to_hf` convert between the layouts. Linear
# weights are stored (out, in); MHA kernels are (hidden, heads, head) for q/k/v and
# (heads, head, hidden) for the output projection.
@dataclass(frozen=True)
class _Layout:
    shape: Callable[[tuple], tuple]
    to_keras: Callable[[np.ndarray, tuple], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


_LAYOUTS = {
    "copy": _Layout(lambda s: s, lambda a, s: a, lambda a: a),
    "linear": _Layout(lambda s: (s[1], s[0]), lambda a, s: a.T, lambda a: a.T),
    "heads_in": _Layout(lambda s: (s[1] * s[2], s[0]), lambda a, s: a.T.reshape(s),
                        lambda a: a.reshape(a.shape[0], -1).T),
    "heads_bias": _Layout(lambda s: (s[0] * s[1],), lambda a, s: a.reshape(s),
                          lambda a: a.reshape(-1)),
    "heads_out": _Layout(lambda s: (s[2], s[0] * s[1]), lambda a, s: a.T.reshape(s),
                         lambda a: a.reshape(-1, a.shape[-1]).T),
}
_POOLER_KEYS = ("pooler.dense.weight", "pooler.dense.bias")


def _layer_slots(prefix: str, qkvo: tuple, attention_norm, ffn_in, ffn_out, ffn_norm) -> list:
    """(Hugging Face name, variable, layout) for one transformer layer.

    `qkvo` are the attention's query, key, value and output projection layers.
    """
    query, key, value, output = qkvo
    slots = []
    for hf_name, dense in (("self.query", query), ("self.key", key), ("self.value", value)):
        slots += [(f"{prefix}attention.{hf_name}.weight", dense.kernel, "heads_in"),
                  (f"{prefix}attention.{hf_name}.bias", dense.bias, "heads_bias")]
    return slots + [
        (f"{prefix}attention.output.dense.weight", output.kernel, "heads_out"),
        (f"{prefix}attention.output.dense.bias", output.bias, "copy"),
        (f"{prefix}attention.output.LayerNorm.weight", attention_norm.gamma, "copy"),
        (f"{prefix}attention.output.LayerNorm.bias", attention_norm.beta, "copy"),
        (f"{prefix}intermediate.dense.weight", ffn_in.kernel, "linear"),
        (f"{prefix}intermediate.dense.bias", ffn_in.bias, "copy"),
        (f"{prefix}output.dense.weight", ffn_out.kernel, "linear"),
        (f"{prefix}output.dense.bias", ffn_out.bias, "copy"),
        (f"{prefix}output.LayerNorm.weight", ffn_norm.gamma, "copy"),
        (f"{prefix}output.LayerNorm.bias", ffn_norm.beta, "copy"),
    ]


def _slots(model: keras.Model) -> tuple[list, list]:
    """Our variables with their Hugging Face names: (encoder slots, pooler slots)."""
    names = {layer.name for layer in model.layers}
    if "embeddings_word" not in names:
        raise ValueError(f"model {model.name!r} was not built by models.bert "
                         "(no layer 'embeddings_word')")
    get = model.get_layer
    slots = [
        ("embeddings.word_embeddings.weight", get("embeddings_word").embeddings, "copy"),
        ("embeddings.position_embeddings.weight", get("embeddings_position").embeddings, "copy"),
        ("embeddings.token_type_embeddings.weight", get("embeddings_type").embeddings, "copy"),
        ("embeddings.LayerNorm.weight", get("embeddings_norm").gamma, "copy"),
        ("embeddings.LayerNorm.bias", get("embeddings_norm").beta, "copy"),
    ]
    for i in range(num_transformer_layers(model)):
        attention = get(f"layer_{i}_attention")
        qkvo = (attention._query_dense, attention._key_dense, attention._value_dense,
                attention._output_dense)
        slots += _layer_slots(f"encoder.layer.{i}.", qkvo, get(f"layer_{i}_attention_norm"),
                              get(f"layer_{i}_ffn_in"), get(f"layer_{i}_ffn_out"),
                              get(f"layer_{i}_ffn_norm"))
    pooler = []
    if "pooler" in names:
        pooler = [(_POOLER_KEYS[0], get("pooler").kernel, "linear"),
                  (_POOLER_KEYS[1], get("pooler").bias, "copy")]
    return slots, pooler


def _normalize_hf_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops the `bert.` prefix of BertFor* checkpoints; LayerNorm gamma/beta -> weight/bias."""
    prefixed = any(key.startswith("bert.") for key in tensors)
    out = {}
    for key, value in tensors.items():
        if prefixed and key.startswith("bert."):
            key = key[len("bert."):]
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
        key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
        out[key] = value
    return out


def _hf_weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a Hugging Face folder (one file, or the shards its index
    names)."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = _read_json(index).get("weight_map", {})
        files = [folder / name for name in sorted(set(weight_map.values()))]
        if not files:
            raise CheckpointError(f"{index}: empty weight_map")
    else:
        hint = (" (it has pytorch_model.bin, which needs torch: convert it to safetensors)"
                if (folder / "pytorch_model.bin").is_file() else "")
        raise CheckpointError(f"{folder} has no model.safetensors{hint}")
    return files


def _hf_tensors(folder: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """All tensors of a Hugging Face folder (single or sharded safetensors)."""
    from safetensors.numpy import load_file

    files = _hf_weight_files(folder)
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        try:
            tensors.update(load_file(str(path)))
        except Exception as err:  # safetensors raises its own error types and OSError
            raise CheckpointError(f"{path}: cannot read safetensors: "
                                  f"{type(err).__name__}: {err}") from None
    return _normalize_hf_names(tensors), [str(path) for path in files]


def _keras_hub_tensors(backbone) -> dict[str, np.ndarray]:
    """A keras-hub BertBackbone's weights under Hugging Face names and layouts."""
    import keras as keras3

    def hf(variable, kind: str) -> np.ndarray:
        return _LAYOUTS[kind].to_hf(np.asarray(keras3.ops.convert_to_numpy(variable)))

    get = backbone.get_layer
    slots = [
        ("embeddings.word_embeddings.weight", get("token_embedding").embeddings, "copy"),
        ("embeddings.position_embeddings.weight",
         get("position_embedding").position_embeddings, "copy"),
        ("embeddings.token_type_embeddings.weight", get("segment_embedding").embeddings, "copy"),
        ("embeddings.LayerNorm.weight", get("embeddings_layer_norm").gamma, "copy"),
        ("embeddings.LayerNorm.bias", get("embeddings_layer_norm").beta, "copy"),
        (_POOLER_KEYS[0], get("pooled_dense").kernel, "linear"),
        (_POOLER_KEYS[1], get("pooled_dense").bias, "copy"),
    ]
    for i in range(backbone.num_layers):
        block = get(f"transformer_layer_{i}")
        attention = block._self_attention_layer
        qkvo = (attention.query_dense, attention.key_dense, attention.value_dense,
                attention.output_dense)
        slots += _layer_slots(f"encoder.layer.{i}.", qkvo, block._self_attention_layer_norm,
                              block._feedforward_intermediate_dense,
                              block._feedforward_output_dense, block._feedforward_layer_norm)
    return {key: hf(variable, kind) for key, variable, kind in slots}


def _checkpoint_layers(tensors: dict[str, np.ndarray]) -> int:
    found = [int(m.group(1)) for key in tensors
             if (m := re.match(r"encoder\.layer\.(\d+)\.", key))]
    return max(found) + 1 if found else 0


def _port(model: keras.Model, tensors: dict[str, np.ndarray], origin: str) -> dict:
    """Checks every tensor against `model`, then assigns them all (or none)."""
    slots, pooler = _slots(model)
    model_layers = num_transformer_layers(model)
    checkpoint_layers = _checkpoint_layers(tensors)
    if checkpoint_layers != model_layers:
        raise CheckpointError(
            f"{origin} has {checkpoint_layers} transformer layers, model {model.name!r} has "
            f"{model_layers}: build the model from models.checkpoints.architecture(cfg)")
    pooler_status = "not in model"
    if pooler:
        if all(key in tensors for key in _POOLER_KEYS):
            slots, pooler_status = slots + pooler, "loaded"
        else:
            pooler_status = "not in checkpoint: random init"

    errors, values = [], []
    for key, variable, kind in slots:
        layout = _LAYOUTS[kind]
        expected = tuple(layout.shape(tuple(variable.shape)))
        if key not in tensors:
            errors.append(f"tensor {key!r} is missing (expected shape {expected} for "
                          f"{variable.name})")
            continue
        found = tensors[key]
        if tuple(found.shape) != expected:
            errors.append(f"tensor {key!r} has shape {tuple(found.shape)}, expected {expected} "
                          f"(for {variable.name})")
        elif found.dtype.kind != "f":
            errors.append(f"tensor {key!r} has dtype {found.dtype}, expected a float type")
        else:
            values.append((variable, layout.to_keras(found, tuple(variable.shape))))
    if errors:
        more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise CheckpointError(f"{origin}: cannot load into model {model.name!r}: "
                              + "; ".join(errors[:5]) + more)
    for variable, value in values:
        variable.assign(np.asarray(value, dtype=variable.dtype.as_numpy_dtype))
    used = {key for key, _, _ in slots}
    report = {"tensors_loaded": len(values), "pooler": pooler_status,
              "tensors_ignored": sorted(key for key in tensors if key not in used)}
    if "classifier" in {layer.name for layer in model.layers}:
        report["classifier"] = "random init"
    return report


def hf_state_dict(model: keras.Model) -> dict[str, np.ndarray]:
    """The encoder (and pooler) weights of `model` under Hugging Face BertModel names.

    The inverse of `load_weights` for a Hugging Face folder: `safetensors.numpy.save_file`
    of this dict next to a BERT `config.json` is a folder `load_weights` reads back.

    Args:
        model: keras.Model. Built by `models.bert`.

    Example:
        >>> from models.bert import BertArchitecture, build_encoder
        >>> tensors = hf_state_dict(build_encoder(BertArchitecture(100, 32, 2, 2, 64, 64, 2)))
        >>> tensors["encoder.layer.0.attention.self.query.weight"].shape
        (32, 32)
    """
    slots, pooler = _slots(model)
    # Contiguous copies: safetensors writes an array's buffer as is, whatever its strides.
    return {key: np.ascontiguousarray(_LAYOUTS[kind].to_hf(variable.numpy()))
            for key, variable, kind in slots + pooler}


def load_weights(model_or_encoder: keras.Model, cfg: ModelConfig) -> dict:
    """Ports the configured checkpoint's weights into a model built by `models.bert`.

    Works on `build_encoder` and `build_classifier` models alike (layers are matched by
    name). All tensors are checked first (presence, shape, dtype), then assigned. The
    pooler is loaded when both model and checkpoint have one; the classifier head keeps
    its fresh initialisation. `random` is a no-op.

    Args:
        model_or_encoder: keras.Model. Built from `architecture(cfg)`.
        cfg: ModelConfig. Names the checkpoint.

    Returns:
        A report: {"source", "format", "files", "tensors_loaded", "tensors_ignored",
        "pooler", ["classifier"]}.

    Raises:
        CheckpointError: missing files, unreadable safetensors, a non-BERT checkpoint,
            missing tensors or shapes that do not match the model.

    Example:
        >>> from models.bert import build_encoder
        >>> cfg = ModelConfig(checkpoint="builtin")
        >>> load_weights(build_encoder(architecture(cfg)), cfg)["tensors_loaded"]
        103
    """
    if cfg.checkpoint == "random":
        return {"source": "random", "format": None, "files": [], "tensors_loaded": 0,
                "tensors_ignored": [], "pooler": "random init"}
    if cfg.checkpoint.startswith(KERAS_HUB_PREFIX):
        backbone = _load_keras_hub_backbone(_keras_hub_name(cfg))
        report = _port(model_or_encoder, _keras_hub_tensors(backbone), cfg.checkpoint)
        report = {"source": cfg.checkpoint, "format": "keras_hub", "files": [], **report}
    else:
        folder = checkpoint_dir(cfg)
        _hf_config(folder)
        tensors, files = _hf_tensors(folder)
        report = _port(model_or_encoder, tensors, ", ".join(files))
        report = {"source": cfg.checkpoint, "format": "hf_safetensors", "files": files,
                  **report}
    logger.info("loaded %d tensors from %s into %s (pooler: %s)", report["tensors_loaded"],
                cfg.checkpoint, model_or_encoder.name, report["pooler"])
    return report
