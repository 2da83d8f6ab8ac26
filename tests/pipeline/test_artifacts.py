"""Atomic artifact folders and manifests."""

import json

import pytest

from core.errors import SlimbertError
from pipeline import artifacts
from pipeline.config import PipelineConfig


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "stage"
    with pytest.raises(RuntimeError):
        with artifacts.atomic_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 10)
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_whole_folder(tmp_path):
    final = tmp_path / "stage"
    with artifacts.atomic_dir(final) as tmp:
        (tmp / "old.txt").write_text("old")
    with artifacts.atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_stale_temporaries_are_cleaned(tmp_path):
    stale = tmp_path / ".stage.tmp-123-abcd"
    stale.mkdir()
    (stale / "junk").write_text("x")
    with artifacts.atomic_dir(tmp_path / "stage"):
        pass
    assert not stale.exists()


def test_manifest_records_files_and_detects_tampering(tmp_path):
    out = tmp_path / "stage"
    config = PipelineConfig()
    fp = artifacts.fingerprint("stage", {"a": 1}, {})
    with artifacts.atomic_dir(out) as tmp:
        (tmp / "data.bin").write_bytes(b"abc")
        artifacts.write_manifest(tmp, stage="stage", config=config, fingerprint=fp, inputs={},
                                 metrics={"accuracy": 0.5}, started=0.0)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["data.bin"] == {
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "bytes": 3}
    assert "config.yaml" in manifest["files"]
    assert manifest["metrics"] == {"accuracy": 0.5}
    assert manifest["versions"]["tensorflow"].startswith("2.21")
    assert manifest["config"]["data"]["max_seq_length"] == config.data.max_seq_length
    assert artifacts.is_up_to_date(out, fp)
    assert not artifacts.is_up_to_date(out, artifacts.fingerprint("stage", {"a": 2}, {}))
    (out / "data.bin").write_bytes(b"abd")
    assert artifacts.verify_files(out, manifest) == ["data.bin"]
    assert not artifacts.is_up_to_date(out, fp)


def test_read_manifest_errors(tmp_path):
    with pytest.raises(artifacts.ArtifactError, match="not a complete artifact"):
        artifacts.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(artifacts.ArtifactError, match="corrupt"):
        artifacts.read_manifest(tmp_path)


def test_stage_contract_external_inputs_and_stale_scratch(tmp_path, monkeypatch):
    """`cli.execute` with a minimal stage: what the stage reads from outside the run is
    part of its fingerprint and manifest, and an up-to-date stage removes the scratch
    that a superseded run left in .work."""
    import sys
    import types

    from pipeline.cli import execute
    from pipeline.config import load_config

    source = tmp_path / "source.txt"
    source.write_text("one")
    stage = types.ModuleType("pipeline.teststage")
    stage.INPUTS = ()
    stage.fingerprint_config = lambda config: {}
    stage.external_inputs = lambda config: {"source": source.read_text()}
    runs = []
    stage.run = lambda config, inputs, out_dir, work_dir: \
        runs.append(1) or (out_dir / "copy.txt").write_text(source.read_text()) and {}
    monkeypatch.setitem(sys.modules, "pipeline.teststage", stage)
    config, run_dir = load_config(None), tmp_path / "run"

    out = execute("teststage", config, run_dir)
    first = json.loads((out / "manifest.json").read_text())
    assert first["external_inputs"] == {"source": "one"}
    stale = run_dir / ".work" / "teststage-0123456789ab" / "ckpt"
    stale.mkdir(parents=True)
    (stale / "weights").write_bytes(b"x" * 1000)
    execute("teststage", config, run_dir)  # up to date
    assert len(runs) == 1
    assert not (run_dir / ".work").exists()
    source.write_text("two")
    execute("teststage", config, run_dir)  # the outside input changed: reruns
    assert len(runs) == 2 and (out / "copy.txt").read_text() == "two"

    def fail(config, inputs, out_dir, work_dir):
        raise SlimbertError("bad input")

    stage.run = fail
    with pytest.raises(SlimbertError):  # a failed first stage leaves no empty run folder
        execute("teststage", config, tmp_path / "new-run")
    assert not (tmp_path / "new-run").exists()
    assert json.loads((out / "manifest.json").read_text())["external_inputs"] == \
        {"source": "two"}
