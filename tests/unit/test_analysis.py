"""Known answers for the Lens analyses: templates, alignment with null subtraction, labels, dissection,
vocabularies, compare and the overview's cluster count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semlens._util.errors import SemlensError
from semlens.analysis.alignment import TEMPLATES, alignment, cosine, fill, null_prompts, resolve_templates
from semlens.analysis.compare import best_matches, concept_sets, overlap_matrices
from semlens.analysis.label import PAPER_THRESHOLD, dissect, label_confidence, label_units
from semlens.analysis.overview import build_overview, cluster_count, name_clusters
from semlens.analysis.vocabulary import Vocabulary, builtin_vocabulary, load_vocabulary

E = torch.eye(4)


def test_templates_are_the_papers_and_null_prompts_drop_the_concept():
    assert TEMPLATES["search"] == ("{}", "a {}", "an image of a close up of {}")
    assert TEMPLATES["label"] == ("{}", "{}-like", "a {}", "an image of a close up of {}")
    assert TEMPLATES["audit"] == ("{}", "an image of {}")
    assert fill("dog", TEMPLATES["search"]) == ["dog", "a dog", "an image of a close up of dog"]
    assert null_prompts(TEMPLATES["label"]) == ["", "-like", "a", "an image of a close up of"]
    assert resolve_templates("photograph of a {}") == ("photograph of a {}",)
    with pytest.raises(SemlensError, match="contain '\\{\\}' once"):
        resolve_templates(["no placeholder"])


def test_alignment_subtracts_the_null_similarity():
    theta = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    probe = torch.tensor([[1.0, 0.0, 0.0]])
    null = torch.tensor([0.0, 1.0, 0.0])
    # unit 0: cos(theta, probe) = 1/sqrt2, cos(theta, null) = 1/sqrt2 -> 0; unit 1: 0 - 1 = -1
    torch.testing.assert_close(alignment(theta, probe, null), torch.tensor([[0.0], [-1.0]]))
    torch.testing.assert_close(alignment(theta, probe, None), torch.tensor([[1 / math.sqrt(2)], [0.0]]))
    assert torch.allclose(cosine(theta * 5, probe * 0.1), cosine(theta, probe))  # scale-free


def test_labels_take_the_best_concept_and_respect_the_threshold():
    concepts = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    null = torch.tensor([1.0, 1.0, 1.0])
    theta = torch.tensor([[0.0, 2.0, 0.1], [1.0, 1.0, 1.0]])  # unit 1 is the null itself: aligns with nothing
    labels = label_units(theta, concepts, null, threshold=0.025, top=2, min_confidence=-math.inf)  # the threshold alone
    assert labels.concepts[0].tolist() == [1, 2]
    assert labels.labelled.tolist() == [True, False]
    assert float(labels.scores[1, 0]) == pytest.approx(1 / math.sqrt(3) - 1)  # cos(theta, e_i) - cos(theta, null)
    assert label_units(theta, concepts, null, threshold=-1.0, min_confidence=-math.inf).labelled.tolist() == [True, True]


def test_label_confidence_is_the_robust_z_against_the_null_units():
    null = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [10.0, 1.0]])  # concept 1: no spread at all
    # concept 0: median 2, |a - 2| = 2, 1, 0, 1, 8 -> MAD 1, spread 1.4826; concept 1: the floor 1e-3
    z = label_confidence(torch.tensor([[5.0, 1.002]]), null)
    torch.testing.assert_close(z, torch.tensor([[3 / 1.4826, 2.0]]), rtol=1e-4, atol=1e-4)


def test_a_unit_shows_its_best_concept_when_it_sets_it_apart_from_its_layer_whatever_the_raw_scale():
    # every alignment is negative (a foundation model whose null prompt sits near all images): the paper's 0.025
    # labels nobody, the confidence labels the units whose concept stands out and leaves the plain one unlabelled
    concepts = torch.eye(5)[:4]
    null = torch.eye(5)[4]
    theta = torch.tensor([[1.0, 0.1, 0.1, 0.1, 3.0], [0.1, 1.0, 0.1, 0.1, 3.0], [0.1, 0.1, 1.0, 0.1, 3.0], [0.3, 0.3, 0.3, 0.3, 3.0]])
    assert (alignment(theta, concepts, null) < 0).all()
    labels = label_units(theta, concepts, null, top=1)
    assert labels.concepts[:3, 0].tolist() == [0, 1, 2]
    assert labels.labelled.tolist() == [True, True, True, False]  # the last aligns with every concept alike
    assert label_units(theta, concepts, null, threshold=PAPER_THRESHOLD).labelled.tolist() == [False] * 4
    assert labels.coverage() == {"valid_units": 4, "labelled": 3, "coverage": 0.75, "median_confidence": pytest.approx(float(labels.confidence[1, 0]))}


def test_dissect_counts_units_per_category_and_unlabelled():
    concepts = torch.eye(3)
    theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0.9, 0.1], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    labels = label_units(theta, concepts, torch.ones(3), threshold=0.025, min_confidence=-math.inf)
    counts = dissect(labels, ["colors", "animals"], ("colors", "animals", "animals"))
    assert counts == {"colors": 1, "animals": 3, "unlabelled": 1, "inactive or tied": 0}


def test_units_without_examples_of_their_own_get_no_label_and_count_apart():
    concepts = torch.eye(3)
    theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    valid = torch.tensor([True, False, True, False])
    labels = label_units(theta, concepts, torch.ones(3), threshold=0.025, valid=valid, min_confidence=-math.inf)
    assert labels.concepts[:, 0].tolist()[:3] == [0, 1, 2]  # still ranked, for whoever looks
    assert labels.labelled.tolist() == [True, False, True, False]
    counts = dissect(labels, ["colors", "animals"], ("colors", "animals", "animals"))
    assert counts == {"colors": 1, "animals": 1, "unlabelled": 0, "inactive or tied": 2}


def test_tied_units_are_those_with_an_earlier_units_crops_in_their_layer_and_inactive_units_never_tie():
    from semlens.analysis.validity import tied_units

    indices = {
        "a": torch.tensor([[0, 1, 2], [2, 1, 0], [3, 4, 5], [0, 1, 2], [7, 7, 7]]),  # rows 1, 3 repeat row 0's set
        "b": torch.tensor([[5, 4, 3], [8, 9, -1], [7, 7, 7], [6, 6, 6], [9, 8, -1]]),  # row 4 repeats row 1; row 0 a/2's
    }
    inactive = {"a": torch.tensor([False, False, False, False, True]), "b": torch.tensor([False, False, False, True, False])}
    tied = tied_units(indices, inactive)
    assert tied["a"].tolist() == [False, True, False, True, False]
    assert tied["b"].tolist() == [False, False, False, False, True]  # a/2's crops in another layer: b/0 is a unit of its own
    brute = {}  # brute force: a unit is tied when an earlier active unit of its layer has the same set of crops
    for layer, index in indices.items():
        sets = [sorted(row.tolist()) for row in index]
        brute[layer] = [not bool(inactive[layer][r]) and sets[r] in [sets[q] for q in range(r) if not inactive[layer][q]] for r in range(len(sets))]
    assert {layer: mask.tolist() for layer, mask in tied.items()} == brute


def test_logits_are_told_from_features_by_class_relevance_of_either_sign():
    from semlens.lens.audits import reads_logits

    seen = torch.tensor([0, 1, 2])
    one_hot = torch.eye(3)
    assert reads_logits(one_hot * torch.tensor([1.0, -0.2, 0.0]), one_hot, seen)  # negative logits, a mean of exactly 0
    signed = torch.cat([one_hot, -one_hot])  # a signed layer: positive and negative parts
    assert reads_logits(signed, signed.abs(), seen)
    features = torch.rand(6, 3, generator=torch.Generator().manual_seed(0))
    assert not reads_logits(features, features, seen)
    two_units = torch.tensor([[0.5, 0.4], [0.5, 0.6]])  # a two-unit feature layer: both classes on both units
    assert not reads_logits(two_units, two_units, torch.tensor([0, 1])) and not reads_logits(one_hot, one_hot, torch.tensor([], dtype=torch.long))


def test_vocabularies_builtin_text_toml_json_and_errors(tmp_path):
    builtin = builtin_vocabulary()
    assert {"colors", "textures", "objects", "animals", "animal_parts", "object_parts", "scenes", "vegetation", "food"} == set(
        builtin.category_names()
    )
    assert builtin.categories[builtin.concepts.index("dog")] == "animals"
    (tmp_path / "mine.txt").write_text("# comment\nwatermark\n\nruler\n")
    assert load_vocabulary(tmp_path / "mine.txt").concepts == ("watermark", "ruler")
    (tmp_path / "mine.toml").write_text('artefacts = ["watermark", "ruler"]\nshapes = ["circle"]\n')
    assert load_vocabulary(tmp_path / "mine.toml").categories == ("artefacts", "artefacts", "shapes")
    (tmp_path / "mine.json").write_text('{"shapes": ["circle", "star"]}')
    assert load_vocabulary(tmp_path / "mine.json").concepts == ("circle", "star")
    (tmp_path / "bad.json").write_text('["circle"]')
    with pytest.raises(SemlensError, match="JSON object"):
        load_vocabulary(tmp_path / "bad.json")
    with pytest.raises(SemlensError, match="not found"):
        load_vocabulary(tmp_path / "missing.txt")
    with pytest.raises(SemlensError, match="twice: red"):
        Vocabulary("v", ("red", "red"), ("c", "c"))


def test_compare_known_answers():
    a = {"x": torch.stack([E[0], E[1]])}
    b = {"y": torch.stack([E[0], (E[1] + E[2]) / math.sqrt(2)])}
    a_to_b, b_to_a, typical = overlap_matrices(a, b)
    assert a_to_b[0][0] == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    # any unit of A with any of B: (1 + 0 + 0 + 1/sqrt 2) / 4, as the mean of the four pairs' cosines
    pairs = [float(F.cosine_similarity(u, v, dim=0)) for u in a["x"] for v in b["y"]]
    assert typical[0][0] == pytest.approx(sum(pairs) / 4) == pytest.approx((1 + 1 / math.sqrt(2)) / 4)
    shared = torch.ones(1, 8) * 5  # a common direction, as ConSE and CLIP embeddings share: S near 1, and so the typical pair
    near = overlap_matrices({"x": shared + torch.randn(6, 8) * 0.1}, {"y": shared + torch.randn(6, 8) * 0.1})
    assert near[0][0][0] > 0.95 and near[2][0][0] > 0.95
    assert b_to_a[0][0] == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    c = {"z": torch.stack([E[0], E[0], E[3]])}
    assert overlap_matrices(a, c)[0][0][0] == pytest.approx(0.5)  # e1 found, e2 not: (1 + 0) / 2
    assert overlap_matrices(a, c)[1][0][0] == pytest.approx(2 / 3)  # e1, e1 found, e4 not
    matches = best_matches(["x/0", "x/1"], a["x"], ["y/0", "y/1"], b["y"])
    assert matches["x/0"] == ("y/0", pytest.approx(1.0)) and matches["x/1"][0] == "y/1"
    assert concept_sets({"cat", "dog"}, {"dog", "car"}) == (["dog"], ["cat"], ["car"])


def test_cluster_count_grows_with_units():
    assert [cluster_count(n) for n in (1, 3, 8, 200, 5000, 100000)] == [1, 2, 2, 10, 50, 160]


def test_overview_names_clusters_by_their_units_labels_and_colours_units_by_their_category():
    torch.manual_seed(0)
    centres = torch.eye(6)[:3] * 4
    theta = torch.cat([centre + 0.05 * torch.randn(10, 6) for centre in centres])
    # group 0: mostly "red", some "blue"; group 1: "dog" and two units without a concept; group 2: no concept at all
    labels = ["red"] * 6 + ["blue"] * 4 + ["dog"] * 8 + [None] * 2 + [None] * 10
    categories = ["colors"] * 10 + ["animals"] * 8 + ["unlabelled"] * 12
    overview = build_overview([f"l/{i}" for i in range(30)], theta, labels, categories, ["colors", "animals", "unlabelled"], clusters=3)
    assert overview.xy.shape == (30, 2)
    names = []
    for group in range(3):
        members = overview.cluster[group * 10 : (group + 1) * 10]
        assert len(set(members.tolist())) == 1  # each group is one cluster
        names.append(overview.cluster_names[members[0]])
    assert names == ["red / blue", "dog", "no concept"]
    assert overview.category.tolist() == [0] * 10 + [1] * 8 + [2] * 12


def test_cluster_names_that_repeat_are_numbered():
    assignment = np.array([0, 0, 1, 1, 2])
    assert name_clusters(assignment, 3, ["ring", "ring", "ring", None, "star"]) == ["ring", "ring #2", "star"]
    assert name_clusters(assignment, 3, [None] * 5) == ["no concept", "no concept #2", "no concept #3"]


def test_slots_kept_by_chance_at_a_tied_cut_off_are_arbitrary():
    from semlens.analysis.validity import arbitrary_slots

    inf = float("inf")
    scores = torch.tensor(
        [
            [5.0, 3.0, 0.0, 0.0, 0.0],  # fired on two samples: the zeros are any three of the others
            [5.0, 3.0, 2.0, 1.0, 0.5],  # no tie: every slot earned
            [5.0, 3.0, 1.0, 1.0, 1.0],  # tied at the cut-off, not at zero: still chance
            [4.0, 4.0, 4.0, 4.0, 4.0],  # constant: inactive, left out whole (its slots are kept)
            [5.0, 2.0, 2.0, 1.0, -inf],  # fewer samples than k: the empty slot is not a tie; 2.0 is not at the cut
        ]
    )
    assert arbitrary_slots(scores).int().tolist() == [
        [0, 0, 1, 1, 1],
        [0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]


def test_a_vocabulary_given_as_a_list_of_names() -> None:
    """A notebook's list of concept names is a vocabulary (category custom); a list of other things is refused."""
    vocabulary = load_vocabulary(["cross", " logo ", "", "cross"])
    assert vocabulary.concepts == ("cross", "logo") and vocabulary.categories == ("custom", "custom")
    with pytest.raises(SemlensError, match="holds concept names"):
        load_vocabulary(["cross", 3])
