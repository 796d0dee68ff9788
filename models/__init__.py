"""The reference networks of SEED.md, and the batch-normalised convolution of the stage beyond it.

The specs (models.specs) are plain data and import no Keras, so the stage
table loads at once; models.networks builds and loads Keras models and
models.layers holds the custom layers.
"""
from mnist_cnn_progression.models.specs import BNConv, Conv, Dense, Network

__all__ = ["BNConv", "Conv", "Dense", "Network"]
