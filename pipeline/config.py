"""Presets: small, plain dicts of settings, each overridable with --set key=value; and one network's settings.

A value is either one setting for every stage, or a dict keyed by stage id
with a "default". "reference" means the stage's own figure in SEED.md.
The runner resolves them, per stage and member, into a TrainSettings.
"""
import copy
import dataclasses
import json
from dataclasses import dataclass

from mnist_cnn_progression.inference.contract import SCORING_BATCH
from mnist_cnn_progression.pipeline import precision
from mnist_cnn_progression.pipeline.errors import PipelineError, did_you_mean
from mnist_cnn_progression.pipeline.stages import STAGE_BY_ID, STAGES

RELU_STAGES = [stage.id for stage in STAGES if stage.network.activation == "relu"]


def on_relu_stages(value, otherwise):
    """A per-stage setting: `value` for the ReLU networks, `otherwise` for the sigmoid ones."""
    return {"default": otherwise, **dict.fromkeys(RELU_STAGES, value)}


PRESETS = {
    # The exact reference hyperparameters: plain SGD, batch 10, SEED.md's rates and epochs, no reshuffling.
    "seed": {
        "batch_size": 10, "optimizer": "sgd", "learning_rate": "reference", "schedule": "constant",
        "warmup_fraction": 0.0, "epochs": "reference", "shuffle": False, "max_shift": 0,
        "max_rotation": 0.0, "max_zoom": 0.0, "shift_only_last_epochs": 0, "init": "reference", "weight_decay": 0.0,
        "chain_epochs": 0, "steps_per_call": 100, "train_limit": 0, "min_steps": 0, "seed": 0,
        "strategy": "auto", "parallel_members": "auto", "precision": "float32", "float32_last_epochs": 0,
    },
    # The same networks and data, trained the modern way: Adam, warm-up + cosine, reshuffling, larger
    # batches, random 1-pixel shifts on the fly, and far fewer epochs (the dropout network sees 1.5 million
    # images, the reference's 10 million); the ReLU networks start from He weights and also see random
    # turns (up to 10 degrees) and zooms (up to 10%); the stage-6 networks' weights decay (AdamW), their
    # last epoch is shifts only (no turns or zooms), and each ensemble member after the first (member 0 is
    # the dropout network) trains 2 epochs on from the one before it: 3.5 million stage-6 images in all.
    # Mixed precision where the chip has it (pipeline.precision), but for the stage-6 networks: under
    # mixed_bfloat16 the dropout network lost 0.03-0.06 pp over three seeds and the vote 0.03-0.10 pp (mean
    # 99.63%, under the reference; docs/recipes.md#mixed-precision): they train in float32 until a recipe
    # keeps their figures in bfloat16.
    "fast": {
        "batch_size": {"default": 128, "conv1": 64}, "optimizer": "adam", "learning_rate": 0.002,
        "schedule": "warmup_cosine", "warmup_fraction": 0.03,
        "epochs": {"default": 15, "baseline": 30, "expanded": 3, "extra_fc": 5, "dropout": 6, "ensemble": 6,
                   "beyond": 35},
        "shuffle": True, "max_shift": {"default": 1, "beyond": 2},
        "max_rotation": on_relu_stages(10.0, otherwise=0.0), "max_zoom": on_relu_stages(0.1, otherwise=0.0),
        "shift_only_last_epochs": {"default": 0, "dropout": 1, "ensemble": 1},
        "init": on_relu_stages("he", otherwise="reference"),
        "weight_decay": {"default": 0.0, "dropout": 0.05, "ensemble": 0.05},
        "chain_epochs": {"default": 0, "ensemble": 2},
        # On a small training set (the 5,000-digit sample) epochs are raised to give every network at least
        # this many updates: the sigmoid networks sit at chance for their first ~650 (full MNIST gives 5,000+).
        "steps_per_call": 50, "train_limit": 0, "min_steps": 2000, "seed": 0, "strategy": "auto",
        "parallel_members": "auto", "precision": {"default": "auto", "dropout": "float32", "ensemble": "float32"},
        "float32_last_epochs": 0,
    },
    # Every stage end to end in minutes: a smoke test and demo, not an accuracy run, in float32 so that it
    # runs alike on every machine. (Sigmoid nets sit on a plateau for their first few hundred steps: ~470
    # steps get past it.)
    "quick": {
        "batch_size": 128, "optimizer": "adam", "learning_rate": 0.002, "schedule": "warmup_cosine",
        "warmup_fraction": 0.03, "epochs": 3, "shuffle": True, "max_shift": 0, "max_rotation": 0.0, "max_zoom": 0.0,
        "shift_only_last_epochs": 0, "init": "reference", "weight_decay": 0.0,
        "chain_epochs": {"default": 0, "ensemble": 1}, "steps_per_call": 50,
        "train_limit": 20000, "min_steps": 0, "seed": 0, "strategy": "auto", "parallel_members": "auto",
        "precision": "float32", "float32_last_epochs": 0,
    },
}
CHOICES = {"optimizer": ("sgd", "adam"), "schedule": ("constant", "warmup_cosine"), "init": ("reference", "he"),
           "precision": precision.CHOICES}
COUNTS = ("chain_epochs", "float32_last_epochs")  # whole numbers of 0 or more


def parse_value(text: str, current):
    """--set values are typed by the preset value they replace."""
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise PipelineError(f"expected true or false, not {text!r}")
        return text.lower() in ("true", "1", "yes")
    for kind in (int, float):
        if isinstance(current, kind):
            try:
                return kind(text)
            except ValueError:
                raise PipelineError(f"expected a {kind.__name__}, not {text!r}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def resolve(preset: str, overrides: list[str]) -> dict:
    """The preset named, with each 'key=value' or 'key.stage=value' override applied."""
    if preset not in PRESETS:
        raise PipelineError(f"Unknown preset {preset!r}: choose one of {', '.join(PRESETS)}."
                            + did_you_mean([preset], PRESETS))
    settings = copy.deepcopy(PRESETS[preset])
    for item in overrides:
        key, sep, text = item.partition("=")
        name, _, stage = key.strip().partition(".")
        if not sep or name not in settings:
            raise PipelineError(f"--set {item!r}: expected key=value with key one of {', '.join(settings)}."
                                + did_you_mean([name], settings))
        current = settings[name]
        if stage and stage not in STAGE_BY_ID:
            raise PipelineError(f"--set {item!r}: there is no stage {stage!r}; stages are {', '.join(STAGE_BY_ID)}."
                                + did_you_mean([stage], STAGE_BY_ID))
        if stage:
            table = current if isinstance(current, dict) else {"default": current}
            example = table.get(stage, table.get("default"))
            table[stage] = parse_value(text, example)
            settings[name] = table
        else:
            example = current.get("default") if isinstance(current, dict) else current
            try:
                settings[name] = parse_value(text, example)
            except PipelineError as error:
                raise PipelineError(f"--set {item!r}: {error}.") from None
        allowed = CHOICES.get(name)
        values = settings[name].values() if isinstance(settings[name], dict) else [settings[name]]
        wrong = [value for value in values if allowed and value not in allowed]
        if wrong:
            raise PipelineError(f"--set {item!r}: {name} is one of {', '.join(allowed)}."
                                + did_you_mean(wrong, allowed))
        if name in COUNTS and any(not isinstance(value, int) or value < 0 for value in values):
            raise PipelineError(f"--set {item!r}: {name} is a whole number of 0 or more.")
    return settings


def for_stage(settings: dict, key: str, stage_id: str):
    """One setting's value for one stage."""
    value = settings[key]
    if isinstance(value, dict):
        return value.get(stage_id, value.get("default"))
    return value


@dataclass(frozen=True)
class TrainSettings:
    """One network's training recipe, as the runner resolves it from the settings for a stage and member."""
    epochs: int
    batch_size: int            # global
    optimizer: str             # "sgd" or "adam"
    learning_rate: float
    schedule: str = "constant"  # or "warmup_cosine"
    warmup_fraction: float = 0.0
    lmbda: float = 0.0         # reference L2 parameter
    weight_decay: float = 0.0  # decoupled weight decay (Adam with it is AdamW): weights shrink by lr x this a step
    shuffle: bool = False      # reshuffle every epoch (the reference does not)
    max_shift: int = 0         # random whole-pixel shifts per image per epoch
    max_rotation: float = 0.0  # random turns, in degrees either way
    max_zoom: float = 0.0      # random scaling by 1 +- this
    shift_only_last_epochs: int = 0  # the last epochs see shifts only: no turns or zooms
    steps_per_call: int = 100
    seed: int = 0
    init: str = "reference"    # starting weights (models.layers.initializers)
    eval_batch_size: int = SCORING_BATCH
    precision: str = "float32"  # the dtype policy the network trains under (pipeline.precision.POLICIES)
    float32_last_epochs: int = 0  # under a mixed policy, the last epochs train in float32 (0 under float32)


def as_record(settings: TrainSettings) -> dict:
    """The settings as summary.json and the stage fingerprints record them.

    precision only when it is not float32, float32_last_epochs only when set:
    they came later, and the records of the runs before them (and so their
    fingerprints) stay as they were.
    """
    record = dataclasses.asdict(settings)
    if record["precision"] == "float32":
        del record["precision"]
    if not record["float32_last_epochs"]:
        del record["float32_last_epochs"]
    return record
