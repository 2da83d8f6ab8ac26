"""Classify texts with MediaPipe Tasks' `TextClassifier`, the runtime of the Android, iOS
and web SDKs, given only a TFLite file with metadata (`export.tflite_metadata`).

MediaPipe runs in a fresh process of its own Python: mediapipe 1.2.2 requires absl-py 2,
which tensorflow-model-optimization 0.8 (absl-py ~= 1.2) excludes, so `make setup`
installs it in a small virtual environment of its own, `.venv-mediapipe/`. That process
runs this file as a script; the script part imports only the standard library, numpy and
mediapipe.

    <mediapipe python> -I export/mediapipe_tasks.py MODEL TEXTS.json OUT.npz

The interpreter: `$SLIMBERT_MEDIAPIPE_PYTHON`, else this Python if it has mediapipe, else
`.venv-mediapipe/bin/python` at the repository's root.

Example:
    >>> probabilities, info = classify_texts(Path("slimbert-cpu.tflite"), ["a fine film"])
    >>> info["labels"], probabilities.round(2)
    (['fresh', 'rotten'], array([[0.93, 0.07]], dtype=float32))
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PYTHON_VARIABLE = "SLIMBERT_MEDIAPIPE_PYTHON"
VENV = Path(__file__).resolve().parents[1] / ".venv-mediapipe"


class MediaPipeUnavailable(RuntimeError):
    """No Python with mediapipe was found."""


def mediapipe_python() -> str:
    """The Python that runs MediaPipe (module docstring), or MediaPipeUnavailable saying
    how to get one."""
    chosen = os.environ.get(PYTHON_VARIABLE)
    if chosen:
        if not Path(chosen).is_file():
            raise MediaPipeUnavailable(f"${PYTHON_VARIABLE} is {chosen}, which does not "
                                       "exist; point it at a Python with mediapipe")
        return chosen
    if importlib.util.find_spec("mediapipe") is not None:
        return sys.executable
    venv_python = VENV / "bin" / "python"
    if venv_python.is_file():
        return str(venv_python)
    raise MediaPipeUnavailable(
        f"MediaPipe is not installed: run `make setup` (it creates {VENV}), or set "
        f"${PYTHON_VARIABLE} to a Python with `pip install mediapipe==1.2.2`")


def classify_texts(model: Path, texts: Sequence[str], timeout: float = 3600
                   ) -> tuple[np.ndarray, dict]:
    """Scores (float32 [N, C], by class index) that MediaPipe's TextClassifier gives
    `texts` with the TFLite file `model`, in a fresh process; and {"labels" (from the
    file's metadata), "runtime", "load_seconds", "run_seconds"}. RuntimeError with
    MediaPipe's message if it refuses the model."""
    from core.timing import phase  # here: this file is also MediaPipe's script, without core

    python = mediapipe_python()
    with tempfile.TemporaryDirectory(prefix="slimbert-mediapipe-") as folder:
        texts_path, out = Path(folder) / "texts.json", Path(folder) / "out.npz"
        texts_path.write_text(json.dumps(list(texts), ensure_ascii=False), encoding="utf-8")
        with phase("verify"):
            result = subprocess.run([python, "-I", str(Path(__file__).resolve()),
                                     str(Path(model).resolve()),
                                     str(texts_path), str(out)], capture_output=True,
                                    text=True, timeout=timeout)
        if result.returncode != 0:
            lines = [line for line in result.stderr.strip().splitlines()
                     if line.strip() and not line.startswith(("W0000", "I0000", "INFO:"))]
            raise RuntimeError(f"MediaPipe's TextClassifier failed on {model}: "
                               + " | ".join(lines[-3:]))
        saved = np.load(out)
        return saved["scores"], json.loads(str(saved["info"]))


# --- the script, run by the MediaPipe Python ---

def _classify(model: str, texts: list[str]) -> tuple[np.ndarray, dict]:
    from importlib.metadata import version

    from mediapipe.tasks.python.core import base_options
    from mediapipe.tasks.python.text import text_classifier

    started = time.perf_counter()
    options = text_classifier.TextClassifierOptions(
        base_options=base_options.BaseOptions(model_asset_path=model), max_results=-1)
    rows, labels = [], {}
    with text_classifier.TextClassifier.create_from_options(options) as classifier:
        loaded = time.perf_counter()
        for text in texts:
            categories = classifier.classify(text).classifications[0].categories
            row = np.zeros(len(categories), np.float32)
            for category in categories:
                row[category.index] = category.score
                labels[category.index] = category.category_name
            rows.append(row)
    info = {"runtime": f"mediapipe {version('mediapipe')}",
            "labels": [labels[i] for i in sorted(labels)],
            "load_seconds": round(loaded - started, 3),
            "run_seconds": round(time.perf_counter() - loaded, 3), "examples": len(rows)}
    return (np.stack(rows) if rows else np.zeros((0, 0), np.float32)), info


def _main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    model, texts_path, out = argv
    texts = json.loads(Path(texts_path).read_text(encoding="utf-8"))
    scores, info = _classify(model, texts)
    np.savez(out, scores=scores, info=np.array(json.dumps(info)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
