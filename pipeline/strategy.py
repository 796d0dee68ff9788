"""Which tf.distribute strategy a run uses: chosen from the hardware, overridable by name."""
import json
import os

import tensorflow as tf

from pipeline.errors import PipelineError


def cluster_size() -> int:
    """Number of workers TF_CONFIG describes (1 when there is no cluster)."""
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def choose(name: str = "auto") -> tf.distribute.Strategy:
    """auto: MultiWorkerMirrored when TF_CONFIG names a cluster, Mirrored on GPUs, else the default strategy."""
    if name == "auto":
        if cluster_size() > 1:
            name = "multi_worker"
        elif tf.config.list_logical_devices("GPU"):
            name = "mirrored"
        else:
            name = "default"
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "default":
        return tf.distribute.get_strategy()
    raise PipelineError(f"Unknown strategy {name!r}: use auto, default, mirrored or multi_worker.")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes to the run directory (worker 0 when the cluster has no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


def is_default(strategy: tf.distribute.Strategy) -> bool:
    """The default strategy: one device, no replicas or workers to keep in step."""
    return not isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy))


def describe(strategy: tf.distribute.Strategy) -> str:
    return f"{type(strategy).__name__} ({strategy.num_replicas_in_sync} replica(s))"
