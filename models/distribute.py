"""tf.distribute strategies by name (`TrainConfig.strategy`): default, mirrored,
multi_worker (TF_CONFIG), tpu; and where a multi-worker task stands (chief or not, its
name, how many input pipelines feed it).

Example:
    >>> strategy = make_strategy("default")
    >>> with strategy.scope():
    ...     model = build_model()
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from core.errors import SlimbertError

log = logging.getLogger(__name__)


def make_strategy(name: str, tpu: str = "") -> tf.distribute.Strategy:
    """The strategy named by `TrainConfig.strategy` (`tpu`: the TPU at `tpu`)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise SlimbertError(
                "finetune.strategy=multi_worker needs the TF_CONFIG environment variable "
                "(cluster and task of this worker); run the same command on every worker")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as err:
            raise SlimbertError(f"TF_CONFIG is not valid JSON: {err}") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as err:
            raise SlimbertError(f"no TPU found ({err}); set finetune.tpu to its address or "
                                "use another finetune.strategy") from None
        return tf.distribute.TPUStrategy(resolver)
    raise SlimbertError(f"unknown strategy {name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True where artifacts are written: everywhere except non-chief multi-worker tasks."""
    resolver = getattr(strategy.extended, "_cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type is None or task_type == "chief" or (
        task_type == "worker" and task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def task_name(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy.extended, "_cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return "local"
    return f"{resolver.task_type}-{resolver.task_id}"


def num_input_pipelines(strategy: tf.distribute.Strategy) -> int:
    """How many input pipelines (workers) `distribute_datasets_from_function` will use."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, len(spec.get("worker", [])) + len(spec.get("chief", [])))
