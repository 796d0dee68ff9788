"""Training one network under a tf.distribute strategy, resumably, keeping its best-validation weights.

One training path serves every strategy: a Keras model and optimizer driven
by our own step under `strategy.run` (Keras 3's `fit` fails under
MultiWorkerMirroredStrategy, keras-team/keras#20585). The step runs
`steps_per_call` times inside one `tf.function` call, as `fit`'s
`steps_per_execution` does, so batch-10 training is not bound by Python.

After every epoch: validation accuracy, then a checkpoint of model,
optimizer, epoch, the best weights so far and the dropout layers' seed
states (the input pipeline is stateless: each epoch's order and shifts
follow from the seed and the epoch). A run killed at any point restarts
from its last finished epoch and ends with the weights it would have had
without the kill.

Under MultiWorkerMirroredStrategy, as TensorFlow's multi-worker fault
tolerance intends: every worker saves (saving may need collectives), the
chief into `checkpoint_dir`, any other worker into its own stable
`checkpoint_dir/<task>/` (e.g. `worker-1/`); every worker restores from the
chief's checkpoint, so they resume after the same epoch, and a worker that
cannot see the chief's checkpoint (a run directory that is not shared) stops
all of them with a plain error instead of a collective mismatch.

Under a mixed precision policy (TrainSettings.precision) the network computes
in bfloat16 or float16, with loss scaling for float16, while its variables,
the checkpoint and the kept best weights stay float32; validation and the
network returned are a float32 copy, so evaluation and export see float32.
Its last `float32_last_epochs` epochs compute in float32: the same variables
and optimizer, each layer's Keras dtype policy switched to float32 and the
step traced again, so the weights settle where float32 (the evaluation and
the export) sees them.
"""
import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mnist_cnn_progression.inference.contract import in_scoring_batches
from mnist_cnn_progression.inference.files import write_json
from mnist_cnn_progression.models import Network
from mnist_cnn_progression.models.networks import build_network
from mnist_cnn_progression.pipeline import inputs
from mnist_cnn_progression.pipeline.config import TrainSettings
from mnist_cnn_progression.pipeline.errors import PipelineError
from mnist_cnn_progression.pipeline.progress import minutes
from mnist_cnn_progression.pipeline.strategy import (chief_decides, is_chief, is_multi_worker, sum_over_workers,
                                                     task_name)


@dataclass
class Trained:
    model: keras.Model         # holding the best-validation weights
    history: list = field(default_factory=list)  # one dict per epoch
    best_epoch: int = 0
    best_val_accuracy: float = 0.0
    images_per_second: float = 0.0
    resumed_from_epoch: int = 0


def first_of_last(epochs: int, last: int) -> int:
    """The first of the last `last` of `epochs` epochs (0: none; asking for more epochs than there are means all)."""
    return max(1, epochs - last + 1) if last else 0


def shift_only_from(settings: TrainSettings) -> int:
    """The first epoch without turns and zooms."""
    return first_of_last(settings.epochs, settings.shift_only_last_epochs)


def compute_in_float32(model: keras.Model) -> None:
    """Every layer computes in float32 from its next trace on (its variables are float32 already)."""
    for layer in model.layers:
        layer.dtype_policy = "float32"


def make_optimizer(settings: TrainSettings, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate = settings.learning_rate
    if settings.schedule == "warmup_cosine":
        total = settings.epochs * steps_per_epoch
        warmup = int(settings.warmup_fraction * total)
        rate = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else rate, total - warmup, warmup_target=rate if warmup else None, warmup_steps=warmup)
    elif settings.schedule != "constant":
        raise ValueError(f"unknown schedule {settings.schedule!r}")
    decay = settings.weight_decay or None
    if settings.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(rate, weight_decay=decay)
    elif settings.optimizer == "adam":
        optimizer = keras.optimizers.Adam(rate, weight_decay=decay)
    else:
        raise ValueError(f"unknown optimizer {settings.optimizer!r}")
    # float16's narrow range underflows small gradients: the loss is scaled up, the gradients back down
    return keras.optimizers.LossScaleOptimizer(optimizer) if settings.precision == "mixed_float16" else optimizer


def make_train_steps(model, optimizer, strategy, global_batch: int):
    """A tf.function running `steps` training steps on a distributed iterator; returns the summed loss.

    Mean negative log-likelihood over the global batch plus the L2 term,
    one optimizer update per step, on every replica of the strategy. The
    gradients are of the loss as the optimizer scales it (a LossScaleOptimizer
    scales it and unscales them; any other leaves it as it is).
    """
    def step(batch):
        x, y = batch
        with tf.GradientTape() as tape:
            probabilities = model(x, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(y, probabilities)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(loss)  # on the tape: the gradients are of the scaled loss
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    @tf.function
    def train_steps(iterator, steps):
        total = tf.constant(0.0)
        for _ in tf.range(steps):
            total += strategy.reduce("SUM", strategy.run(step, args=(next(iterator),)), axis=None)
        return total

    return train_steps


def predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Probabilities [N, 10] for uint8 images [N, 28, 28], in inference mode (no dropout).

    Eager calls: at 1,000 images a call the kernels dominate, and a
    tf.function made per network would be traced anew for each (TensorFlow
    then warns of excessive retracing).
    """
    return in_scoring_batches(
        lambda batch: model(tf.constant(batch[..., None], tf.float32) / 255.0, training=False).numpy(), images)


def write_history_csv(path: Path, history: list) -> None:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["epoch", "loss", "val_accuracy", "seconds"])
        writer.writeheader()
        writer.writerows(history)


def train(network: Network, splits, data: str, settings: TrainSettings, strategy: tf.distribute.Strategy,
          checkpoint_dir: Path, log=print, train_limit: int = 0, tensorboard_dir: Path | None = None,
          queued_after: int = 0, start_weights: list | None = None) -> Trained:
    """Train `network` on splits' train (or expanded) set; select the epoch by validation accuracy.

    The later epoch wins a tie, as in the reference (Keras's ModelCheckpoint keeps the earlier).
    queued_after: how many networks like this one will train after it in its
    place (ensemble members waiting for a core); the time-left estimate counts them.
    start_weights: weights to start from instead of fresh ones (a chained ensemble member starts from the
    previous member's); a checkpoint, when there is one, still wins.
    """
    check_replicas(settings.batch_size, strategy.num_replicas_in_sync)
    training = training_arrays(splits, data, train_limit)
    steps_per_epoch = full_batches(training.size, settings.batch_size)
    l2 = 0.5 * settings.lmbda / steps_per_epoch  # the reference L2 term, per mini-batch
    state = TrainingState.start(network, settings, strategy, steps_per_epoch, l2, start_weights,
                              own_checkpoint_dir(checkpoint_dir, strategy))
    history = state.restore(checkpoint_dir)
    resumed_from = agree_on_resume(strategy, state.epochs_done, checkpoint_dir)
    if resumed_from:
        log(f"  resuming after epoch {resumed_from} of {settings.epochs} "
            f"(best so far {state.best_val.numpy():.4f} at epoch {int(state.best_epoch.numpy())})")
    seconds_training = run_epochs(state, training, splits, settings, strategy, steps_per_epoch, history,
                                  log, tensorboard_dir, queued_after)
    sum_over_workers(strategy, [0])  # all workers' last checkpoints are written before the chief may remove them
    model = state.best_model(network, settings, l2, strategy)
    ran = settings.epochs - resumed_from
    return Trained(model=model, history=history, best_epoch=int(state.best_epoch.numpy()),
                   best_val_accuracy=float(state.best_val.numpy()),
                   images_per_second=ran * steps_per_epoch * settings.batch_size / seconds_training if ran else 0.0,
                   resumed_from_epoch=resumed_from)


def training_arrays(splits, data: str, train_limit: int) -> inputs.Arrays:
    """The input: the stage's training set, cut to train_limit images when one is set."""
    train_x, train_y = splits.training_set(data)
    if train_limit:
        train_x, train_y = train_x[:train_limit], train_y[:train_limit]
    return inputs.Arrays(train_x, train_y)


def full_batches(images: int, global_batch: int) -> int:
    """Steps in an epoch: the full batches (a partial last batch is dropped)."""
    if images < global_batch:
        raise PipelineError(f"{images} training images make no full batch of {global_batch}; "
                            f"lower batch_size or raise train_limit.")
    return images // global_batch


def check_replicas(global_batch: int, replicas: int) -> None:
    """Every replica takes an equal share of a global batch (tf.distribute's rule), said as a sentence up front."""
    if global_batch % replicas:
        raise PipelineError(f"batch_size {global_batch} does not split evenly over the strategy's {replicas} "
                            f"replicas: set --set batch_size= a multiple of {replicas}, such as "
                            f"{split_over(replicas, global_batch)}.")


def split_over(replicas: int, batch_size: int) -> int:
    """batch_size rounded down to a multiple of the replicas, at least one image each (1,000 does not split over 3)."""
    return max(replicas, batch_size // replicas * replicas)


def own_checkpoint_dir(checkpoint_dir: Path, strategy) -> Path:
    """Where this worker saves: the chief into the run's checkpoint, any other worker into its own beside it."""
    directory = checkpoint_dir if is_chief(strategy) else checkpoint_dir / task_name(strategy)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@dataclass
class TrainingState:
    """What a checkpoint holds: model, optimizer, the epochs done, and the best epoch so far with its weights."""
    model: keras.Model
    evaluation_model: keras.Model  # the model itself in float32; under a mixed policy, a float32 copy
    optimizer: keras.optimizers.Optimizer
    best_weights: list
    epoch_done: tf.Variable
    best_epoch: tf.Variable
    best_val: tf.Variable
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    history_path: Path

    @classmethod
    def start(cls, network, settings, strategy, steps_per_epoch: int, l2: float, start_weights, write_dir: Path):
        with strategy.scope():
            model = build_network(network, l2=l2, seed=settings.seed, init=settings.init,
                                  precision=settings.precision)
            evaluation_model = model if settings.precision == "float32" else build_network(network)
            if start_weights is not None:
                model.set_weights(start_weights)
            optimizer = make_optimizer(settings, steps_per_epoch)
            optimizer.build(model.trainable_variables)  # before restore: keras-team/keras#19389
        best_weights = [tf.Variable(v.value, trainable=False) for v in model.weights]
        epoch_done = tf.Variable(0, dtype=tf.int64)
        best_epoch = tf.Variable(0, dtype=tf.int64)
        best_val = tf.Variable(-1.0, dtype=tf.float64)
        # What the model holds beside its weights: the dropout layers' seed-generator states, which
        # tf.train.Checkpoint(model=...) does not reach; without them a resumed run draws other masks.
        random_state = [v for v in model.variables if not any(v is w for w in model.weights)]
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_done, best_epoch=best_epoch,
                                         best_val=best_val, best_weights=best_weights, random_state=random_state)
        manager = tf.train.CheckpointManager(checkpoint, str(write_dir), max_to_keep=1)
        return cls(model, evaluation_model, optimizer, best_weights, epoch_done, best_epoch, best_val, checkpoint,
                   manager, write_dir / "history.json")

    @property
    def epochs_done(self) -> int:
        return int(self.epoch_done.numpy())

    def restore(self, checkpoint_dir: Path) -> list:
        """Restore the chief's last checkpoint (for every worker), if any; the history of the epochs it holds."""
        latest = tf.train.latest_checkpoint(str(checkpoint_dir))
        if not latest:
            return []
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        return json.loads((checkpoint_dir / "history.json").read_text())[:self.epochs_done]

    def keep_if_best(self, epoch: int, val_accuracy: float) -> None:
        if val_accuracy >= self.best_val.numpy():  # ">=": the later epoch wins a tie
            self.best_val.assign(val_accuracy)
            self.best_epoch.assign(epoch)
            for saved, current in zip(self.best_weights, self.model.weights):
                saved.assign(current.value)

    def refresh_evaluation_model(self) -> keras.Model:
        """The float32 model holding the weights trained so far (under float32, the model itself)."""
        if self.evaluation_model is not self.model:
            for copy, current in zip(self.evaluation_model.weights, self.model.weights):
                copy.assign(current.value)
        return self.evaluation_model

    def save(self, epoch: int, history: list) -> None:
        self.epoch_done.assign(epoch)
        write_json(self.history_path, history)  # before the checkpoint, so never shorter than it
        self.manager.save()

    def best_model(self, network, settings, l2: float, strategy) -> keras.Model:
        """The float32 model with the best epoch's weights."""
        model = self.evaluation_model
        if is_multi_worker(strategy):
            # A model of this worker alone: Keras's predict on a multi-worker model gathers across workers, and
            # what the chief does with its model next (evaluate, export) the other workers do not do.
            model = build_network(network, l2=l2, seed=settings.seed, init=settings.init)
        for current, saved in zip(model.weights, self.best_weights):
            current.assign(saved.value())
        return model


def agree_on_resume(strategy, resumed_from: int, checkpoint_dir: Path) -> int:
    """The multi-worker agreement: every worker resumes after the chief's epoch, or all stop with a plain error."""
    agreed = chief_decides(strategy, [resumed_from])[0]
    if sum_over_workers(strategy, [resumed_from != agreed])[0]:
        raise PipelineError(f"the workers found different checkpoints in {checkpoint_dir} (the chief's resumes "
                            f"after epoch {agreed}, not every worker's): give every worker the same --run-dir "
                            f"on storage they all see.")
    return resumed_from


def run_epochs(state: TrainingState, training: inputs.Arrays, splits, settings: TrainSettings, strategy,
               steps_per_epoch: int, history: list, log, tensorboard_dir: Path | None, queued_after: int) -> float:
    """The epoch loop from the first epoch not done: train, validate, keep the best, checkpoint; seconds training."""
    model, first = state.model, state.epochs_done + 1
    float32_from = first_of_last(settings.epochs, settings.float32_last_epochs)
    correct_in, validation_batches = validation_counter(
        state.evaluation_model, strategy, splits, split_over(strategy.num_replicas_in_sync,
                                                             settings.eval_batch_size))
    validation_size = len(splits.validation_labels)

    def validation_accuracy():
        state.refresh_evaluation_model()
        return sum(int(correct_in(batch)) for batch in validation_batches) / validation_size

    batches = iter(strategy.distribute_datasets_from_function(lambda ctx: training.training(
        ctx.get_per_replica_batch_size(settings.batch_size), first, settings.epochs, shuffle=settings.shuffle,
        seed=settings.seed, max_shift=settings.max_shift, max_rotation=settings.max_rotation,
        max_zoom=settings.max_zoom, shift_only_from=shift_only_from(settings), input_context=ctx)))
    # Each network's functions are traced ahead of their first call, for their input specs (the training
    # step once more when the network turns float32 for its last epochs). A run trains a dozen networks,
    # each with functions of its own: traced on first call instead, TensorFlow counts them all as one
    # function retraced again and again, and warns.
    def traced_train_steps():
        function = make_train_steps(model, state.optimizer, strategy, settings.batch_size)
        function.get_concrete_function(batches, tf.constant(settings.steps_per_call))
        return function

    train_steps = None
    correct_in.get_concrete_function(validation_batches.element_spec)
    writer = tf.summary.create_file_writer(str(tensorboard_dir)) if tensorboard_dir and is_chief(strategy) else None
    seconds_training = 0.0
    for epoch in range(first, settings.epochs + 1):
        if train_steps is None or epoch == float32_from:
            if float32_from and epoch >= float32_from:
                compute_in_float32(model)
                log(f"  epoch {epoch} on: float32 (float32_last_epochs {settings.float32_last_epochs})")
            train_steps = traced_train_steps()
        started = time.perf_counter()
        loss_sum, done = 0.0, 0
        while done < steps_per_epoch:
            steps = min(settings.steps_per_call, steps_per_epoch - done)
            loss_sum += float(train_steps(batches, tf.constant(steps)))
            done += steps
        seconds_training += time.perf_counter() - started
        val_accuracy = validation_accuracy()
        state.keep_if_best(epoch, val_accuracy)
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch, "loss": round(loss_sum / steps_per_epoch, 6),
                        "val_accuracy": val_accuracy, "seconds": round(seconds, 3)})
        state.save(epoch, history)
        if writer:
            with writer.as_default():
                tf.summary.scalar("loss", history[-1]["loss"], step=epoch)
                tf.summary.scalar("val_accuracy", val_accuracy, step=epoch)
        left = (settings.epochs - epoch + queued_after * settings.epochs) * seconds
        log(f"  epoch {epoch:3d}/{settings.epochs}  loss {history[-1]['loss']:.4f}  val {val_accuracy:.4f}  "
            f"best {state.best_val.numpy():.4f} (epoch {int(state.best_epoch.numpy())})  {seconds:.1f}s  "
            f"~{minutes(left)} left")
    return seconds_training


def validation_counter(model, strategy, splits, batch_size: int):
    """A tf.function counting the correct predictions in a distributed validation batch, and those batches."""
    def count_correct(batch):
        x, y = batch
        predicted = lambda: tf.argmax(model(x, training=False), axis=-1, output_type=tf.int32)
        # A replica handed no images (the last, partial batch goes to the first replicas) counts none without
        # calling the model: oneDNN's CPU convolution fails on an empty batch.
        predicted = tf.cond(tf.shape(x)[0] > 0, predicted, lambda: tf.zeros([0], tf.int32))
        return tf.reduce_sum(tf.cast(predicted == y, tf.int64))

    @tf.function
    def correct_in(batch):
        return strategy.reduce("SUM", strategy.run(count_correct, args=(batch,)), axis=None)

    validation = inputs.Arrays(splits.validation_images, splits.validation_labels)
    return correct_in, strategy.distribute_datasets_from_function(
        lambda ctx: validation.evaluation(ctx.get_per_replica_batch_size(batch_size), ctx))
