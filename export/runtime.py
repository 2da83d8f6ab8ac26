"""TFLite runtime adapter: ai-edge-litert if installed, else tflite_runtime, else tf.lite.

ai-edge-litert is the maintained interpreter (tflite-runtime stopped at 2.14 and fails to
import under numpy 2; `tf.lite.Interpreter` is deprecated). Whichever is used is named in
the result, so verification reports say what ran the model.

A model with tensorflow_text custom ops (the raw-string `text` variant) needs TF Text's
op registerers, passed as `custom_op_registerers`; only ai-edge-litert and tf.lite
accept them by name here.

Example:
    >>> interpreter, runtime = make_interpreter(model_path="cpu.tflite")
    >>> runtime
    'ai_edge_litert'
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")


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
                     custom_ops: bool = False, runtime: str | None = None
                     ) -> tuple[Any, str]:
    """An allocated TFLite interpreter and the name of the runtime that provides it.

    Args:
        model_path, model_content: the model, as a file or bytes (exactly one).
        num_threads: int | None. Interpreter threads (None: the runtime's default).
        custom_ops: bool. Register tensorflow_text's TFLite ops (for the `text` variant).
        runtime: str | None. Force one of `RUNTIMES` (None: the first available).

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
    module = _interpreter_module(name)
    kwargs: dict[str, Any] = {"num_threads": num_threads}
    if model_path is not None:
        kwargs["model_path"] = str(model_path)
    else:
        kwargs["model_content"] = model_content
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
    interpreter.allocate_tensors()
    return interpreter, name


__all__ = ["RUNTIMES", "available_runtimes", "make_interpreter"]
