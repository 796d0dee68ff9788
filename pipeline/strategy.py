"""Which tf.distribute strategy a run uses: chosen from the hardware, overridable by name.

Also what the workers of a MultiWorkerMirroredStrategy need to stay in step:
which of them is the chief, each other worker's stable name, and a sum over
workers (a collective every worker must join) from which the chief's view
is broadcast.
"""
import functools
import json
import os

import tensorflow as tf

from mnist_cnn_progression.pipeline.errors import PipelineError


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


def task_name(strategy: tf.distribute.Strategy) -> str | None:
    """A stable name for a worker other than the chief ("worker-1"); None for the chief and single-process runs."""
    if is_chief(strategy):
        return None
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type}-{resolver.task_id}"


def is_multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and cluster_size() > 1


@functools.lru_cache(maxsize=None)
def _summing(strategy):
    @tf.function
    def total(values):
        return strategy.reduce("SUM", strategy.run(lambda: tf.identity(values)), axis=None)
    return total


def sum_over_workers(strategy, values: list[int]) -> list[int]:
    """Every worker's `values` added up, on every worker: a collective each worker must call in the same order.

    Without a cluster it is `values`. Each replica contributes its worker's
    values, so the sum over replicas is divided by the replicas per worker.
    """
    if not is_multi_worker(strategy):
        return [int(v) for v in values]
    total = _summing(strategy)(tf.constant(values, tf.int64)).numpy()
    per_worker = strategy.num_replicas_in_sync // cluster_size()
    return [int(v) // per_worker for v in total]


def chief_decides(strategy, values: list[int]) -> list[int]:
    """The chief's `values`, on every worker (what the other workers pass is ignored); a collective, as above."""
    return sum_over_workers(strategy, values if is_chief(strategy) else [0] * len(values))


def is_default(strategy: tf.distribute.Strategy) -> bool:
    """The default strategy: one device, no replicas or workers to keep in step."""
    return not isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy))


def describe(strategy: tf.distribute.Strategy) -> str:
    return f"{type(strategy).__name__} ({strategy.num_replicas_in_sync} replica(s))"
