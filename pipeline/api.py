"""Run slimbert from Python (a notebook, a script): the CLI's stages, one call each.

A stage run from here is the same as `slimbert <stage>`: it writes the same artifact
folder, skips the work when the folder is up to date, and raises `SlimbertError` (with
what to fix) on bad input instead of printing it.

Example:
    >>> from pipeline.api import load_config, read_manifest, run
    >>> config = load_config("configs/tiny.yaml", ["seed=1"])
    >>> folders = run(config, "runs/notebook", stages=["prepare", "finetune", "evaluate"])
    >>> read_manifest(folders["evaluate"])["metrics"]["accuracy"]  # test split

The libraries under the stages (`data`, `models`, `export`) are usable on their own; the
README's "Python API" section shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.artifacts import read_manifest
from pipeline.cli import available_stages, execute, pipeline_stages
from pipeline.config import PipelineConfig, load_config

__all__ = ["load_config", "read_manifest", "run", "run_stage"]


def run_stage(stage: str, config: PipelineConfig, run_dir: str | Path,
              force: bool = False) -> Path:
    """Runs one stage into `<run_dir>/<stage>/` (unless up to date); returns that folder.

    Args:
        stage: a stage name (`prepare`, `finetune`, `evaluate`, `prune`, `distill`,
            `quantize`, `export`, `report`); its upstream artifacts must be in `run_dir`.
        config: the pipeline config (`load_config`).
        run_dir: the run folder.
        force: rerun even if up to date (for export: keep exports that fail the gate).
    """
    if stage not in available_stages():
        raise ValueError(f"unknown stage {stage!r}; expected one of "
                         f"{', '.join(available_stages())}")
    return execute(stage, config, Path(run_dir), force=force)


def run(config: PipelineConfig, run_dir: str | Path, stages: Sequence[str] | None = None,
        force: bool = False) -> dict[str, Path]:
    """Runs `stages` (default: all that `config` does not switch off, in pipeline
    order) into `run_dir`; returns each stage's artifact folder by name."""
    return {stage: run_stage(stage, config, run_dir, force=force)
            for stage in (stages or pipeline_stages(config))}
