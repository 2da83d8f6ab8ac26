"""Config loading: defaults < YAML < --set, strict keys, validation before any work."""

import pytest

from pipeline.config import (
    ConfigError,
    ExportConfig,
    PipelineConfig,
    TrainConfig,
    config_hash,
    load_config,
)
from tests.helpers import REPO


def test_defaults_yaml_and_overrides_layer(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\ndata:\n  max_seq_length: 48\n  labels: [neg, pos]\n")
    cfg = load_config(path, ["data.max_seq_length=40", "model.pooling=cls"])
    assert cfg.seed == 3
    assert cfg.data.max_seq_length == 40
    assert cfg.data.labels == ("neg", "pos")
    assert cfg.model.pooling == "cls"
    assert cfg.model.hidden_size == PipelineConfig().model.hidden_size


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(REPO / "configs/sst2.yaml", ["data.labels=[a, b]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(path, ["seed=1"])) != config_hash(cfg)


@pytest.mark.parametrize("name", ["default", "tiny", "sst2", "imdb"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.data.max_seq_length > 2


@pytest.mark.parametrize("overrides, message", [
    (["data.max_seq_lenght=64"], "unknown config key 'data.max_seq_lenght' (did you mean "
                                 "'max_seq_length'?)"),
    (["bogus=1"], "unknown config key 'bogus'"),
    (["data.max_seq_length=abc"], "'data.max_seq_length' expects int, found 'abc'"),
    (["data.max_seq_length=2"], "invalid config value for 'data.max_seq_length'"),
    (["data.source=s3"], "expected one of rotten_tomatoes, tfds, files"),
    (["data.source=tfds"], "'data.tfds_name': required"),
    (["data.source=files"], "set exactly one of data.files"),
    (["data.split_fractions=[0.5, 0.5, 0.5]"], "summing to 1"),
    (["data.splits={dev: x}"], "data.splits.dev"),
    (["data.labels=pos"], "'data.labels' expects a list"),
    (["model.num_heads=5"], "not divisible by 5 heads"),
    (["model.dropout=true"], "'model.dropout' expects float"),
    (["data=3"], "'data' is a section"),
    (["novalue"], "expected key=value"),
    (["prune.train.augment_fraction=2"],
     "invalid config value for 'prune.train.augment_fraction'"),
    (["prune.allocation=layerwise"], "expected one of uniform, global, found 'layerwise'"),
    (["prune.allocation=global", "prune.max_layer_sparsity=0.7"],
     "invalid config value for 'prune.max_layer_sparsity'"),
    (["quantize.train.learning_rate=3"],
     "invalid config value for 'quantize.train.learning_rate'"),
    (["finetune.learning_rate=3"], "invalid config value for 'finetune.learning_rate'"),
    (["prune.train.ema_decay=1"], "invalid config value for 'prune.train.ema_decay'"),
    (['prune.include=["("]'], "'prune.include': '(' is not a regular expression"),
    (["model.checkpoint=random", "model.max_positions=64", "data.max_seq_length=65"],
     "'data.max_seq_length': 65 exceeds model.max_positions 64"),
    (["quantize.calibration_batches=0", "quantize.outlier_ratio=0",
      "quantize.post_training=[cpu, int8]"],
     "'quantize.calibration_batches': must be > 0 for the `int8` variant"),
    (["export.compare_kernels=[savedmodel]"],
     "invalid config value for 'export.compare_kernels': expected TFLite target names"),
])
def test_invalid_configs_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_a_section_built_in_code_names_its_own_keys():
    with pytest.raises(ConfigError, match="'finetune.epochs': must be positive"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="'export.version': must be positive"):
        ExportConfig(version=0)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(bad)
    bad.write_text("data:\n  max_examples: -1\n")
    with pytest.raises(ConfigError, match=r"data.max_examples.*\(in .*bad.yaml\)"):
        load_config(bad)


def test_errors_blame_the_file_or_the_override_that_set_the_value(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("finetune:\n  epochs: 2\n")
    for value, message in (("abc", "expects int, found 'abc'"),
                           ("0", "must be positive"),
                           ("99999999999999999999", "at most 10,000")):
        with pytest.raises(ConfigError) as err:
            load_config(good, [f"finetune.epochs={value}"])
        assert message in str(err.value)
        assert str(err.value).endswith(f"(from --set finetune.epochs={value})")
        assert "good.yaml" not in str(err.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"'finetune.epochs'.*\(in .*bad.yaml\)$"):
        load_config(bad, ["data.max_seq_length=32"])
    with pytest.raises(ConfigError, match="at most 100,000,000"):
        load_config(None, ["prune.train.max_steps=1000000000"])


def test_a_folder_given_as_config_is_named_as_such(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; give a YAML file"):
        load_config(tmp_path)


def test_config_is_frozen():
    cfg = PipelineConfig()
    with pytest.raises(AttributeError):
        cfg.seed = 1


@pytest.mark.parametrize("overrides, message", [
    (["distill.keep_layers=[1, 1]"],
     "'distill.keep_layers': expected distinct layer indices >= 0, found [1, 1]"),
    (["distill.keep_layers=[-1]"], "'distill.keep_layers': expected distinct layer"),
    (["distill.num_heads=-1"], "'distill.num_heads': must be >= 0 (0 = keep all)"),
    (["distill.extra_tokens=-1"], "'distill.extra_tokens': must be >= 0"),
    (["distill.min_token_count=0"], "'distill.min_token_count': must be positive"),
    (["distill.importance_batches=0"], "'distill.importance_batches': must be positive"),
    (["distill.enabled=maybe"], "'distill.enabled' expects bool, found 'maybe'"),
    (["export.targets=[student-qat]", "quantize.sources=[finetune]"],
     "'export.targets': 'student-qat' needs quantize.qat true and 'distill' in "
     "quantize.sources"),
    (["export.model=student"], "'export.model': expected one of finetune, prune, distill"),
])
def test_distill_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs" / "tiny.yaml", overrides)
    assert message in str(err.value)


def test_distill_defaults_and_the_tiny_student():
    """By default the student is quantized and exported; tiny.yaml's is 1 layer, 1 head,
    32 FFN neurons; `export.model: distill` puts the student behind cpu/gpu/int8."""
    default = PipelineConfig()
    assert default.distill.enabled and default.distill.num_layers == 0
    assert "distill" in default.quantize.sources
    assert {"student-cpu", "student-gpu", "student-int8", "student-qat"} <= \
        set(default.export.targets)
    assert default.distill.train.distill_weight > 0
    tiny = load_config(REPO / "configs" / "tiny.yaml")
    assert (tiny.distill.num_layers, tiny.distill.num_heads,
            tiny.distill.intermediate_size, tiny.distill.vocabulary) == (1, 1, 32, "train")
    assert load_config(REPO / "configs" / "tiny.yaml",
                       ["export.model=distill"]).export.model == "distill"


@pytest.mark.parametrize("overrides, message", [
    (["prune.train.precision=mixed_bfloat16"],
     "'prune.train.precision': pruning trains in float32 only, found 'mixed_bfloat16'"),
    (["quantize.train.precision=mixed_float16"],
     "'quantize.train.precision': quantization-aware training runs in float32 only"),
])
def test_precision_is_refused_where_it_would_be_ignored(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs" / "tiny.yaml", overrides)
    assert message in str(err.value)
    # where it works: the fine-tune and the student
    load_config(REPO / "configs" / "tiny.yaml", ["finetune.precision=mixed_bfloat16",
                                                 "distill.train.precision=mixed_bfloat16"])
