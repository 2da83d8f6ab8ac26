"""Artifact directories: `<run-dir>/<stage>/` with a `manifest.json`, written atomically.

A stage writes into a hidden temporary folder beside its final place; the manifest is
written last and the folder renamed only when everything is complete, so a crash never
leaves a directory that looks finished. A stage whose manifest records the same
fingerprint (its config and inputs) and whose files still match their sha256 is up to
date and skipped unless forced.

Manifest fields: `stage`, `fingerprint` (hash of the stage's config and input manifests),
`config` (the whole resolved config) and `config_hash`, `inputs` (upstream artifacts:
path and manifest sha256), `external_inputs` (what the stage read from outside the
run, e.g. each user data file's path, size and sha256), `files` (relative path ->
sha256 and size), `metrics`, `versions` (Python and library versions), `git_commit`,
`created_at`, `duration_s`, `timings` (seconds per phase of the run, `core.timing`;
like `duration_s`, never part of the fingerprint).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from core.config import config_hash
from core.errors import ArtifactError
from core.files import sha256_file
from core.timing import Timings, phase
from pipeline.config import PipelineConfig

__all__ = ["ArtifactError"]  # raised by the artifact checks here; defined in core.errors

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CONFIG_FILE = "config.yaml"
TRACKED_LIBRARIES = (
    "tensorflow", "tf-keras", "tensorflow-text", "tensorflow-model-optimization",
    "keras-hub", "keras", "tensorflow-datasets", "ai-edge-litert", "numpy", "slimbert",
)


def library_versions(names: tuple[str, ...] = TRACKED_LIBRARIES) -> dict[str, str]:
    """Python's and the installed `names` packages' versions (missing ones left out)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def machine_info() -> dict[str, Any]:
    """What a measured figure was measured on: platform, CPU model and core counts."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count()
    return {"platform": platform.platform(), "machine": platform.machine(),
            "cpu": model or platform.processor(), "cpu_count": os.cpu_count(),
            "usable_cpus": usable}


def git_commit() -> str | None:
    """The commit of the slimbert checkout, with `+dirty` when it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty.strip() else "")


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{artifact_dir} is not a complete artifact (no {MANIFEST}); "
                            "run the stage that makes it first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is corrupt: {err}") from None


def hash_files(root: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != MANIFEST:
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


def verify_files(artifact_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Relative paths whose content no longer matches the manifest (missing counts)."""
    bad = []
    for rel, info in manifest.get("files", {}).items():
        path = artifact_dir / rel
        if not path.is_file() or path.stat().st_size != info["bytes"] \
                or sha256_file(path) != info["sha256"]:
            bad.append(rel)
    return bad


def fingerprint(stage: str, stage_config: Any, inputs: dict[str, Path],
                external_inputs: dict[str, Any] | None = None) -> str:
    """Hash of what determines a stage's output: its config part, its inputs' manifests
    and the descriptions of what it reads from outside the run (see `write_manifest`)."""
    input_hashes = {name: sha256_file(Path(path) / MANIFEST) for name, path in inputs.items()}
    described = {"stage": stage, "config": stage_config, "inputs": input_hashes}
    if external_inputs:
        described["external_inputs"] = external_inputs
    return config_hash(described)


def is_up_to_date(out_dir: Path, expected_fingerprint: str) -> bool:
    if not (out_dir / MANIFEST).is_file():
        return False
    try:
        manifest = read_manifest(out_dir)
    except ArtifactError:
        return False
    if manifest.get("fingerprint") != expected_fingerprint:
        return False
    bad = verify_files(out_dir, manifest)
    if bad:
        log.warning("%s: files changed since they were written (%s); rerunning",
                    out_dir, ", ".join(bad[:5]))
        return False
    return True


def clean_stale_temporaries(parent: Path, name: str) -> None:
    """Remove temporary folders that a crashed earlier attempt left beside `name`."""
    for stale in parent.glob(f".{name}.tmp-*"):
        log.info("removing %s left by an interrupted run", stale)
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces `final` only if the block completes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(final.parent, final.name)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.parent / f".{final.name}.tmp-old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(out_dir: Path, *, stage: str, config: PipelineConfig, fingerprint: str,
                   inputs: dict[str, Path], metrics: dict[str, Any], started: float,
                   external_inputs: dict[str, Any] | None = None,
                   timings: Timings | None = None) -> dict:
    """Write config.yaml and manifest.json into a finished (temporary) artifact folder
    (`timings`: the run's phases, recorded as `timings` beside `duration_s`)."""
    (out_dir / CONFIG_FILE).write_text(config.to_yaml(), encoding="utf-8")
    with phase("io"):
        files = hash_files(out_dir)
    manifest = {
        "stage": stage,
        "fingerprint": fingerprint,
        "config_hash": config_hash(config),
        "config": config.to_dict(),
        "inputs": {name: {"path": str(Path(path).resolve()),
                          "manifest_sha256": sha256_file(Path(path) / MANIFEST)}
                   for name, path in inputs.items()},
        "external_inputs": external_inputs or {},
        "files": files,
        "metrics": metrics,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.time() - started, 3),
    }
    if timings is not None:
        manifest["timings"] = timings.as_dict(manifest["duration_s"])
    text = json.dumps(manifest, indent=2, sort_keys=False, default=str)
    (out_dir / MANIFEST).write_text(text + "\n", encoding="utf-8")
    return manifest
