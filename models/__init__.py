"""The reference networks of SEED.md.

The specs (models.specs) are plain data and import no Keras, so the stage
table loads at once; models.networks builds and loads Keras models and
models.layers holds the one custom layer.
"""
from models.specs import Conv, Dense, Network

__all__ = ["Conv", "Dense", "Network"]
