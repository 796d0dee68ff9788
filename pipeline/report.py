"""The run report: <run>/report/report.md with PNGs beside it, and a self-contained report.html.

It reads only the files of a finished run (summary.json, histories, test data,
probabilities, one model's first-layer weights), so regenerating it takes
seconds, trains nothing and leaves models and metrics untouched. The report
directory is built in a temporary directory and renamed into place, so it is
complete or absent.
"""
import base64
import datetime
import html
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mnist_cnn_progression.inference import run_layout as layout
from mnist_cnn_progression.inference.run_layout import RunLayout
from mnist_cnn_progression.inference.vote import vote
from mnist_cnn_progression.models import Conv
from mnist_cnn_progression.pipeline.evaluate import NUM_CLASSES, evaluate
from mnist_cnn_progression.pipeline.precision import Precision
from mnist_cnn_progression.inference.files import staged_directory
from mnist_cnn_progression.pipeline.stages import BEYOND_SEED, STAGE_BY_ID, STAGES

REFERENCE_PRESETS = ("seed",)     # the preset with the reference hyperparameters
FILTER_STAGES = ("conv2_relu", "dropout")  # preferred sources of the first-layer filters
GALLERY_LIMIT = 100                      # digits drawn; gallery.json lists every error
STAGE_HEADER = ("Stage", "Network", "Data", "Epochs", "Best epoch", "Validation %", "Test %",
                "Reference %", "Difference (pp)", "Wall time")
CSS = """body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;padding:.3em .6em;text-align:right}
th{background:#eee}:is(td,th):is(:first-child,:nth-child(2)){text-align:left}
.banner{background:#fff3cd;border:2px solid #e0a800;padding:1em;font-size:1.1em;margin:1em 0}
.note{color:#555}img{max-width:100%}figure{margin:1em 0}figcaption{color:#555}"""


def write_report(run_dir: Path) -> dict:
    """Write <run_dir>/report/ (replacing an old one) and say what it holds and what it skipped."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    with staged_directory(RunLayout(run_dir).report) as tmp:
        report = _Report(run_dir, summary, tmp)
        report.build()
        (tmp / "report.md").write_text(to_markdown(report.blocks))
        (tmp / "report.html").write_text(to_html(report.blocks, tmp))
    return {"report": str(RunLayout(run_dir).report), **report.info}


def load_summary(run_dir: Path) -> dict:
    return json.loads(RunLayout(Path(run_dir)).summary.read_text())


def stage_order(ids) -> list:
    """The progression's order; stages the table does not know come last, as given."""
    rank = {stage.id: i for i, stage in enumerate(STAGES)}
    return sorted(ids, key=lambda stage_id: rank.get(stage_id, len(rank)))


def percent(fraction) -> str:
    return "–" if fraction is None else f"{100 * fraction:.2f}"


def duration(seconds) -> str:
    return "–" if seconds is None else str(datetime.timedelta(seconds=round(seconds)))


def points(accuracy, baseline) -> str:
    """accuracy - baseline in signed percentage points."""
    return "–" if None in (accuracy, baseline) else f"{(accuracy - baseline) * 100:+.2f}"


def stage_row(stage_id: str, stage: dict) -> tuple:
    """One row of STAGE_HEADER from a summary.json stage entry."""
    test, reference = stage.get("test_accuracy"), stage.get("reference_accuracy")
    best = ", ".join(cell(m.get("best_epoch")) for m in stage["members"]) if stage.get("members") else \
        cell(stage.get("best_epoch"))
    chained = f", then {stage['chain_epochs']} a member" if stage.get("chain_epochs") else ""
    return (stage_id, stage.get("network", "–"), data_cell(stage), cell(stage.get("epochs")) + chained, best,
            percent(stage.get("val_accuracy")), percent(test), percent(reference), points(test, reference),
            duration(stage.get("wall_seconds")))


def data_cell(stage: dict) -> str:
    """The Data cell: the stage's training set, and the share of it one epoch trained on when train_limit cut it."""
    data, used, count = stage.get("data", "–"), stage.get("images_per_epoch"), stage.get("training_set_images")
    if used is None or count is None:  # an entry from before the summary kept them
        return data
    return f"{data}, first {thousands(used)} of {thousands(count)}" if used < count else f"{data}, {thousands(count)}"


def thousands(value) -> str:
    return "–" if value is None else f"{value:,.0f}"


def cell(value) -> str:
    """A table cell; a dash for a value the summary does not have."""
    return "–" if value is None else str(value)


class _Report:
    """Collects the report as blocks (heading, text, table, image) that both renderers draw."""

    def __init__(self, run_dir: Path, summary: dict, out: Path):
        self.run_dir, self.summary, self.out = run_dir, summary, out
        self.layout = RunLayout(run_dir)
        self.stages = summary.get("stages", {})
        self.done = [i for i in stage_order(self.stages) if self.stages[i].get("status") == "done"]
        self.warned = [i for i in self.done if self.stages[i].get("warning")]
        self.beyond = [i for i in self.done if i in BEYOND_SEED]
        self.blocks = []
        self.info = {"images": [], "filters_stage": None, "gallery_stage": None, "skipped": [], "combined_chart": []}

    def add(self, kind: str, *content):
        self.blocks.append((kind, *content))

    def skip(self, part: str, why: str):
        self.info["skipped"].append(f"{part}: {why}")
        self.add("note", f"{part} skipped: {why}.")

    def figure(self, fig: Figure, name: str, caption: str):
        fig.savefig(self.out / name, dpi=100, bbox_inches="tight")
        self.info["images"].append(name)
        self.add("image", name, caption)

    def build(self):
        self.add("h1", f"MNIST run report: {self.run_dir.name}")
        self.banners()
        self.stage_table()
        self.beyond_seed()
        self.curves()
        self.filters()
        self.errors()
        self.deploy()
        self.environment()

    def banners(self):
        """Each warning once: the data's, the preset's, and one per stage warned of (pipeline.runner.stage_warning)."""
        data, preset = self.summary.get("data", {}), self.summary.get("preset")
        if data.get("warning"):
            self.add("banner", data["warning"])
        if preset not in REFERENCE_PRESETS:
            self.add("banner", f"Preset {preset!r}: the reference networks and data, trained with other "
                               "hyperparameters than the reference (see the settings below).")
        for stage_id in self.warned:
            self.add("banner", f"Stage {stage_id}: {self.stages[stage_id]['warning']}")

    def stage_table(self):
        self.add("h2", "Stages")
        self.add("table", STAGE_HEADER, [stage_row(i, self.stages[i]) for i in self.done if i not in self.beyond])
        expected = {stage.id for stage in STAGES if not stage.optional} | set(self.stages)
        absent = [i + (f" ({self.stages[i].get('status')})" if i in self.stages else "")
                  for i in stage_order(expected) if i not in self.done]
        if absent:
            self.add("note", "Not in this run: " + ", ".join(absent) + ".")
        self.precision_line()
        if "ensemble" in self.done:
            self.member_line("ensemble")

    def precision_line(self):
        """What precision the stages trained in, and why (runs before the setting have none: float32)."""
        trained_in = {}
        for stage_id in self.done:
            chosen = self.stages[stage_id].get("precision")
            if chosen:
                trained_in.setdefault(Precision(**chosen).describe(), []).append(stage_id)
        if trained_in:
            self.add("p", "Precision: " + "; ".join(f"{', '.join(ids)} in {how}" for how, ids in trained_in.items())
                     + ". Evaluation and export are float32 whatever the training precision.")

    def member_line(self, stage_id: str):
        members = self.stages[stage_id].get("members")
        if members:
            self.add("p", f"{stage_id.capitalize()} members (seed: validation % / test %): " + ", ".join(
                f"{m.get('seed')}: {percent(m.get('val_accuracy'))} / {percent(m.get('test_accuracy'))}"
                for m in members) + ".")

    def beyond_seed(self):
        """Stages that are not in SEED.md, apart from the progression: what they are, reach and cost."""
        if not self.beyond:
            return
        self.add("h2", "Beyond the seed")
        self.add("table", STAGE_HEADER, [stage_row(i, self.stages[i]) for i in self.beyond])
        for stage_id in self.beyond:
            stage, (published, source) = self.stages[stage_id], BEYOND_SEED[stage_id]
            members = stage.get("members") or []
            settings = stage.get("settings", {})
            augmentation = ", ".join(f"{key} {settings[key]:g}" for key in ("max_shift", "max_rotation", "max_zoom")
                                     if settings.get(key)) or "none"
            self.add("p", f"{stage_id} is not part of SEED.md: {len(members)} networks {stage.get('network')} and "
                          f"their majority vote, trained on {stage.get('data')} data with augmentation on the fly "
                          f"({augmentation}). Its reference is the seed's best figure "
                          f"({percent(stage.get('reference_accuracy'))} %), which it is meant to beat. The "
                          f"published figure is {percent(published)} %: {source}. Cost: "
                          f"{duration(stage.get('wall_seconds'))} on this machine for "
                          f"{thousands(stage.get('trained_images'))} training images, "
                          f"{thousands(stage.get('train_images_per_second'))} images/s per network.")
            self.member_line(stage_id)
            if members:
                self.figure(self.vote_figure(stage_id, published), f"vote_{stage_id}.png",
                            f"{stage_id}: test accuracy of each network and of their vote, against the seed's best "
                            "and the published figure")

    def vote_figure(self, stage_id: str, published: float) -> Figure:
        """Each network's test accuracy and the vote's as labelled points (a bar on a cut axis would mislead)."""
        stage = self.stages[stage_id]
        points = {f"network {k}": m["test_accuracy"] for k, m in enumerate(stage["members"])}
        points["vote"] = stage["test_accuracy"]
        lines = {"the seed's best (reference)": stage.get("reference_accuracy"), "published": published}
        if "ensemble" in self.done:
            lines["this run's ensemble"] = self.stages["ensemble"].get("test_accuracy")
        fig = Figure(figsize=(7, 3.5))
        ax = fig.subplots()
        for x, (label, value) in enumerate(points.items()):
            ax.plot(x, 100 * value, "o", color="#167" if label == "vote" else "#7aa", markersize=9)
            ax.annotate(percent(value), (x, 100 * value), textcoords="offset points", xytext=(0, 8), ha="center")
        for (label, value), style in zip(lines.items(), ("--", ":", "-.")):
            if value is not None:
                ax.axhline(100 * value, color="grey", linestyle=style, label=f"{label} {percent(value)} %")
        shown = [100 * v for v in [*points.values(), *lines.values()] if v is not None]
        ax.set_ylim(min(shown) - 0.15, max(shown) + 0.15)
        ax.set_xlim(-0.5, len(points) - 0.5)
        ax.set_xticks(range(len(points)), list(points))
        ax.set(ylabel="test accuracy (%)", title=f"{stage_id} (beyond the seed): its networks and their vote")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="small", loc="best")
        return fig

    def histories(self, stage_id: str) -> list:
        """(label, history) pairs: the stage's own, or one per member of a voting stage."""
        folder = self.layout.stage(stage_id)
        if self.stages[stage_id].get("members"):
            members = {int(p.stem.rsplit("_", 1)[1]): p for p in folder.glob("history_member_*.csv")}
            paths = {f"member {k}": members[k] for k in sorted(members)}
        else:
            paths = {stage_id: folder / layout.HISTORY}
        return [(label, np.atleast_1d(np.genfromtxt(path, delimiter=",", names=True)))
                for label, path in paths.items() if path.exists()]

    def curves(self):
        self.add("h2", "Learning curves")
        histories = {}
        for stage_id in self.done:
            histories[stage_id] = self.histories(stage_id)
            if not histories[stage_id]:
                self.skip(f"Curves of {stage_id}", "no history file")
        singles = {i: runs[0][1] for i, runs in histories.items() if runs and not self.stages[i].get("members")}
        left_out = [i for i in singles if i in self.warned]
        if left_out:
            self.add("note", f"Left out of the combined chart, which they would squash: {', '.join(left_out)} "
                             "(see the warning above and their own curves).")
            singles = {i: history for i, history in singles.items() if i not in left_out}
        self.info["combined_chart"] = list(singles)
        if singles:
            fig = Figure(figsize=(9, 5))
            ax = fig.subplots()
            for stage_id, history in singles.items():
                ax.plot(history["epoch"], 100 * history["val_accuracy"], label=stage_id)
            ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy of every stage")
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend()
            # Early epochs of weak stages would squash the top: show from 2 pp below the weakest best.
            weakest = min(100 * history["val_accuracy"].max() for history in singles.values())
            ax.set_ylim(bottom=max(ax.get_ylim()[0], weakest - 2))
            self.figure(fig, "val_accuracy.png", "Validation accuracy per epoch, all stages")
        for stage_id, runs in histories.items():
            if runs:
                self.figure(self.stage_curves(stage_id, runs), f"curves_{stage_id}.png",
                            f"{stage_id}: training loss and validation accuracy per epoch")

    def stage_curves(self, stage_id: str, runs: list) -> Figure:
        fig = Figure(figsize=(9, 3.2))
        loss, accuracy = fig.subplots(1, 2)
        for label, history in runs:
            loss.plot(history["epoch"], history["loss"], label=label)
            accuracy.plot(history["epoch"], 100 * history["val_accuracy"], label=label)
        best = self.stages[stage_id].get("best_epoch")
        if len(runs) == 1 and best:
            accuracy.axvline(best, color="grey", linestyle=":", label=f"best epoch {best}")
        loss.set(xlabel="epoch", ylabel="training loss", title=f"{stage_id}: training loss")
        accuracy.set(xlabel="epoch", ylabel="validation accuracy (%)", title=f"{stage_id}: validation accuracy")
        for ax in (loss, accuracy):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        accuracy.legend(fontsize="small")
        return fig

    def filters(self):
        self.add("h2", "First-layer filters")
        found = self.first_layer_kernel()
        if found is None:
            self.skip("Filters", "no finished stage with a convolutional layer has a model.keras")
            return
        stage_id, kernel = found
        self.info["filters_stage"] = stage_id
        filters = kernel[:, :, 0, :]  # [5, 5, filters]: the first layer sees one input channel
        limit = np.abs(filters).max()
        fig, ax, _ = _tile_figure(np.moveaxis(filters, -1, 0), 10, 1, cmap="binary", vmin=-limit, vmax=limit)
        ax.set_title(f"{stage_id}: the {filters.shape[-1]} first-layer filters "
                     f"({filters.shape[0]}x{filters.shape[1]}, dark = positive weight)")
        self.figure(fig, "filters.png", f"First convolutional layer of {stage_id}, one shared grey scale")

    def first_layer_kernel(self):
        """(stage id, kernel [k, k, 1, filters]) of the first ConvPool of the preferred stage's model."""
        convolutional = [i for i in self.done if i in STAGE_BY_ID
                         and any(isinstance(layer, Conv) for layer in STAGE_BY_ID[i].network.hidden)]
        for stage_id in [i for i in FILTER_STAGES if i in convolutional] + convolutional:
            path = self.layout.stage(stage_id) / layout.MODEL
            if path.exists():
                from mnist_cnn_progression.models.layers import ConvPool
                from mnist_cnn_progression.models.networks import load_model
                model = load_model(path)
                conv = next((layer for layer in model.layers if isinstance(layer, ConvPool)), None)
                if conv is not None:
                    return stage_id, conv.kernel.numpy()
        return None

    def final_predictions(self):
        """(stage id, predicted classes) of the ensemble's vote, else of the last stage with test predictions."""
        for stage_id in (["ensemble"] if "ensemble" in self.done else []) + self.done[::-1]:
            folder = self.layout.stage(stage_id)
            if (folder / layout.MEMBER_PROBABILITIES).exists():
                return stage_id, vote(np.load(folder / layout.MEMBER_PROBABILITIES))[0]
            if (folder / layout.TEST_PROBABILITIES).exists():
                return stage_id, np.load(folder / layout.TEST_PROBABILITIES).argmax(axis=-1)
        return None

    def errors(self):
        self.add("h2", "Misclassified test digits")
        data = self.layout.data
        found = self.final_predictions()
        if found is None or not (data / layout.split_file("test_labels")).exists():
            self.skip("Gallery and confusion matrix", "no test labels or test predictions in this run")
            return
        stage_id, predicted = found
        if stage_id != "ensemble":
            self.add("note", f"No ensemble vote in this run: these are the errors of {stage_id}.")
        labels, images = (np.load(data / layout.split_file(name)) for name in ("test_labels", "test_images"))
        result = evaluate(None, labels, self.stages[stage_id].get("reference_accuracy", 0.0), predictions=predicted)
        wrong = result["misclassified"]
        shown = wrong[:GALLERY_LIMIT]
        self.info.update(gallery_stage=stage_id, misclassified=len(wrong))
        (self.out / "gallery.json").write_text(json.dumps({
            "stage": stage_id, "misclassified": wrong, "shown": shown,
            "true": labels[shown].tolist(), "predicted": predicted[shown].tolist()}))
        self.add("p", f"{stage_id} gets {len(wrong)} of {len(labels)} test digits wrong "
                      f"(accuracy {percent(result['accuracy'])} %)."
                 + (f" The first {len(shown)} are drawn." if len(shown) < len(wrong) else ""))
        if shown:
            fig, ax, captions = _tile_figure(images[shown], 10, 16, cmap="binary")
            for index, (x, y) in zip(shown, captions):
                ax.text(x, y, f"#{index}\n{labels[index]} → {predicted[index]}", ha="center", va="center", fontsize=8)
            self.figure(fig, "misclassified.png", "Test index, then true → predicted label")
        self.figure(_confusion_figure(np.array(result["confusion_matrix"]), stage_id), "confusion.png",
                    f"Confusion matrix of {stage_id} (rows: true digit, columns: predicted)")
        self.add("table", ("Digit", *map(str, range(NUM_CLASSES))),
                 [(name.capitalize() + " %", *map(percent, values)) for name, values in result["per_class"].items()])

    def environment(self):
        self.add("h2", "Environment")
        data = self.summary.get("data", {})
        rows = [("preset", self.summary.get("preset")), ("seed", self.summary.get("seed")),
                *self.summary.get("environment", {}).items(),
                *((f"data {key}", value) for key, value in data.items() if key != "warning")]
        self.add("table", ("Item", "Value"), [(key, cell(value)) for key, value in rows])
        settings = self.summary.get("settings")
        if settings:
            self.add("h2", "Settings")
            self.add("table", ("Setting", "Value"), [(key, setting_cell(value)) for key, value in settings.items()])

    def deploy(self):
        self.add("h2", "Deploy")
        bundle = self.stages.get("ensemble", {}).get("bundle") if "ensemble" in self.done else None
        if bundle:
            self.add("p", f"The bundle in {self.layout.bundle} is the five networks and their vote as ONNX "
                          f"graphs, for ONNX Runtime alone (no TensorFlow): {bundle_accuracy(bundle)}. Classify "
                          "pictures with it, or serve it over the Open Inference Protocol:")
            self.add("code", f"mnist-predict --models {self.run_dir} digit.png scans/\n"
                             f"mnist-serve --models {self.run_dir}")
        else:
            self.skip("Deploy", "no finished ensemble stage, so no bundle")
        for stage_id in self.beyond:
            bundle, folder = self.stages[stage_id].get("bundle"), self.layout.stage(stage_id) / layout.BUNDLE
            if bundle:
                self.add("p", f"Beyond the seed, {stage_id}'s bundle in {folder} holds its "
                              f"{len(bundle.get('members', []))} networks and their vote: {bundle_accuracy(bundle)}.")
                self.add("code", f"mnist-predict --models {folder} digit.png\nmnist-serve --models {folder}")


def bundle_accuracy(bundle: dict) -> str:
    accuracy = bundle.get("test_accuracy", {})
    return (f"test accuracy {percent(accuracy.get('float32'))} % in float32 and {percent(accuracy.get('int8'))} % "
            "in int8")


def setting_cell(value) -> str:
    """A preset value as a person reads it: per-stage values as 'default 15, baseline 30'."""
    if isinstance(value, dict):
        return ", ".join(f"{key} {item}" for key, item in value.items())
    return cell(value)


def _tile_figure(tiles: np.ndarray, columns: int, gap: int, **imshow) -> tuple:
    """(figure, axes, centres of the gaps above the tiles [n, 2]): tiles [n, h, w] as one image.

    One image instead of an axes per tile keeps a 100-digit gallery fast.
    `columns` tiles a row, a `gap` above and left of each; the gaps are NaN,
    which imshow leaves blank, and the gap above a tile takes its caption.
    """
    n, h, w = tiles.shape
    rows = max(1, -(-n // columns))
    cells = np.full((rows * columns, h + gap, w + gap), np.nan)
    cells[:n, gap:, gap:] = tiles
    canvas = cells.reshape(rows, columns, h + gap, w + gap).swapaxes(1, 2).reshape(rows * (h + gap), -1)
    fig = Figure(figsize=(10, 10 * canvas.shape[0] / canvas.shape[1] + 0.4))
    ax = fig.subplots()
    ax.imshow(canvas, interpolation="nearest", **imshow)
    ax.set_axis_off()
    row, column = np.divmod(np.arange(n), columns)
    return fig, ax, np.column_stack([column * (w + gap) + gap + w / 2, row * (h + gap) + gap / 2])


def _confusion_figure(confusion: np.ndarray, stage_id: str) -> Figure:
    """Counts in every cell; the colour shows the errors only, which the diagonal would drown."""
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    errors = confusion * (1 - np.eye(len(confusion), dtype=confusion.dtype))
    image = ax.imshow(errors, cmap="Reds")
    fig.colorbar(image, ax=ax, label="misclassified digits", ticks=MaxNLocator(integer=True))
    for (true, predicted), count in np.ndenumerate(confusion):
        ax.text(predicted, true, str(count), ha="center", va="center", fontsize=7,
                color="white" if errors[true, predicted] > errors.max() / 2 else "black",
                fontweight="bold" if true == predicted else "normal")
    ticks = range(len(confusion))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true", title=f"{stage_id}: confusion matrix")
    return fig


def markdown_table(header, rows) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(c).replace("|", "\\|") for c in line) + " |" for line in lines)


MARKDOWN = {
    "h1": lambda text: f"# {text}", "h2": lambda text: f"## {text}", "p": lambda text: text,
    "note": lambda text: f"*{text}*", "banner": lambda text: f"> **⚠ {text}**",
    "code": lambda text: f"```\n{text}\n```", "table": markdown_table,
    "image": lambda name, caption: f"![{caption}]({name})",
}


def to_markdown(blocks: list) -> str:
    return "\n\n".join(MARKDOWN[kind](*content) for kind, *content in blocks) + "\n"


def html_table(header, rows) -> str:
    esc = html.escape
    cells = "".join(f"<th>{esc(c)}</th>" for c in header)
    return (f"<table><thead><tr>{cells}</tr></thead><tbody>" + "".join(
        "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows) + "</tbody></table>")


def to_html(blocks: list, image_dir: Path) -> str:
    """One file with the images inlined as data: URIs: no other file, no network."""
    esc = html.escape

    def image(name, caption):
        data = base64.b64encode((image_dir / name).read_bytes()).decode("ascii")
        return (f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(caption)}</figcaption></figure>")

    renderers = {
        "h1": lambda text: f"<h1>{esc(text)}</h1>", "h2": lambda text: f"<h2>{esc(text)}</h2>",
        "p": lambda text: f'<p class="p">{esc(text)}</p>', "note": lambda text: f'<p class="note">{esc(text)}</p>',
        "banner": lambda text: f'<div class="banner"><strong>⚠ {esc(text)}</strong></div>',
        "code": lambda text: f"<pre><code>{esc(text)}</code></pre>", "table": html_table, "image": image,
    }
    body = [renderers[kind](*content) for kind, *content in blocks]
    title = next(content[0] for kind, *content in blocks if kind == "h1")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")

