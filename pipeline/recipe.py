"""A stage's recipe: the run's settings resolved for each of its networks, and the fingerprint they make.

The fingerprint decides whether a finished stage is redone: it covers the
stage's row (Stage.recipe), every network's settings, the data and the
training limit; a setting added later enters it only when it differs from
what came before (chain_epochs when set, precision when not float32,
float32_last_epochs when set), so that the run directories made before it
are not retrained.
No TensorFlow here: the runner plans with it before any stage trains.
"""
from dataclasses import dataclass

from mnist_cnn_progression.pipeline import config, expand
from mnist_cnn_progression.pipeline.config import TrainSettings, as_record
from mnist_cnn_progression.pipeline.precision import Precision
from mnist_cnn_progression.pipeline.rundir import fingerprint
from mnist_cnn_progression.pipeline.stages import Stage

# Member k of a voting stage trains with seed + k x this: runs with base seeds 0, 1, 2 share no network.
MEMBER_SEED_STRIDE = 1000
# What training an image costs whatever the network (input pipeline, optimizer, small kernels), in
# multiply-accumulates' worth of time: the fc100 baseline (79k MACs) trains 4x, not 40x, faster per
# image than the stage-6 network (3.2M MACs) on this CPU (58 s for 1.5M images against 250 s).
PER_IMAGE_OVERHEAD = 1_000_000


@dataclass(frozen=True)
class Recipe:
    """What a stage trains, resolved for this run: its networks' settings and what else its fingerprint covers."""
    stage: Stage
    settings: tuple[TrainSettings, ...]  # member k's at [k]; one for a single network
    epoch_images: int                    # the images one epoch of each network trains on
    set_images: int                      # the images of its training set (the first epoch_images are used)
    chain_epochs: int                    # epochs each member after the first trains on from the one before (0: none)
    train_limit: int
    data: str                            # the prepared data's digest
    expanded: str | None                 # the expand step's fingerprint, for a stage on the expanded set
    precision: Precision                 # the policy its networks train under (in their settings), and why

    def fingerprint(self) -> str:
        recipe = {"stage": self.stage.recipe(), "settings": [as_record(s) for s in self.settings],
                  "data": self.data, "expanded": self.expanded, "train_limit": self.train_limit}
        if self.chain_epochs:  # only then: the fingerprints of every other stage stay what they were
            recipe["chain_epochs"] = self.chain_epochs
        return fingerprint(recipe)

    def images_seen(self, first_member: int = 0) -> int:
        """Training images the networks from `first_member` on see, counted once per network and epoch."""
        return self.epoch_images * sum(settings.epochs for settings in self.settings[first_member:])

    def training_macs(self, first_member: int = 0) -> int:
        """What training those networks costs, in multiply-accumulates (the network's + a fixed cost per image)."""
        return self.images_seen(first_member) * (self.stage.network.multiply_accumulates() + PER_IMAGE_OVERHEAD)

    def trains_on(self) -> str:
        """What one epoch trains on, as the log says it."""
        if self.epoch_images < self.set_images:
            return (f"the first {self.epoch_images:,} of {self.set_images:,} {self.stage.data} images "
                    f"(train_limit {self.train_limit})")
        return f"{self.set_images:,} {self.stage.data} images"


def resolve(stage: Stage, settings: dict, data_info: dict, expanded: str | None, precision: Precision) -> Recipe:
    """The stage's recipe from the run's settings (config), what the data steps recorded and its precision."""
    value = lambda key: config.for_stage(settings, key, stage.id)
    count = data_info["train"] * (len(expand.SHIFTS) if stage.data == "expanded" else 1)
    epoch_images = min(count, settings["train_limit"] or count)
    chain = int(value("chain_epochs")) if stage.members > 1 else 0
    return Recipe(stage=stage, settings=tuple(member_settings(stage, value, k, epoch_images, chain, precision)
                                              for k in range(stage.members)),
                  epoch_images=epoch_images, set_images=count, chain_epochs=chain, train_limit=settings["train_limit"],
                  data=data_info["digest"], expanded=expanded if stage.data == "expanded" else None,
                  precision=precision)


def member_settings(stage: Stage, value, member: int, epoch_images: int, chain: int,
                    precision: Precision) -> TrainSettings:
    """One network's settings; member k of a voting stage is seeded MEMBER_SEED_STRIDE x k apart.

    A chained member (k > 0, chain_epochs) trains chain_epochs epochs on from
    the one before it; min_steps raises the epochs of a network whose epochs
    are few batches.
    """
    reference = lambda key, own: own if value(key) == "reference" else value(key)
    steps_per_epoch = epoch_images // int(value("batch_size"))
    asked = chain if member and chain else reference("epochs", stage.epochs)
    epochs = max(int(asked), -(-int(value("min_steps")) // max(steps_per_epoch, 1)))
    return TrainSettings(
        epochs=epochs, batch_size=int(value("batch_size")),
        optimizer=value("optimizer"), learning_rate=float(reference("learning_rate", stage.eta)),
        schedule=value("schedule"), warmup_fraction=float(value("warmup_fraction")), lmbda=stage.lmbda,
        weight_decay=float(value("weight_decay")),
        shuffle=bool(value("shuffle")), max_shift=int(value("max_shift")),
        max_rotation=float(value("max_rotation")), max_zoom=float(value("max_zoom")),
        shift_only_last_epochs=int(value("shift_only_last_epochs")),
        steps_per_call=int(value("steps_per_call")), seed=int(value("seed")) + MEMBER_SEED_STRIDE * member,
        init=value("init"), precision=precision.policy, float32_last_epochs=precision.float32_last_epochs)
