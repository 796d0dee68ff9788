"""The reference layers and networks of SEED.md."""
from models.layers import ConvPool
from models.networks import Conv, Dense, Network, build_network

__all__ = ["Conv", "ConvPool", "Dense", "Network", "build_network"]
