"""The five member networks and the vote as one ONNX graph, so one session call does everything.

The vote nodes implement inference.vote.vote: each member's predicted class is one
vote; among the classes with the most votes the highest mean probability wins
(ArgMax picks the first index on an exact tie, as NumPy's argmax does).
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mnist_cnn_progression.inference.contract import (CLASS_OUTPUT, INPUT_NAME, MEAN_OUTPUT, NUM_CLASSES, OPSET,
                                                      OUTPUT_NAME, VOTES_OUTPUT)


def member_output(k: int) -> str:
    return f"member{k}_{OUTPUT_NAME}"


def vote_graph(members: int) -> onnx.GraphProto:
    """Inputs member<k>_probabilities [N, 10] -> class [N] int64, votes [N, 10] int64, probabilities [N, 10]."""
    n = helper.make_node
    nodes = [n("Unsqueeze", [member_output(k), "axis0"], [f"stacked{k}"]) for k in range(members)]
    nodes += [
        n("Concat", [f"stacked{k}" for k in range(members)], ["all_probabilities"], axis=0),
        n("ReduceMean", ["all_probabilities"], [MEAN_OUTPUT], axes=[0], keepdims=0),
        n("ArgMax", ["all_probabilities"], ["member_classes"], axis=2, keepdims=0),
        n("OneHot", ["member_classes", "depth", "off_on"], ["member_votes"], axis=-1),
        n("ReduceSum", ["member_votes", "axis0"], [VOTES_OUTPUT], keepdims=0),
        n("ReduceMax", [VOTES_OUTPUT], ["most_votes"], axes=[1], keepdims=1),
        n("Equal", [VOTES_OUTPUT, "most_votes"], ["tied"]),
        n("Where", ["tied", MEAN_OUTPUT, "minus_infinity"], ["tied_mean"]),
        n("ArgMax", ["tied_mean"], [CLASS_OUTPUT], axis=1, keepdims=0),
    ]
    constants = [numpy_helper.from_array(np.array([0], np.int64), "axis0"),
                 numpy_helper.from_array(np.array(NUM_CLASSES, np.int64), "depth"),
                 numpy_helper.from_array(np.array([0, 1], np.int64), "off_on"),
                 numpy_helper.from_array(np.array(-np.inf, np.float32), "minus_infinity")]
    probabilities = [helper.make_tensor_value_info(member_output(k), TensorProto.FLOAT, ["N", NUM_CLASSES])
                     for k in range(members)]
    return helper.make_graph(nodes, "vote", probabilities, vote_outputs(), constants)


def vote_outputs():
    return [helper.make_tensor_value_info(CLASS_OUTPUT, TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info(VOTES_OUTPUT, TensorProto.INT64, ["N", NUM_CLASSES]),
            helper.make_tensor_value_info(MEAN_OUTPUT, TensorProto.FLOAT, ["N", NUM_CLASSES])]


def vote_model(members: int) -> onnx.ModelProto:
    """The vote alone, for checking it against inference.vote.vote on chosen probabilities."""
    return helper.make_model(vote_graph(members), opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def fuse(members: list[onnx.ModelProto], metadata: dict[str, str]) -> onnx.ModelProto:
    """One graph: input images feeds every member (prefixed member<k>_), their outputs feed the vote."""
    if any(member.graph.input[0].name != INPUT_NAME for member in members):
        raise ValueError(f"every member network must take one input named {INPUT_NAME!r}")
    graphs = [onnx.compose.add_prefix_graph(member.graph, f"member{k}_", rename_inputs=False)
              for k, member in enumerate(members)]
    vote = vote_graph(len(members))
    graph = helper.make_graph(
        [node for g in graphs for node in g.node] + list(vote.node), "ensemble", [graphs[0].input[0]],
        vote_outputs(), [tensor for g in graphs for tensor in g.initializer] + list(vote.initializer))
    opsets = {(o.domain, o.version) for member in members for o in member.opset_import}
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets)],
                              ir_version=members[0].ir_version)
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model
