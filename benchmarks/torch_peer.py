"""The PyTorch eager peer of the training benchmark: a stage's network in torch.nn, trained by a plain eager loop.

What the other framework's everyday way gets from this CPU on the same network, batch and optimizer.
benchmarks.train_throughput imports this module only when torch is installed: torch is no dependency of the project.
"""
import sys

import numpy as np

# Triton, torch's GPU compiler, is loaded when an optimizer is made (torch._dynamo looks for it) and crashes the
# process when TensorFlow was loaded first, as it is here; eager training on a CPU never uses it.
sys.modules.setdefault("triton", None)
import torch
import torch.nn.functional as F
from torch import nn

from mnist_cnn_progression.models.specs import IMAGE_SHAPE, NUM_CLASSES, BNConv, Conv, Network

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


def describe() -> str:
    """torch's version and its intra-op threads (left at torch's default), for the benchmark's output."""
    return f"{torch.__version__}, {torch.get_num_threads()} threads"


class ConvPool(nn.Conv2d):
    """Convolution, non-overlapping pooling, then bias + activation: the reference order of models.layers.ConvPool.

    A Conv2d whose bias is added after the pooling: its weights, kernel then bias, are those of the Keras layer.
    """

    def __init__(self, channels: int, spec: Conv, activation: nn.Module):
        super().__init__(channels, spec.filters, spec.kernel_size, spec.strides, spec.padding)
        self.pool_size, self.pooling, self.activation = spec.pool_size, spec.pooling, activation

    def forward(self, x):
        z = F.conv2d(x, self.weight, None, self.stride, self.padding)
        if self.pooling == "max":
            z = F.max_pool2d(z, self.pool_size)
        else:  # L2 pooling, with the same floor as the Keras layer's
            z = torch.sqrt(F.avg_pool2d(z.square(), self.pool_size) * self.pool_size ** 2 + 1e-12)
        return self.activation(z + self.bias.to(z.dtype)[:, None, None])  # in z's dtype, as Keras casts its bias


class FlattenChannelsLast(nn.Flatten):
    """Flatten in Keras's order, [N, H, W, C], so that a Keras network's dense kernels fit as they are.

    On channels-last tensors the permute moves no data.
    """

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1))


class Float32Output(nn.Linear):
    """The output layer, computed in float32 under autocast too, as build_network keeps the softmax in float32."""

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def bn_conv(channels: int, spec: BNConv, activation: nn.Module) -> nn.Sequential:
    """Convolution without bias, batch normalisation (Keras's epsilon and momentum), activation, pooling if asked."""
    layers = [nn.Conv2d(channels, spec.filters, spec.kernel_size, padding=spec.padding, bias=False),
              nn.BatchNorm2d(spec.filters, eps=1e-3, momentum=0.01), activation]
    return nn.Sequential(*layers, *([nn.MaxPool2d(spec.pool_size)] if spec.pool_size > 1 else []))


def torch_network(network: Network) -> nn.Sequential:
    """images [N, 1, 28, 28] -> logits [N, 10]: the layers build_network makes of the spec, without the softmax,
    which the loss (F.cross_entropy) applies. Starting weights are torch's own: they do not change the speed."""
    size, channels, units, layers = IMAGE_SHAPE[0], IMAGE_SHAPE[2], None, []
    for spec in network.hidden:
        if isinstance(spec, (Conv, BNConv)):
            build = ConvPool if isinstance(spec, Conv) else bn_conv
            layers.append(build(channels, spec, ACTIVATIONS[network.activation]()))
            size, channels = spec.convolved(size) // spec.pool_size, spec.filters
            continue
        if units is None:
            layers.append(FlattenChannelsLast())
        layers += [nn.Dropout(network.dropout)] if network.dropout else []
        layers += [nn.Linear(units or size * size * channels, spec.units), ACTIVATIONS[network.activation]()]
        units = spec.units
    layers += [FlattenChannelsLast()] if units is None else []
    layers += [nn.Dropout(network.dropout)] if network.dropout else []
    return nn.Sequential(*layers, Float32Output(units or size * size * channels, NUM_CLASSES))


def training_pass(network: Network, images: np.ndarray, labels: np.ndarray, batch_size: int, optimizer: str,
                  learning_rate: float, l2: float = 0.0, autocast: bool = False, seed: int = 0):
    """A function that trains one epoch over uint8 images [N, 28, 28] in shuffled batches, warmed up.

    Each step: the batch scaled to [0, 1], cross-entropy of the softmax (in
    bfloat16 autocast when asked), plus l2 times the squared kernels (never the
    biases) as Keras's L2 regulariser adds it, one optimizer step. The network
    and its batches are channels-last, the layout oneDNN's convolutions prefer.
    """
    torch.manual_seed(seed)
    model = torch_network(network).to(memory_format=torch.channels_last).train()
    kernels = [parameter for parameter in model.parameters() if parameter.dim() > 1]
    update = OPTIMIZERS[optimizer](model.parameters(), lr=learning_rate)
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))

    def one_epoch():
        order = torch.randperm(len(x))
        for start in range(0, len(x) - batch_size + 1, batch_size):
            batch = order[start:start + batch_size]
            inputs = (x[batch].float() / 255).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = F.cross_entropy(model(inputs), y[batch])
            if l2:
                loss = loss + l2 * sum(kernel.square().sum() for kernel in kernels)
            update.zero_grad()
            loss.backward()
            update.step()

    one_epoch()  # warm-up: oneDNN picks and caches its kernels
    return one_epoch
