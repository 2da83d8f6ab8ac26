"""Shared test helpers: run a stage like the CLI, read its manifest, copy a run, and the
overrides that make the tiny model learn. Fixtures built on them are in conftest.py."""

import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


def run_stage(stage, run_dir, *overrides, config=TINY):
    """Run one stage in-process like `slimbert <stage>`; returns the exit code."""
    from pipeline.cli import main

    args = [stage, "--config", config, "--run-dir", str(run_dir)]
    for item in overrides:
        args += ["--set", item]
    return main(args)


def kill_after_first_checkpoint(stage, run_dir, *overrides, config=TINY, timeout=240):
    """Run `python -m pipeline.<stage>` in a fresh process and kill -9 it as soon as it
    has written its first resumable checkpoint; asserts that no artifact was left."""
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", f"pipeline.{stage}", "--config", config, "--run-dir",
            str(run_dir)]
    for item in overrides:
        args += ["--set", item]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while not any(Path(run_dir).glob(f".work/{stage}-*/ckpt/ckpt-*.index")):
            assert time.time() < deadline, f"{stage} wrote no checkpoint in {timeout} s"
            assert proc.poll() is None, f"{stage} ended before its first checkpoint"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (Path(run_dir) / stage).exists()  # no half artifact


def manifest(run_dir, stage):
    return json.loads((Path(run_dir) / stage / "manifest.json").read_text())


def copy_run(source, target,
             stages=("prepare", "finetune", "evaluate", "prune", "distill", "quantize")):
    """Copy the named stage artifacts of a run into `target` (returned)."""
    for stage in stages:
        shutil.copytree(Path(source) / stage, Path(target) / stage)
    return Path(target)


# Overrides for the easy task (see conftest's `easy_data`) that a tiny model must learn.
TRAINED = ["finetune.epochs=4", "finetune.batch_size=16", "finetune.learning_rate=0.002",
           "evaluate.min_accuracy=0.9"]
PRUNE = ["prune.final_sparsity=0.75", "prune.frequency=1", "prune.train.epochs=2",
         "prune.train.batch_size=16", "prune.train.learning_rate=0.001"]
QUANTIZE = ["quantize.post_training=[cpu, int8]",
            "quantize.train.learning_rate=0.0002"]
# The exported_run fixture's export: the float-arithmetic gpu target also on the builtin
# kernels (a `slimbert run` over its copy must pass it too, or the export reruns).
EXPORT = ["export.compare_kernels=[gpu, int8, qat, pruned-qat]"]
