"""tf.data input: uint8 arrays in, batched float images in [0, 1] out, ready for a tf.distribute strategy.

The arrays (196 MB for the expanded set) live in memory; each epoch's order
is a seeded permutation of indices and batches are gathered with one op, so
shuffling costs nothing and an epoch is reproducible after a restart.
Random shifts, when asked for, are one vectorised transform per batch.
"""
import numpy as np
import tensorflow as tf


def epoch_order(n: int, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The order of the training images in one epoch (the same order every epoch when not shuffling)."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def random_shift(images, max_shift: int, seed):
    """Move each image by its own random whole-pixel offset in [-max_shift, max_shift], zero-filled."""
    batch = tf.shape(images)[0]
    offsets = tf.random.stateless_uniform([batch, 2], seed, -max_shift, max_shift + 1, dtype=tf.int32)
    offsets = tf.cast(offsets, tf.float32)
    ones, zeros = tf.ones([batch, 1]), tf.zeros([batch, 1])
    # Projective transform rows a0 a1 a2 b0 b1 b2 c0 c1: output(x, y) = input(x + dx, y + dy).
    transforms = tf.concat([ones, zeros, offsets[:, 1:], zeros, ones, offsets[:, :1], zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
        interpolation="NEAREST", fill_mode="CONSTANT")


def dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, *, order=None, drop_remainder=False,
            max_shift: int = 0, seed=(0, 0), input_context=None) -> tf.data.Dataset:
    """Batches of (images float32 [B, 28, 28, 1] in [0, 1], labels int32 [B]).

    order: indices to visit (default: as stored). With an input_context
    (tf.distribute), each input pipeline takes its own share of the order and
    batch_size is the per-replica size.
    """
    order = np.arange(len(images)) if order is None else order
    if input_context is not None:
        order = order[input_context.input_pipeline_id::input_context.num_input_pipelines]
    images_t = tf.constant(images)
    labels_t = tf.constant(labels.astype(np.int32))

    def gather(step, index):
        x = tf.cast(tf.gather(images_t, index), tf.float32)[..., None] / 255.0
        if max_shift:
            x = random_shift(x, max_shift, tf.stack([tf.cast(seed[0] * 1_000_003 + seed[1], tf.int64), step]))
        return x, tf.gather(labels_t, index)

    ds = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=drop_remainder)
    return ds.enumerate().map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
