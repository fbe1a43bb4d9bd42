"""Known answers for audit verdicts, relevance shares by verdict, and attribution-graph grouping and edges."""

from __future__ import annotations

import pytest
import torch

from semlens.analysis.audit import audit_units, relevance_by_verdict, relevance_share
from semlens.relevance.graph import edges_between, group_units


def test_relevance_by_verdict_sums_to_one_and_ignores_negative_relevance():
    shares = relevance_by_verdict(torch.tensor([0.5, 0.3, 0.2, -0.4]), ["valid", "spurious", "valid", "spurious"])
    assert shares == pytest.approx({"valid": 0.7, "spurious": 0.3, "both": 0.0, "unexpected": 0.0, "spurious_or_both": 0.3})
    assert relevance_by_verdict(torch.tensor([-1.0]), ["valid"]) == {
        "valid": 0.0, "spurious": 0.0, "both": 0.0, "unexpected": 0.0, "spurious_or_both": 0.0
    }  # fmt: skip
    # the share the confirmed findings carry uses the same weights: negative and NaN relevance count as none
    relevance = torch.tensor([0.5, float("nan"), 0.3, -0.4])
    assert relevance_share(relevance, torch.tensor([True, True, False, True])) == pytest.approx(0.5 / 0.8)


def test_audit_keeps_units_above_the_cut_most_relevant_first():
    units = ["l/0", "l/1", "l/2", "l/3"]
    max_share = torch.tensor([0.50, 0.01, 0.30, float("nan")])  # l/1 under the cut, l/3 never seen
    mean_share = torch.tensor([0.20, 0.01, 0.25, float("nan")])
    a_valid, a_spur = torch.tensor([0.3, 0.3, -0.1, 0.2]), torch.tensor([-0.2, 0.1, 0.4, 0.1])
    audit = audit_units("cat", units, max_share, mean_share, a_valid, a_spur, a_valid * 20, a_spur * 20,
                        ["cat"], ["watermark"], cut=0.028)  # fmt: skip
    assert [unit.unit for unit in audit.units] == ["l/2", "l/0"]  # by mean relevance
    assert [unit.verdict for unit in audit.units] == ["spurious", "valid"]
    assert audit.shares["spurious"] == pytest.approx(0.25 / 0.45) and audit.shares["valid"] == pytest.approx(0.20 / 0.45)
    assert audit.to_dict()["units"][0]["a_spur"] == pytest.approx(0.4)


def test_graph_groups_relevant_units_by_label_with_unlabelled_as_question_mark():
    shares = torch.tensor([0.4, 0.3, 0.005, 0.2, 0.1])
    labels = ["stripes", None, "stripes", "stripes", None]
    groups = group_units("l", [f"l/{i}" for i in range(5)], shares, labels, cut=0.01)
    assert groups == {"stripes": [0, 3], "no concept": [1, 4]}  # unit 2 under the cut; stripes (0.6) before no concept (0.4)


def test_graph_edges_are_shares_of_the_lower_layers_relevance():
    upper = {"zebra": [0], "no concept": [1]}
    lower = {"stripes": [0, 1], "grass": [2]}
    flows = {"zebra": torch.tensor([0.3, 0.1, 0.0]), "no concept": torch.tensor([0.0, 0.1, 0.5])}
    edges = edges_between(upper, lower, flows, total=1.0)
    assert edges == [("zebra", "stripes", pytest.approx(0.4)), ("no concept", "stripes", pytest.approx(0.1)), ("no concept", "grass", pytest.approx(0.5))]
    assert edges_between(upper, lower, flows, total=0.0) == []


def test_graph_samples_are_those_the_classes_relevant_units_matter_most_on():
    from semlens.relevance.graph import relevant_samples

    top_samples = torch.tensor([[3, 9, -1], [9, 5, 1], [2, 3, 4]])
    top_shares = torch.tensor([[0.5, 0.2, float("-inf")], [0.4, 0.3, 0.1], [0.9, 0.8, 0.7]])
    weights = torch.tensor([1.0, 0.5, -2.0])  # unit 2 works against the class: its samples do not count
    # 3: 0.5; 9: 0.2 + 0.2 = 0.4; 5: 0.15; 1: 0.05; 2 and 4: 0 (they come last, in id order)
    assert relevant_samples(top_samples, top_shares, weights, 4) == [3, 9, 5, 1]
    assert relevant_samples(top_samples, top_shares, weights, 10) == [3, 9, 5, 1, 2, 4]


def test_graph_leaves_out_units_without_examples_of_their_own():
    shares = torch.tensor([0.5, 0.3, 0.2])
    groups = group_units("l", ["l/0", "l/1", "l/2"], shares, ["dog", "dog", None], cut=0.1, valid=torch.tensor([True, False, True]))
    assert groups == {"dog": [0], "no concept": [2]}
