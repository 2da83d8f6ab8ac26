"""Run one exported model on a test split in this (fresh) process: the export gate's probe.

    python -m export.verify MODEL DATA.npz OUT.npz [--kernels builtin]

DATA.npz holds the split as `export.verify.write_split` saves it: token ids (int32
[N, L]) and the texts. The SavedModel and the `text` TFLite model get the raw texts (what
their users send); token-id TFLite models and the core-ops SavedModel (`savedmodel-ids`)
get the ids (the latter in a process that never imports tensorflow_text). The runtime a
user would use loads the model: `tf.saved_model.load`, or the TFLite runtime adapter
(ai-edge-litert first).
`--kernels builtin` runs a TFLite model on the runtime's builtin kernels instead of its
default delegate (XNNPACK). OUT.npz receives `probabilities` and a JSON `info` (runtime,
kernels, load and run seconds, whether tensorflow_text was imported; for `savedmodel-ids`
also the op types of its graph that this process's TensorFlow does not define).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from core.timing import phase
from data.features import INPUT_NAMES


def write_split(path: Path, features: dict[str, np.ndarray], texts: list[str],
                labels: np.ndarray) -> None:
    np.savez_compressed(path, **features, labels=labels,
                        texts=np.array(json.dumps(texts, ensure_ascii=False)))


def verify(model: Path, data: Path, out: Path, kernels: str = "default") -> dict:
    started = time.perf_counter()
    from export.predictor import TOKEN_ID_FORMATS, Predictor

    # All cores, as an app would run it (TFLite: the same outputs as on one thread).
    predictor = Predictor(model, num_threads=os.cpu_count(), kernels=kernels)
    loaded = time.perf_counter()
    split = np.load(data)
    if predictor.format in TOKEN_ID_FORMATS:
        probabilities = predictor.predict_ids({k: split[k] for k in
                                               INPUT_NAMES})
        fed = "token_ids"
    else:
        probabilities = predictor.predict_texts(json.loads(str(split["texts"])))
        fed = "text"
    info = {"format": predictor.format, "runtime": predictor.runtime,
            "kernels": predictor.kernels, "input": fed,
            "labels": predictor.labels, "load_seconds": round(loaded - started, 3),
            "run_seconds": round(time.perf_counter() - loaded, 3),
            "examples": int(probabilities.shape[0]),
            "tensorflow_text": "tensorflow_text" in sys.modules}
    if predictor.format == "savedmodel-ids":
        from export.graph import unregistered_ops

        info["non_core_ops"] = unregistered_ops(model)
    np.savez_compressed(out, probabilities=probabilities, info=np.array(json.dumps(info)))
    return info


@phase("verify")
def verify_in_fresh_process(model: Path, data: Path, out: Path, timeout: float = 3600,
                            kernels: str = "default") -> tuple[np.ndarray, dict]:
    """Run `verify` in a new Python process; returns (probabilities, info)."""
    # Absolute paths: the process runs from the repository root, not the caller's folder.
    model, data, out = (Path(p).resolve() for p in (model, data, out))
    result = subprocess.run([sys.executable, "-m", "export.verify", str(model), str(data),
                             str(out), "--kernels", kernels], capture_output=True, text=True,
                            timeout=timeout, cwd=Path(__file__).resolve().parents[1])
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{model} failed to run in a fresh process:\n{tail}")
    saved = np.load(out)
    return saved["probabilities"], json.loads(str(saved["info"]))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    kernels = "default"
    if len(args) == 5 and args[3] == "--kernels":
        kernels = args.pop(4)
        args.pop(3)
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    info = verify(Path(args[0]), Path(args[1]), Path(args[2]), kernels)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
