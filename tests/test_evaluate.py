"""The evaluation stage's numbers on a case small enough to count by hand."""
import json

import numpy as np
import pytest

from mnist_cnn_progression.pipeline.evaluate import evaluate

LABELS = np.array([0, 0, 1, 1, 2, 3])
PREDICTED = np.array([0, 1, 1, 1, 2, 2])  # errors at 1 (0 -> 1) and 5 (3 -> 2)


def one_hot(classes):
    return np.eye(10, dtype=np.float32)[classes] * 0.9 + 0.01


def test_counts_accuracy_errors_and_difference():
    result = evaluate(one_hot(PREDICTED), LABELS, reference_accuracy=0.5)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["errors"] == 2
    assert result["misclassified"] == [1, 5]
    assert result["difference_pp"] == pytest.approx((4 / 6 - 0.5) * 100)


def test_confusion_matrix_rows_are_true_columns_predicted():
    confusion = np.array(evaluate(one_hot(PREDICTED), LABELS, 0.99)["confusion_matrix"])
    assert confusion.shape == (10, 10)
    assert confusion[0, 0] == 1 and confusion[0, 1] == 1 and confusion[3, 2] == 1
    assert confusion.sum() == len(LABELS)
    assert confusion.sum(axis=1)[:4].tolist() == [2, 2, 1, 1]


def test_per_class_precision_and_recall():
    per_class = evaluate(one_hot(PREDICTED), LABELS, 0.99)["per_class"]
    assert per_class["precision"][:4] == pytest.approx([1.0, 2 / 3, 0.5, 0.0])
    assert per_class["recall"][:4] == pytest.approx([0.5, 1.0, 1.0, 0.0])
    assert per_class["precision"][4:] == [0.0] * 6  # never predicted: 0, not NaN


def test_voted_classes_give_the_same_result_as_their_probabilities():
    assert evaluate(None, LABELS, 0.9, predictions=PREDICTED) == evaluate(one_hot(PREDICTED), LABELS, 0.9)


def test_result_is_plain_json():
    result = evaluate(one_hot(PREDICTED), LABELS, 0.9)
    assert json.loads(json.dumps(result)) == result


@pytest.mark.parametrize("probabilities, predictions", [
    (None, None), (one_hot(PREDICTED), PREDICTED), (one_hot(PREDICTED)[:5], None), (None, PREDICTED[:5])])
def test_rejects_missing_both_or_mismatched_inputs(probabilities, predictions):
    with pytest.raises(ValueError):
        evaluate(probabilities, LABELS, 0.9, predictions=predictions)
