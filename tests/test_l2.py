"""The reference L2 term, 0.5 lambda sum(w^2) per mini-batch, reaches the gradient of the project's training step;
decoupled weight decay (the fast preset's AdamW) shrinks the weights apart from the gradient."""
import numpy as np
import tensorflow as tf

from mnist_cnn_progression.models import Dense, Network
from mnist_cnn_progression.models.networks import build_network
from mnist_cnn_progression.pipeline import sources
from mnist_cnn_progression.pipeline.train import TrainSettings, make_optimizer, train

NETWORK = Network((Dense(30),))
ETA, LMBDA = 0.5, 0.1


def trained_weights(tmp_path, lmbda: float) -> list:
    """One plain-SGD step on 10 real digits (one mini-batch per epoch, so the term is 0.5 lambda sum(w^2))."""
    sample = sources.from_sample()
    splits = sources.Splits(sample.train_images[:10], sample.train_labels[:10], sample.validation_images[:10],
                            sample.validation_labels[:10], sample.test_images[:10], sample.test_labels[:10],
                            source="sample", split="first ten")
    settings = TrainSettings(epochs=1, batch_size=10, optimizer="sgd", learning_rate=ETA, lmbda=lmbda)
    trained = train(NETWORK, splits, "train", settings, tf.distribute.get_strategy(), tmp_path / f"ckpt{lmbda}",
                    log=lambda text: None)
    return [w.numpy() for w in trained.model.weights]


def test_the_l2_term_moves_each_weight_by_eta_lambda_w_and_leaves_biases_alone(tmp_path):
    initial = [w.numpy() for w in build_network(NETWORK, seed=0).weights]
    plain, decayed = trained_weights(tmp_path, 0.0), trained_weights(tmp_path, LMBDA)
    kernels = 0
    for start, without, with_l2 in zip(initial, plain, decayed):
        if start.ndim == 2:  # the gradient of 0.5 lambda w^2 is lambda w: SGD subtracts eta lambda w more
            np.testing.assert_allclose(with_l2 - without, -ETA * LMBDA * start, atol=2e-6)
            kernels += 1
        else:
            np.testing.assert_allclose(with_l2, without, atol=1e-7)
    assert kernels == 2


def test_weight_decay_shrinks_every_variable_by_rate_times_decay_whatever_the_gradient():
    """Adam with weight_decay is AdamW: the decay is not part of the loss, so a zero gradient still shrinks."""
    for optimizer in ("adam", "sgd"):
        settings = TrainSettings(epochs=1, batch_size=10, optimizer=optimizer, learning_rate=0.01, weight_decay=0.05)
        variable = tf.Variable([1.0, -2.0, 4.0])
        make_optimizer(settings, steps_per_epoch=1).apply_gradients([(tf.zeros(3), variable)])
        np.testing.assert_allclose(variable.numpy(), np.array([1.0, -2.0, 4.0]) * (1 - 0.01 * 0.05), rtol=1e-6)
        untouched = tf.Variable([1.0, -2.0, 4.0])
        make_optimizer(TrainSettings(epochs=1, batch_size=10, optimizer=optimizer, learning_rate=0.01),
                       steps_per_epoch=1).apply_gradients([(tf.zeros(3), untouched)])
        np.testing.assert_array_equal(untouched.numpy(), [1.0, -2.0, 4.0])
