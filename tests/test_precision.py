"""Mixed precision: the setting and its resolution from (faked) hardware, the fingerprint, and training under it.

Every test names the precision it tests, or fakes the hardware `auto` reads:
no result depends on this machine's CPU.
"""
import json
from dataclasses import replace

import numpy as np
import onnx
import pytest

from mnist_cnn_progression.pipeline import config, precision, strategy as strategies
from mnist_cnn_progression.pipeline.errors import PipelineError
from mnist_cnn_progression.pipeline.precision import Hardware, resolve
from mnist_cnn_progression.pipeline.stages import STAGE_BY_ID, STAGES
from tests.test_runner import RECORDED_DATA, RECORDED_FINGERPRINTS, stage_fingerprints
from tests.test_train import quiet, stopped_after_epoch_1_then_resumed

MIXED = ("mixed_bfloat16", "mixed_float16")
AMD_BF16 = Hardware(frozenset({"avx2", "avx512f", "avx512_bf16"}))
INTEL_AMX = Hardware(frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}))
NO_BF16 = Hardware(frozenset({"avx2", "fma", "avx512_vnni"}))


@pytest.mark.parametrize("hardware, policy, why", [
    (AMD_BF16, "mixed_bfloat16", "auto: CPU has avx512_bf16"),
    (INTEL_AMX, "mixed_bfloat16", "auto: CPU has amx_bf16 and avx512_bf16"),
    (NO_BF16, "float32", "auto: CPU has none of amx_bf16, avx512_bf16"),
    (Hardware(), "float32", "auto: CPU has none of amx_bf16, avx512_bf16"),
    (Hardware(NO_BF16.cpu_flags, ((8, 6),)), "mixed_bfloat16", "auto: GPU compute capability 8.6 has bfloat16"),
    (Hardware(AMD_BF16.cpu_flags, ((7, 5),)), "mixed_float16",
     "auto: GPU compute capability 7.5 has float16 tensor cores, not bfloat16"),  # the GPUs train, not the CPU
    (Hardware(AMD_BF16.cpu_flags, ((8, 0), (7, 0))), "mixed_float16",
     "auto: GPU compute capability 7.0 has float16 tensor cores, not bfloat16"),  # the slowest GPU decides
    (Hardware(AMD_BF16.cpu_flags, ((6, 1),)), "float32", "auto: GPU compute capability 6.1 has no tensor cores"),
])
def test_auto_follows_the_hardware(hardware, policy, why):
    assert resolve("auto", hardware) == precision.Precision(policy, why)
    assert resolve("float32", hardware).describe() == "float32 (set)"
    assert resolve("mixed_float16", hardware).policy == "mixed_float16"


def test_the_cpu_flags_come_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16 avx512f\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16 avx512f\n")
    assert precision.cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16", "avx512f"}
    assert resolve("auto", Hardware(precision.cpu_flags(cpuinfo))).policy == "mixed_bfloat16"
    assert precision.cpu_flags(tmp_path / "none") == frozenset()  # no /proc/cpuinfo: no flags, float32


def test_the_setting_has_four_choices_and_each_preset_its_default():
    assert [config.PRESETS[name]["precision"] for name in ("seed", "quick")] == ["float32", "float32"]
    fast = config.resolve("fast", [])  # auto, but the stage-6 networks keep their figures in float32
    assert [config.for_stage(fast, "precision", stage) for stage in ("conv2_relu", "extra_fc", "dropout", "ensemble")] \
        == ["auto", "auto", "float32", "float32"]
    assert config.resolve("seed", ["precision.conv1=mixed_bfloat16"])["precision"] == {
        "default": "float32", "conv1": "mixed_bfloat16"}
    with pytest.raises(PipelineError, match="precision is one of auto, float32, mixed_bfloat16, mixed_float16"):
        config.resolve("fast", ["precision=bfloat16"])


def test_the_precision_enters_the_fingerprint_only_when_it_is_not_float32(tmp_path, monkeypatch):
    data = RECORDED_DATA["full"]
    recorded = {stage.id: RECORDED_FINGERPRINTS[f"full fast {stage.id}"] for stage in STAGES}
    monkeypatch.setattr(precision, "this_machine", lambda: NO_BF16)
    assert stage_fingerprints(tmp_path, "fast", data, ()) == recorded  # auto chose float32: nothing retrains
    monkeypatch.setattr(precision, "this_machine", lambda: AMD_BF16)
    on_bf16 = stage_fingerprints(tmp_path, "fast", data, ())
    every_stage = stage_fingerprints(tmp_path, "fast", data, ("precision=mixed_bfloat16",))
    float32_in_fast = {"dropout", "ensemble"}  # the preset keeps the stage-6 networks in float32
    assert all((on_bf16[stage] == recorded[stage]) == (stage in float32_in_fast) for stage in recorded)
    assert all(on_bf16[stage] == every_stage[stage] for stage in recorded if stage not in float32_in_fast)
    assert all(every_stage[stage] != recorded[stage] for stage in recorded)
    float16 = stage_fingerprints(tmp_path, "fast", data, ("precision=mixed_float16",))
    assert all(float16[stage] not in (every_stage[stage], recorded[stage]) for stage in recorded)
    mixed = config.TrainSettings(epochs=1, batch_size=10, optimizer="sgd", learning_rate=0.1,
                                 precision="mixed_bfloat16")
    assert config.as_record(mixed)["precision"] == "mixed_bfloat16"
    assert "precision" not in config.as_record(replace(mixed, precision="float32"))
    assert "float32_last_epochs" not in config.as_record(mixed)
    assert config.as_record(replace(mixed, float32_last_epochs=1))["float32_last_epochs"] == 1


def test_float32_last_epochs_enters_the_fingerprint_only_under_a_mixed_policy(tmp_path, monkeypatch):
    data = RECORDED_DATA["full"]
    recorded = {stage.id: RECORDED_FINGERPRINTS[f"full fast {stage.id}"] for stage in STAGES}
    monkeypatch.setattr(precision, "this_machine", lambda: NO_BF16)  # auto: float32, which has nothing to end
    assert stage_fingerprints(tmp_path, "fast", data, ("float32_last_epochs=1",)) == recorded
    monkeypatch.setattr(precision, "this_machine", lambda: AMD_BF16)
    mixed = stage_fingerprints(tmp_path, "fast", data, ("precision=auto",))
    ending = stage_fingerprints(tmp_path, "fast", data, ("precision=auto", "float32_last_epochs.ensemble=1"))
    assert [stage for stage in recorded if ending[stage] != mixed[stage]] == ["ensemble"]


def test_another_worker_follows_the_chiefs_auto_precision(tmp_path, monkeypatch):
    """A worker whose CPU has no bfloat16 trains the stage in the chief's mixed_bfloat16, so their fingerprints agree.

    The collectives are faked: chief_decides hands the worker the chief's values, as it would in a cluster.
    """
    from mnist_cnn_progression.pipeline import strategy as strategy_module
    from mnist_cnn_progression.pipeline.runner import Runner
    stage = STAGE_BY_ID["conv2_relu"]
    stage_fingerprints(tmp_path, "fast", RECORDED_DATA["full"])  # writes the run directory's data.json
    monkeypatch.setattr(precision, "this_machine", lambda: AMD_BF16)
    chief = Runner(tmp_path, "fast", config.resolve("fast", []), "auto", strategy=strategies.choose("default"))
    chief_recipe = chief.recipe(stage)
    sent = chief._agree_on_stage(stage, chief_recipe)  # the chief's own view: train, its recipe
    assert sent == (False, chief_recipe) and chief_recipe.precision.policy == "mixed_bfloat16"
    chief_values = [0, int(chief_recipe.fingerprint()[:15], 16), precision.POLICIES.index("mixed_bfloat16")]
    monkeypatch.setattr(precision, "this_machine", lambda: NO_BF16)
    monkeypatch.setattr(strategy_module, "chief_decides", lambda strategy, values: chief_values)
    worker = Runner(tmp_path, "fast", config.resolve("fast", []), "auto", strategy=strategies.choose("default"))
    worker.task = "worker-1"
    assert worker.recipe(stage).precision.policy == "float32"  # alone, its own CPU would choose float32
    done, followed = worker._agree_on_stage(stage, None)
    assert not done and followed.precision.policy == "mixed_bfloat16"
    assert followed.fingerprint() == chief_recipe.fingerprint()
    # A precision set on the command line is not overridden: unlike settings stop the cluster with a sentence.
    stubborn = Runner(tmp_path, "fast", config.resolve("fast", ["precision=float32"]), "auto",
                      strategy=strategies.choose("default"))
    stubborn.task = "worker-1"
    with pytest.raises(PipelineError, match="the workers differ in the settings or data of stage conv2_relu"):
        stubborn._agree_on_stage(stage, None)


# -- training under a mixed policy -----------------------------------------------------------------------------------
from mnist_cnn_progression.pipeline.modelstage import StageJob, run_single, train_side_by_side  # noqa: E402
from mnist_cnn_progression.pipeline.train import TrainSettings, predict, train  # noqa: E402

LIMIT = 320  # training images: a few seconds a network, even in emulated float16


def settings_in(policy: str, **changes) -> TrainSettings:
    return replace(TrainSettings(epochs=2, batch_size=32, optimizer="adam", learning_rate=0.003, shuffle=True,
                                 max_shift=1, steps_per_call=4, seed=4, init="he", precision=policy), **changes)


def sixteen_bit_types(model: onnx.ModelProto) -> list:
    """Every place a 16-bit float appears in an ONNX graph: a tensor's type, an initializer, a Cast's target."""
    sixteen = {onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16}
    graph = model.graph
    values = [v.name for v in (*graph.input, *graph.output, *graph.value_info)
              if v.type.tensor_type.elem_type in sixteen]
    tensors = [t.name for t in graph.initializer if t.data_type in sixteen]
    casts = [n.name for n in graph.node if n.op_type == "Cast" and any(a.i in sixteen for a in n.attribute)]
    return values + tensors + casts


@pytest.mark.parametrize("policy", MIXED)
def test_a_stage_trained_in_mixed_precision_keeps_evaluates_and_exports_in_float32(sample, tmp_path, policy):
    """Trained in bfloat16 or float16 (with loss scaling), kept, evaluated and exported as a float32 network."""
    import keras

    from mnist_cnn_progression.models.networks import build_network, load_model
    stage = STAGE_BY_ID["conv2_relu"]
    job = StageJob(stage=stage, settings=(settings_in(policy),), splits=sample, output=tmp_path / "stage",
                   output_name="stages/conv2_relu", checkpoint_dir=tmp_path / "checkpoints" / "conv2_relu-0",
                   tensorboard_dir=tmp_path / "tensorboard", strategy=strategies.choose("default"), log=quiet,
                   train_limit=LIMIT)
    entry = run_single(job)
    assert entry["settings"]["precision"] == policy
    assert entry["val_accuracy"] > 0.3  # it learned (chance is 0.1)
    saved = load_model(tmp_path / "stage" / "model.keras")
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    assert {weight.dtype for weight in saved.weights} == {"float32"}
    # The kept weights are the best epoch's: their validation accuracy, in float32, is the one recorded.
    assert (predict(saved, sample.validation_images).argmax(1) == sample.validation_labels).mean() == \
        entry["val_accuracy"]
    assert entry["test_accuracy"] == (predict(saved, sample.test_images).argmax(1) == sample.test_labels).mean()
    # The ONNX file is a float32 graph and matches a float32 rebuild of the network holding the kept weights.
    proto = onnx.load(tmp_path / entry["export"]["onnx"].replace("stages/conv2_relu", "stage"))
    assert sixteen_bit_types(proto) == [] and entry["export"]["parity_max_abs_diff"] <= 1e-5
    rebuilt = build_network(stage.network)
    rebuilt.set_weights(saved.get_weights())
    import onnxruntime as ort
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    images = sample.test_images[:200, ..., None].astype(np.float32) / 255
    np.testing.assert_allclose(session.run(None, {"images": images})[0], rebuilt(images, training=False).numpy(),
                               atol=1e-5)
    assert keras.config.dtype_policy().name == "float32"  # the policy was the network's, never the global one


def test_mixed_precision_trains_other_numbers_than_float32(sample, tmp_path):
    """The policy reaches the training step: the same seed and data give other losses in bfloat16."""
    runs = {policy: train(STAGE_BY_ID["conv2_relu"].network, sample, "train", settings_in(policy, epochs=1),
                          strategies.choose("default"), tmp_path / policy, log=quiet, train_limit=LIMIT)
            for policy in ("float32", "mixed_bfloat16")}
    assert runs["float32"].history[0]["loss"] != runs["mixed_bfloat16"].history[0]["loss"]
    assert runs["float32"].history[0]["loss"] == pytest.approx(runs["mixed_bfloat16"].history[0]["loss"], rel=0.05)


@pytest.mark.parametrize("policy, last", [*((policy, 0) for policy in MIXED),
                                          ("mixed_bfloat16", 1), ("mixed_bfloat16", 3)])
def test_a_mixed_precision_network_stopped_after_an_epoch_resumes_to_the_uninterrupted_weights(sample, tmp_path,
                                                                                              policy, last):
    """The checkpoint holds what mixed precision adds (float16: the loss scale and its step counter) and is float32.

    A network ending in float32 resumes in the precision of its epoch: last 1
    switches after the resume (at epoch 3), last 3 before it (at epoch 1).
    """
    import tensorflow as tf
    settings = settings_in(policy, epochs=3, float32_last_epochs=last)
    run = lambda directory, log: train(STAGE_BY_ID["dropout"].network, sample, "train", settings,
                                       strategies.choose("default"), directory, log=log, train_limit=LIMIT // 2)
    whole, resumed, lines = stopped_after_epoch_1_then_resumed(run, tmp_path)
    assert resumed.resumed_from_epoch == 1
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    assert [h["val_accuracy"] for h in resumed.history] == [h["val_accuracy"] for h in whole.history]
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    reader = tf.train.load_checkpoint(str(tmp_path / "whole"))
    names = reader.get_variable_to_dtype_map()
    floats = {dtype for name, dtype in names.items() if dtype.is_floating}
    assert floats == {tf.float32, tf.float64}  # float64: the best validation accuracy
    assert any("dynamic_scale" in name for name in names) == (policy == "mixed_float16")
    switched = [line for line in lines if "on: float32" in line]
    assert switched == ([f"  epoch {max(2, 4 - last)} on: float32 (float32_last_epochs {last})"] if last else [])


def test_the_last_epochs_train_in_float32_when_float32_last_epochs_says_so(sample, tmp_path):
    """float32_last_epochs switches the network to float32 for its last epochs, and only for them."""
    network = STAGE_BY_ID["conv2_relu"].network
    run = lambda name, policy, **changes: train(network, sample, "train", settings_in(policy, **changes),
                                                strategies.choose("default"), tmp_path / name, log=quiet,
                                                train_limit=LIMIT)
    bfloat16, float32 = run("bf16", "mixed_bfloat16"), run("f32", "float32")
    ending = run("ending", "mixed_bfloat16", float32_last_epochs=1)
    assert ending.history[0]["loss"] == bfloat16.history[0]["loss"]  # epoch 1 in bfloat16
    assert ending.history[1]["loss"] != bfloat16.history[1]["loss"]
    every_epoch = run("every", "mixed_bfloat16", float32_last_epochs=2)  # all of them: float32 from the start
    assert [h["loss"] for h in every_epoch.history] == [h["loss"] for h in float32.history]
    for a, b in zip(every_epoch.model.get_weights(), float32.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_ensemble_members_train_side_by_side_in_two_threads_under_a_mixed_policy(sample, tmp_path):
    """Each member has its own policy: two threads give the members one thread gives, and the global stays float32."""
    import keras
    stage = replace(STAGE_BY_ID["ensemble"], data="train")
    members = tuple(settings_in("mixed_bfloat16", epochs=1, seed=k) for k in range(3))

    def job(directory):
        return StageJob(stage=stage, settings=members, splits=sample, output=None, output_name="",
                        checkpoint_dir=directory, tensorboard_dir=directory / "tensorboard",
                        strategy=strategies.choose("default"), log=quiet, train_limit=LIMIT)

    together = train_side_by_side(job(tmp_path / "together"), [1, 2], None, workers=2)
    alone = train_side_by_side(job(tmp_path / "alone"), [1, 2], None, workers=1)
    for one, other in zip(together, alone):
        assert {w.dtype for w in one.model.weights} == {"float32"}
        for a, b in zip(one.model.get_weights(), other.model.get_weights()):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(together[0].model.get_weights()[0], together[1].model.get_weights()[0])
    assert keras.config.dtype_policy().name == "float32"


def test_the_log_summary_and_report_say_what_precision_a_stage_used_and_why(tmp_path, monkeypatch, capsys):
    """auto on a (faked) avx512_bf16 CPU: said in the log, summary.json and the report; float32 then retrains it."""
    from mnist_cnn_progression.pipeline import cli
    monkeypatch.setattr(precision, "this_machine", lambda: AMD_BF16)
    arguments = ["--preset", "quick", "--data", "sample", "--run-dir", str(tmp_path), "--stages", "baseline,report",
                 "--set", "train_limit=320", "--set", "epochs=1", "--set", "batch_size=64", "--set", "precision=auto"]
    assert cli.main(arguments) == 0
    log = capsys.readouterr().out
    assert "[baseline] fc100-softmax (sigmoid)" in log
    assert "  precision mixed_bfloat16 (auto: CPU has avx512_bf16)" in log
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages"]["baseline"]["precision"] == {"policy": "mixed_bfloat16",
                                                          "why": "auto: CPU has avx512_bf16"}
    assert summary["stages"]["baseline"]["settings"]["precision"] == "mixed_bfloat16"
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Precision: baseline in mixed_bfloat16 (auto: CPU has avx512_bf16)." in report
    assert cli.main(arguments) == 0 and "[baseline] done already" in capsys.readouterr().out
    assert cli.main([*arguments, "--set", "precision=float32"]) == 0
    assert "  precision float32 (set)" in capsys.readouterr().out
    assert cli.main([*arguments, "--set", "float32_last_epochs=1"]) == 0
    ending = "mixed_bfloat16 (auto: CPU has avx512_bf16), each network's last epoch in float32"
    assert f"  precision {ending}" in capsys.readouterr().out
    assert json.loads((tmp_path / "summary.json").read_text())["stages"]["baseline"]["precision"] == {
        "policy": "mixed_bfloat16", "why": "auto: CPU has avx512_bf16", "float32_last_epochs": 1}
    assert f"Precision: baseline in {ending}." in (tmp_path / "report" / "report.md").read_text()
