"""TFLite runtime adapter: ai-edge-litert if installed, else tflite_runtime, else tf.lite.

ai-edge-litert is the maintained interpreter (tflite-runtime stopped at 2.14 and fails to
import under numpy 2; `tf.lite.Interpreter` is deprecated). Whichever is used is named in
the result, so verification reports say what ran the model.

Kernels: `default` is what the runtime does out of the box (ai-edge-litert applies its
XNNPACK delegate to the ops it takes); `builtin` runs every op on the runtime's own
builtin kernels, as a runtime without XNNPACK would. Both are exact for float models up
to rounding; int8 kernels round their requantized results differently, so an int8 BERT
can predict differently on a few percent of examples depending on which kernels run it.

A model with tensorflow_text custom ops (the raw-string `text` variant) needs TF Text's
op registerers, passed as `custom_op_registerers`; only ai-edge-litert and tf.lite
accept them by name here.

`run_tflite` runs a token-id classifier (from `export.tflite.to_tflite`) on batches of
features, one example at a time: the quantize stage's and the tests' TFLite evaluation.

Example:
    >>> interpreter, runtime = make_interpreter(model_path="cpu.tflite")
    >>> runtime
    'ai_edge_litert'
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Iterable
from typing import Any

from core.native_logs import quiet_native_stderr
from core.timing import phase
from data.features import INPUT_NAMES

RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")
KERNELS = ("default", "builtin")


def available_runtimes() -> list[str]:
    """The runtimes importable here, in order of preference."""
    return [name for name in RUNTIMES if importlib.util.find_spec(name) is not None]


def _interpreter_module(runtime: str):
    if runtime == "ai_edge_litert":
        return importlib.import_module("ai_edge_litert.interpreter")
    if runtime == "tflite_runtime":
        return importlib.import_module("tflite_runtime.interpreter")
    import tensorflow as tf

    return tf.lite


def make_interpreter(*, model_path: str | os.PathLike | None = None,
                     model_content: bytes | None = None, num_threads: int | None = None,
                     custom_ops: bool = False, runtime: str | None = None,
                     kernels: str = "default") -> tuple[Any, str]:
    """An allocated TFLite interpreter and the name of the runtime that provides it.

    Args:
        model_path, model_content: the model, as a file or bytes (exactly one).
        num_threads: int | None. Interpreter threads (None: the runtime's default).
        custom_ops: bool. Register tensorflow_text's TFLite ops (for the `text` variant).
        runtime: str | None. Force one of `RUNTIMES` (None: the first available).
        kernels: str. `default` (the runtime's default delegates, i.e. XNNPACK) or
            `builtin` (its builtin kernels only).

    Returns:
        (interpreter, runtime name).
    """
    if (model_path is None) == (model_content is None):
        raise ValueError("give exactly one of model_path and model_content")
    candidates = [runtime] if runtime else available_runtimes()
    if not candidates:
        raise RuntimeError("no TFLite runtime: pip install ai-edge-litert")
    name = candidates[0]
    if name not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, found {name!r}")
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, found {kernels!r}")
    module = _interpreter_module(name)
    kwargs: dict[str, Any] = {"num_threads": num_threads}
    if kernels == "builtin":
        resolvers = getattr(module, "OpResolverType", None)
        if resolvers is None:  # tf.lite keeps it under experimental
            resolvers = module.experimental.OpResolverType
        kwargs["experimental_op_resolver_type"] = \
            resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if model_path is not None:
        kwargs["model_path"] = str(model_path)
    else:
        kwargs["model_content"] = model_content
    with quiet_native_stderr():  # LiteRT announces each delegate it creates
        interpreter = _new_interpreter(module, kwargs, custom_ops)
        interpreter.allocate_tensors()
    return interpreter, name


def _new_interpreter(module, kwargs: dict[str, Any], custom_ops: bool):
    if custom_ops:
        import tensorflow_text as tf_text

        registerers = tf_text.tflite_registrar.SELECT_TFTEXT_OPS
        factory = getattr(module, "InterpreterWithCustomOps", None)
        if factory is None:  # tf.lite's Interpreter takes the registerers itself
            interpreter = module.Interpreter(custom_op_registerers=registerers, **kwargs)
        else:
            interpreter = factory(custom_op_registerers=registerers, **kwargs)
    else:
        interpreter = module.Interpreter(**kwargs)
    return interpreter


def inputs_by_name(interpreter, names: tuple[str, ...]) -> dict[str, dict]:
    """The interpreter's input details keyed by which of `names` each tensor name holds
    (TFLite prefixes them, e.g. `serving_default_input_ids:0`)."""
    out = {}
    for detail in interpreter.get_input_details():
        name = next((n for n in names if n in detail["name"]), None)
        if name is None:
            raise ValueError(f"unexpected TFLite input {detail['name']!r}; expected "
                             f"{', '.join(names)}")
        out[name] = detail
    return out


def read_output(interpreter, detail: dict):
    """An output tensor as float32 (int8 outputs dequantized with their scale)."""
    import numpy as np

    value = interpreter.get_tensor(detail["index"])
    if value.dtype != np.float32:
        scale, zero_point = detail["quantization"]
        value = (value.astype(np.float32) - zero_point) * scale
    return value.astype(np.float32)


def returns_logits(interpreter) -> bool:
    """Whether a token-id model returns logits (its signature's output is `logits`, as in
    files exported before the softmax moved into the graph) instead of `probabilities`."""
    try:
        signature = next(iter(interpreter.get_signature_list().values()))
    except (StopIteration, AttributeError, ValueError):
        return False
    return list(signature.get("outputs", ())) == ["logits"]


def run_token_ids(interpreter, rows: Iterable[dict], on_example: Callable[[], Any] | None
                  = None):
    """Outputs (float32 [N, C]: probabilities, or logits if `returns_logits`) of a
    token-id model, one example at a time.

    Args:
        interpreter: an allocated interpreter of a model with inputs `INPUT_NAMES`
            of shape [1, max_seq_length].
        rows: single examples, {name: int [1, L]} with L <= max_seq_length (padded with 0).
        on_example: called after each example (a progress bar's `update`).
    """
    import numpy as np

    by_name = inputs_by_name(interpreter, INPUT_NAMES)
    output = interpreter.get_output_details()[0]
    max_seq_length = int(by_name["input_ids"]["shape"][1])
    out = []
    for row in rows:
        length = row["input_ids"].shape[1]
        if length > max_seq_length:
            raise ValueError(f"example of length {length} > the model's {max_seq_length}")
        for name, detail in by_name.items():
            value = np.pad(np.asarray(row[name]), ((0, 0), (0, max_seq_length - length)))
            interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
        interpreter.invoke()
        out.append(read_output(interpreter, output)[0])
        if on_example is not None:
            on_example()
    num_classes = int(output["shape"][-1])
    return np.stack(out) if out else np.zeros((0, num_classes), np.float32)


def _rows(batches) -> Iterable[dict]:
    """Single examples ({name: int32 [1, L]}) from batches of features or (features,
    labels) pairs."""
    import numpy as np

    for batch in batches:
        features = batch[0] if isinstance(batch, (tuple, list)) else batch
        arrays = {name: np.asarray(features[name]) for name in INPUT_NAMES}
        for i in range(arrays["input_ids"].shape[0]):
            yield {name: value[i:i + 1].astype(np.int32) for name, value in arrays.items()}


@phase("evaluate")
def run_tflite(tflite: bytes, batches, *, num_threads: int | None = None,
               on_example: Callable[[], Any] | None = None, with_runtime: bool = False):
    """Outputs of a TFLite classifier (probabilities for `export.tflite.to_tflite`'s
    models), one example at a time, with the runtime adapter (ai-edge-litert first).

    Args:
        tflite: bytes. A flatbuffer from `export.tflite.to_tflite`.
        batches: iterable of feature dicts or (features, labels) pairs, features int32
            [B, L] with L <= the model's max_seq_length (shorter rows are padded).
        num_threads: int | None. Interpreter threads (None: the runtime's default).
        on_example: called after each example (a progress bar's `update`).

        with_runtime: bool. Also return the runtime's name (`RUNTIMES`).

    Returns:
        float32 [N, num_classes] (int8 outputs are dequantized); with `with_runtime`,
        (outputs, runtime).
    """
    interpreter, runtime = make_interpreter(model_content=tflite, num_threads=num_threads)
    outputs = run_token_ids(interpreter, _rows(batches), on_example)
    return (outputs, runtime) if with_runtime else outputs


__all__ = ["KERNELS", "RUNTIMES", "INPUT_NAMES", "available_runtimes", "inputs_by_name",
           "make_interpreter", "read_output", "returns_logits", "run_tflite",
           "run_token_ids"]
