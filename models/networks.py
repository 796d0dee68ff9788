"""The one function that turns a network spec into a Keras model, and the loader for saved ones."""
import keras

from mnist_cnn_progression.inference.contract import INPUT_NAME, OUTPUT_NAME
from mnist_cnn_progression.models.layers import ConvPool, ReplicaDropout, conv_fan_out, initializers
from mnist_cnn_progression.models.specs import IMAGE_SHAPE, NUM_CLASSES, BNConv, Conv, Network


def build_network(network: Network, l2: float = 0.0, seed: int = 0, name: str = "net",
                  init: str = "reference", precision: str = "float32") -> keras.Model:
    """A Sequential model: images [N, 28, 28, 1] in [0, 1] -> probabilities [N, 10].

    l2 is the Keras coefficient (the caller divides the reference lambda by
    the batches per epoch); it applies to weights, never biases. init picks
    the starting weights of every layer (models.layers.initializers).
    precision is the Keras dtype policy of every hidden layer ("float32",
    "mixed_bfloat16", "mixed_float16"), given to each layer rather than set
    globally, so that networks of other policies can train side by side in
    threads; the variables stay float32 whatever the policy, and the output
    layer (the softmax, and so the loss) computes in float32.
    """
    regularizer = keras.regularizers.L2(l2) if l2 else None
    policy = keras.DTypePolicy(precision)
    layers = [keras.Input(IMAGE_SHAPE, name=INPUT_NAME)]
    seeds = iter(range(seed * 1000, seed * 1000 + 1000, 2))
    flat = False
    for spec in network.hidden:
        if isinstance(spec, BNConv):
            layers += bn_conv(spec, network.activation, regularizer, next(seeds), init, policy)
            continue
        if isinstance(spec, Conv):
            layers.append(ConvPool(spec.filters, spec.kernel_size, spec.pool_size, spec.pooling,
                                   network.activation, spec.strides, spec.padding, regularizer, seed=next(seeds),
                                   init=init, dtype=policy))
            continue
        if not flat:
            layers.append(keras.layers.Flatten(dtype=policy))
            flat = True
        if network.dropout:
            layers.append(ReplicaDropout(network.dropout, seed=next(seeds), dtype=policy))
        kernel_init, bias_init = initializers(init, spec.units, next(seeds))
        layers.append(keras.layers.Dense(spec.units, activation=network.activation, kernel_initializer=kernel_init,
                                         bias_initializer=bias_init, kernel_regularizer=regularizer, dtype=policy))
    if not flat:
        layers.append(keras.layers.Flatten(dtype=policy))
    if network.dropout:
        layers.append(ReplicaDropout(network.dropout, seed=next(seeds), dtype=policy))
    layers.append(keras.layers.Dense(NUM_CLASSES, activation="softmax", kernel_initializer="zeros",
                                     kernel_regularizer=regularizer, name=OUTPUT_NAME, dtype="float32"))
    return keras.Sequential(layers, name=name)


def bn_conv(spec: BNConv, activation: str, regularizer, seed: int, init: str, policy: keras.DTypePolicy) -> list:
    """Keras's own Conv2D (no bias), BatchNormalization, activation and, if asked, 2x2 max pooling.

    The kernel starts as `init` says, seeded like every other layer (Keras's
    default would draw other weights every run); batch normalisation
    rescales whatever it starts as.
    """
    n_out = conv_fan_out(spec.filters, spec.kernel_size, spec.pool_size)
    kernel_init, _ = initializers(init, n_out, seed)  # no bias: batch normalisation's shift replaces it
    layers = [keras.layers.Conv2D(spec.filters, spec.kernel_size, padding=spec.padding, use_bias=False,
                                  kernel_initializer=kernel_init, kernel_regularizer=regularizer, dtype=policy),
              keras.layers.BatchNormalization(dtype=policy), keras.layers.Activation(activation, dtype=policy)]
    return layers + ([keras.layers.MaxPooling2D(spec.pool_size, dtype=policy)] if spec.pool_size > 1 else [])


def load_model(path) -> keras.Model:
    """A saved .keras network (this module imports ConvPool, which registers it for loading)."""
    return keras.saving.load_model(path, compile=False)
