"""Run any exported model on texts or token ids: a SavedModel, a token-id TFLite model, or
the raw-string `text` TFLite model. Used by `slimbert predict`, by the export gate (in a
fresh process, see `export.verify`) and by the server.

    SavedModel        tf.saved_model.load (after `import tensorflow_text`)
    core-ops SavedModel  (`savedmodel-ids`: its only signature is `token_ids`, as its
                      saved_model.pb says) tf.saved_model.load without tensorflow_text;
                      texts are tokenized with the vocabulary in its assets/ (that step
                      imports tensorflow_text, token ids never do)
    <name>-<t>.tflite the runtime adapter (ai-edge-litert first); texts are tokenized
                      with the vocabulary beside the file (needs TensorFlow)
    <name>-text.tflite the runtime adapter with tensorflow_text's op registerers

Label names come from `labels.txt` (SavedModel: `assets/labels.txt`; TFLite: beside it).

Example:
    >>> p = Predictor("runs/default/export/tflite/slimbert-cpu.tflite")
    >>> p.labels, p.predict_texts(["a fine film"]).round(2)
    (['fresh', 'rotten'], array([[0.93, 0.07]], dtype=float32))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from core.errors import ArtifactError
from data.features import INPUT_NAMES

SAVEDMODEL_FORMATS = ("savedmodel", "savedmodel-ids")
TOKEN_ID_FORMATS = ("tflite", "savedmodel-ids")  # token ids are what their users send


def model_format(path: Path) -> str:
    """`savedmodel`, `savedmodel-ids` (a SavedModel without `serving_default`, only
    `token_ids`), `tflite` or `tflite-text`, or ValueError naming what was expected."""
    path = Path(path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        from export.graph import signature_names

        try:
            names = signature_names(path)
        except ArtifactError:
            return "savedmodel"  # loading it says what is wrong
        return "savedmodel-ids" if "token_ids" in names and "serving_default" not in names \
            else "savedmodel"
    if path.is_file() and path.suffix == ".tflite":
        return "tflite-text" if path.stem.endswith("-text") else "tflite"
    raise ValueError(f"{path} is neither a SavedModel folder (with saved_model.pb) nor a "
                     ".tflite file")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def invalid_unicode(text: str) -> str | None:
    """Why `text` cannot be encoded as UTF-8 (the tokenizer's input), or None. Only a lone
    UTF-16 surrogate can cause it: JSON's `"\\ud800"` spells one, and Python's argv
    decoding keeps each undecodable byte as one."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"lone surrogate U+{ord(text[err.start]):04X} at position {err.start}"
    return None


def check_texts(texts: Sequence[str]) -> None:
    """ValueError naming the first item that is not a str of valid Unicode, so one bad
    text is refused before it can fail a batch."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"text {i} is a {type(text).__name__}, not a string")
        if problem := invalid_unicode(text):
            raise ValueError(f"text {i} is not valid Unicode ({problem})")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _read_labels(path: Path) -> list[str]:
    """The label names of an export (labels.txt, one per line)."""
    try:
        labels = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ArtifactError(f"cannot read the labels of the model at {path} "
                            f"({getattr(err, 'strerror', None) or err}); an export keeps "
                            "labels.txt beside its .tflite files and in the SavedModel's "
                            "assets") from None
    if not labels:
        raise ArtifactError(f"{path} lists no labels")
    return labels


class Predictor:
    """One exported model, loaded once.

    Args:
        path: a SavedModel version folder or a .tflite file from `slimbert export`.
        num_threads: TFLite interpreter threads (None: the runtime's default).
        kernels: TFLite kernels, `default` or `builtin` (see `export.runtime`).

    Attributes:
        format: `savedmodel`, `savedmodel-ids`, `tflite` or `tflite-text`.
        labels: label names, in the order of the probabilities.
        runtime: what runs it (`tensorflow`, `ai_edge_litert`, ...).
        max_seq_length: fixed sequence length of a token-id TFLite model (else None).
    """

    def __init__(self, path: str | Path, num_threads: int | None = None,
                 kernels: str = "default") -> None:
        self.path = Path(path)
        self.format = model_format(self.path)
        self.max_seq_length: int | None = None
        self._tokenizer = None
        if self.format in SAVEDMODEL_FORMATS:
            import tensorflow as tf

            if self.format == "savedmodel":
                import tensorflow_text  # noqa: F401  (registers the tokenizer's ops)
            try:
                self._loaded = tf.saved_model.load(str(self.path))
            except (OSError, ValueError, tf.errors.OpError) as err:
                raise ArtifactError(f"{self.path} is not a loadable SavedModel "
                                    f"({_first_line(err)}); export it again with "
                                    "`slimbert export`") from None
            self.runtime = "tensorflow"
            self.kernels = None
            self.labels = _read_labels(self.path / "assets" / "labels.txt")
            return
        from export.runtime import inputs_by_name, make_interpreter, returns_logits

        self.kernels = kernels
        try:
            self.interpreter, self.runtime = make_interpreter(
                model_path=self.path, num_threads=num_threads,
                custom_ops=self.format == "tflite-text", kernels=kernels)
        except (ValueError, RuntimeError) as err:  # the runtimes' "not a valid Flatbuffer"
            raise ArtifactError(f"{self.path} is not a valid TFLite model "
                                f"({_first_line(err)}); export it again with "
                                "`slimbert export`") from None
        self.labels = _read_labels(self.path.parent / "labels.txt")
        self._inputs = inputs_by_name(
            self.interpreter, ("text",) if self.format == "tflite-text" else INPUT_NAMES)
        self._output = self.interpreter.get_output_details()[0]
        # Files exported before the softmax moved into the graph return logits.
        self._returns_logits = returns_logits(self.interpreter)
        if self.format == "tflite":
            self.max_seq_length = int(self._inputs["input_ids"]["shape"][1])

    # --- texts ---

    def predict_texts(self, texts: Sequence[str], batch_size: int = 64,
                      on_batch: Callable[[int], object] | None = None) -> np.ndarray:
        """Probabilities float32 [N, C] for raw texts; ValueError naming the first text
        that is not a string of valid Unicode (e.g. a lone surrogate), before any runs."""
        texts = list(texts)
        check_texts(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), np.float32)
        if self.format == "savedmodel":
            import tensorflow as tf

            serve = self._loaded.signatures["serving_default"]
            out = []
            for start in range(0, len(texts), batch_size):
                chunk = texts[start:start + batch_size]
                out.append(serve(text=tf.constant(chunk))["probabilities"].numpy())
                if on_batch:
                    on_batch(len(chunk))
            return np.concatenate(out)
        if self.format == "tflite-text":
            from export.runtime import read_output

            out = []
            detail = self._inputs["text"]
            if list(detail["shape"]) != [1]:
                self.interpreter.resize_tensor_input(detail["index"], [1])
                self.interpreter.allocate_tensors()
                self._inputs["text"] = detail = self.interpreter.get_input_details()[0]
            for text in texts:
                self.interpreter.set_tensor(detail["index"],
                                            np.array([text.encode("utf-8")], dtype=object))
                self.interpreter.invoke()
                out.append(read_output(self.interpreter, self._output)[0])
                if on_batch:
                    on_batch(1)
            return np.stack(out)
        return self.predict_ids(self._tokenize(texts), on_batch=on_batch)

    def _tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if self._tokenizer is None:
            import tensorflow as tf  # noqa: F401

            from data.tokenizer import BertTokenizer

            folder = self.path / "assets" if self.path.is_dir() else self.path.parent
            self._tokenizer = BertTokenizer.load(folder, max_seq_length=self.max_seq_length)
        import tensorflow as tf

        return {k: v.numpy() for k, v in self._tokenizer(tf.constant(list(texts))).items()}

    # --- token ids ---

    def predict_ids(self, features: dict[str, np.ndarray],
                    on_batch: Callable[[int], object] | None = None) -> np.ndarray:
        """Probabilities float32 [N, C] for int32 [N, L] features (padded with 0)."""
        arrays = {name: np.asarray(features[name], dtype=np.int32) for name in INPUT_NAMES}
        n = arrays["input_ids"].shape[0]
        if self.format in SAVEDMODEL_FORMATS:
            import tensorflow as tf

            serve = self._loaded.signatures["token_ids"]
            out = []
            for start in range(0, n, 64):
                chunk = {k: tf.constant(v[start:start + 64]) for k, v in arrays.items()}
                out.append(serve(**chunk)["probabilities"].numpy())
                if on_batch:
                    on_batch(min(64, n - start))
            return np.concatenate(out) if out else np.zeros((0, len(self.labels)),
                                                              np.float32)
        if self.format != "tflite":
            raise ValueError(f"{self.path} takes raw text, not token ids")
        from export.runtime import run_token_ids

        rows = ({name: value[i:i + 1] for name, value in arrays.items()} for i in range(n))
        outputs = run_token_ids(self.interpreter, rows,
                                on_example=(lambda: on_batch(1)) if on_batch else None)
        return _softmax(outputs) if self._returns_logits else outputs


__all__ = ["Predictor", "SAVEDMODEL_FORMATS", "TOKEN_ID_FORMATS", "check_texts",
           "invalid_unicode", "model_format"]
