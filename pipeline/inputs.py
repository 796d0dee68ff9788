"""tf.data input: uint8 arrays in, batched float images in [0, 1] out, ready for a tf.distribute strategy.

The arrays (196 MB for the expanded set) live in memory as constants. Each
epoch's order is a stateless shuffle of indices seeded by (seed, epoch), and
batches are gathered with one op, so shuffling costs nothing, one dataset
serves the whole run, and any epoch is reproducible after a restart. Random
shifts, turns and zooms, when asked for, are one vectorised transform per batch.
"""
import numpy as np
import tensorflow as tf

BATCH_SEED_STRIDE = 1_000_000  # per-batch augmentation seed: epoch * stride + batch number


def epoch_order(n: int, shuffle: bool, seed: int, epoch) -> tf.Tensor:
    """The indices of one epoch, in order (the same order every epoch when not shuffling)."""
    indices = tf.range(n, dtype=tf.int64)
    if not shuffle:
        return indices
    return tf.random.experimental.stateless_shuffle(indices, seed=tf.stack([tf.constant(seed, tf.int64),
                                                                           tf.cast(epoch, tf.int64)]))


def random_transform(images, seed, max_shift: int, max_rotation: float = 0.0, max_zoom: float = 0.0):
    """Move each image by its own random whole-pixel offset in [-max_shift, max_shift], and, when asked, turn it
    by up to max_rotation degrees and scale it by up to 1 +- max_zoom about its centre; zero-filled, bilinear.

    One projective transform per image, all in one op. A pure shift lands on whole pixels, so it moves
    pixel values exactly.
    """
    batch = tf.shape(images)[0]
    offsets = tf.random.stateless_uniform([batch, 2], seed, -max_shift, max_shift + 1, dtype=tf.int32)
    dy, dx = tf.unstack(tf.cast(offsets, tf.float32), axis=1)
    angle, scale = tf.zeros([batch]), tf.ones([batch])
    if max_rotation or max_zoom:
        turn_seed, zoom_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        angle = tf.random.stateless_uniform([batch], turn_seed, -1.0, 1.0) * (max_rotation * np.pi / 180)
        scale = 1.0 + tf.random.stateless_uniform([batch], zoom_seed, -1.0, 1.0) * max_zoom
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    centre_y, centre_x = tf.unstack((tf.cast(tf.shape(images)[1:3], tf.float32) - 1) / 2)
    # Rows a0 a1 a2 b0 b1 b2 c0 c1: output(x, y) = input(a0 x + a1 y + a2, b0 x + b1 y + b2), here the
    # input point is centre + rotation(angle) / scale * (output - centre) + offset.
    zeros = tf.zeros([batch])
    transforms = tf.stack([cos, -sin, centre_x - cos * centre_x + sin * centre_y + dx,
                           sin, cos, centre_y - sin * centre_x - cos * centre_y + dy, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")


class Arrays:
    """uint8 images [N, 28, 28] and labels [N] held once as tensors, batched on demand."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.size = len(images)
        self.images = tf.constant(images)
        self.labels = tf.constant(labels.astype(np.int32))

    def gather(self, index):
        return tf.cast(tf.gather(self.images, index), tf.float32)[..., None] / 255.0, tf.gather(self.labels, index)

    def training(self, batch_size: int, first_epoch: int, last_epoch: int, *, shuffle: bool, seed: int,
                 max_shift: int = 0, max_rotation: float = 0.0, max_zoom: float = 0.0, shift_only_from: int = 0,
                 input_context=None) -> tf.data.Dataset:
        """Epochs first_epoch..last_epoch back to back, full batches only.

        From epoch shift_only_from on (0: never) the images are only shifted, no longer turned or zoomed:
        the last, slowest-learning steps fit digits of the test set's own geometry.

        With an input_context (tf.distribute), each input pipeline takes its
        own share of every epoch and batch_size is the per-replica size. An
        epoch then ends with its last full global batch, on every replica: the
        replicas' batches left over (of a partial global batch) are dropped,
        else they would open the next epoch, which a resumed run starts afresh.
        """
        def one_epoch(epoch):
            order = epoch_order(self.size, shuffle, seed, epoch)
            if input_context is not None:
                order = order[input_context.input_pipeline_id::input_context.num_input_pipelines]

            def batch(number, index):
                images, labels = self.gather(index)
                if max_shift or max_rotation or max_zoom:
                    batch_seed = tf.stack([tf.constant(seed, tf.int64), epoch * BATCH_SEED_STRIDE + number])
                    transform = lambda: random_transform(images, batch_seed, max_shift, max_rotation, max_zoom)
                    if shift_only_from and (max_rotation or max_zoom):
                        shift = lambda: random_transform(images, batch_seed, max_shift)
                        return tf.cond(epoch < shift_only_from, transform, shift), labels
                    return transform(), labels
                return images, labels

            batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=True)
            if input_context is not None:
                global_batches = self.size // (batch_size * input_context.num_replicas_in_sync)
                replicas_here = input_context.num_replicas_in_sync // input_context.num_input_pipelines
                batches = batches.take(global_batches * replicas_here)
            return batches.enumerate().map(batch, num_parallel_calls=tf.data.AUTOTUNE)

        epochs = tf.data.Dataset.range(first_epoch, last_epoch + 1)
        return epochs.flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)

    def evaluation(self, batch_size: int, input_context=None) -> tf.data.Dataset:
        """Every image once, in stored order (each input pipeline its share)."""
        order = tf.range(self.size, dtype=tf.int64)
        if input_context is not None:
            order = order[input_context.input_pipeline_id::input_context.num_input_pipelines]
        ds = tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
        return ds.map(self.gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
