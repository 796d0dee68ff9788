"""The run as one table: the steps that prepare and report, and the progression of SEED.md between them.

A new stage is one more row; what a node needs is read off its row.
"""
from dataclasses import dataclass, field, fields

from mnist_cnn_progression.inference.contract import ENSEMBLE_REFERENCE_ACCURACY
from mnist_cnn_progression.models import BNConv, Conv, Dense, Network

# A Stage field marked so is wiring, not recipe: left out of its fingerprint (Stage.recipe), so changing it retrains
# nothing. Every other field, a new one too, is in it (and every finished run retrains: tests/test_runner.py holds
# the fingerprints).
WIRING = {"wiring": True}


@dataclass(frozen=True)
class Stage:
    id: str
    network: Network
    data: str            # "train" (50,000 images) or "expanded" (250,000)
    eta: float           # reference learning rate (plain SGD, batch 10)
    lmbda: float         # reference L2 parameter
    epochs: int          # reference epochs
    reference: float     # reference test accuracy, a fraction
    members: int = 1     # >1: a voting ensemble of this recipe
    optional: bool = False  # side results: run only when named
    # a stage whose network, when trained with this exact recipe, is member 0 (trained once, counted there)
    member_zero_from: str = field(default="", metadata=WIRING)
    # its bundle is the run's bundle/, which mnist-predict and mnist-serve load
    run_bundle: bool = field(default=False, metadata=WIRING)

    def recipe(self) -> str:
        """The row's part of the stage's fingerprint (pipeline.recipe): every field but the wiring.

        Written as the dataclass's repr wrote these fields, which was the
        fingerprint before this method: run directories made then are not retrained.
        """
        recipe = ", ".join(f"{each.name}={getattr(self, each.name)!r}" for each in fields(self)
                           if not each.metadata.get("wiring"))
        return f"Stage({recipe})"

    @property
    def needs(self) -> tuple[str, ...]:
        """The nodes that must be done first: its data's step, and the stage that may give it member 0."""
        return ("expand" if self.data == "expanded" else "download",) + \
            ((self.member_zero_from,) if self.member_zero_from else ())


@dataclass(frozen=True)
class Step:
    """A node that trains nothing: it prepares the data or reports on the run."""
    id: str
    needs: tuple[str, ...] = ()


SIGMOID_CONV2 = (Conv(20), Conv(40), Dense(100))
RELU_CONV2 = Network(SIGMOID_CONV2, "relu")
RELU_EXTRA_FC = Network((Conv(20), Conv(40), Dense(100), Dense(100)), "relu")
DROPOUT_NET = Network((Conv(20), Conv(40), Dense(1000), Dense(1000)), "relu", dropout=0.5)
# Beyond the seed: An et al. 2020's batch-normalised convolutions, with rotation and translation augmentation
# from the preset, scaled down for this 2-core CPU: narrower, and pooled after each convolution (theirs never
# pool), 6.1M MACs an image against their ~150M, so that three networks train in about half an hour.
BEYOND_NET = Network((BNConv(32, 5, "valid", pool_size=2), BNConv(64, pool_size=2), BNConv(128, pool_size=2),
                      Dense(256)), "relu", dropout=0.25)

STAGES = [
    Stage("baseline", Network((Dense(100),)), "train", 0.1, 0.0, 60, 0.9780),
    Stage("conv1", Network((Conv(20), Dense(100))), "train", 0.1, 0.0, 60, 0.9878),
    Stage("conv2", Network(SIGMOID_CONV2), "train", 0.1, 0.0, 60, 0.9906),
    Stage("conv2_relu", RELU_CONV2, "train", 0.03, 0.1, 60, 0.9923),
    Stage("expanded", RELU_CONV2, "expanded", 0.03, 0.1, 60, 0.9937),
    Stage("extra_fc", RELU_EXTRA_FC, "expanded", 0.03, 0.1, 60, 0.9943),
    Stage("dropout", DROPOUT_NET, "expanded", 0.03, 0.0, 40, 0.9960),
    Stage("ensemble", DROPOUT_NET, "expanded", 0.03, 0.0, 40, ENSEMBLE_REFERENCE_ACCURACY, members=5, member_zero_from="dropout",
          run_bundle=True),
    # Side results of SEED.md, run only when named in --stages.
    Stage("expanded_fc300", Network((Conv(20), Conv(40), Dense(300)), "relu"), "expanded", 0.03, 0.1, 60,
          0.9946, optional=True),
    Stage("expanded_fc1000", Network((Conv(20), Conv(40), Dense(1000)), "relu"), "expanded", 0.03, 0.1, 60,
          0.9943, optional=True),
    Stage("extra_fc300", Network((Conv(20), Conv(40), Dense(100), Dense(300)), "relu"), "expanded", 0.03, 0.1, 60,
          0.9948, optional=True),
    Stage("extra_fc1000", Network((Conv(20), Conv(40), Dense(100), Dense(1000)), "relu"), "expanded", 0.03, 0.1, 60,
          0.9947, optional=True),
    Stage("conv2_relu_l2pool", Network((Conv(20, pooling="l2"), Conv(40, pooling="l2"), Dense(100)), "relu"),
          "train", 0.03, 0.1, 60, 0.9923, optional=True),
    # Beyond SEED.md, run only when named: a vote of three, meant to beat the seed's best, the ensemble's 99.67%.
    Stage("beyond", BEYOND_NET, "train", 0.03, 0.0, 30, 0.9967, members=3, optional=True),
]
STAGE_BY_ID = {stage.id: stage for stage in STAGES}
STEPS = [Step("download"), Step("expand", ("download",)), Step("report")]
# Every node in the order a run takes them: the data first, the report last.
NODES = STEPS[:2] + STAGES + STEPS[2:]
NODE_BY_ID = {node.id: node for node in NODES}
# The stages beyond SEED.md, each with the published result it scales down: (test accuracy, who and how).
BEYOND_SEED = {"beyond": (0.9987, "An et al. 2020, 'An Ensemble of Simple Convolutional Neural Network Models for "
                                  "MNIST Digit Recognition', a vote of three networks of about 25 times these "
                                  "multiply-accumulates, each trained for 150 epochs on a GPU and kept at its best "
                                  "epoch on the test set")}
