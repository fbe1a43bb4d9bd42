"""Streaming top-k against a brute-force sort, including ties, negatives and shard merges."""

import pytest
import torch
from torch import nn

from semlens.model.units import LayerSpec
from semlens.pipeline.collect import TopK, collect_topk, iterate_batches, order_keys


def brute_force(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: per unit, sort samples by (score desc, id asc) with Python's sort."""
    n, units = scores.shape
    top_scores = torch.full((units, k), float("-inf"))
    top_ids = torch.full((units, k), -1, dtype=torch.int64)
    for unit in range(units):
        order = sorted(range(n), key=lambda i: (-scores[i, unit].item(), i))[:k]
        top_ids[unit, : len(order)] = torch.tensor(order, dtype=torch.int64)
        top_scores[unit, : len(order)] = scores[order, unit]
    return top_scores, top_ids


def stream(scores: torch.Tensor, k: int, batch: int, ids_offset: int = 0) -> TopK:
    topk = TopK.empty(scores.shape[1], k)
    for start in range(0, scores.shape[0], batch):
        chunk = scores[start : start + batch]
        topk.update(chunk, torch.arange(start, start + chunk.shape[0]) + ids_offset)
    return topk


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_streaming_equals_brute_force_with_ties_and_negative_units(batch):
    torch.manual_seed(0)
    scores = torch.randint(-3, 4, (50, 6)).float()  # many exact ties
    scores[:, 2] = -torch.rand(50) - 1  # a unit that is always negative
    scores[:, 3] = 0.0  # a unit that never fires: all tied
    scores[5, 4] = -0.0  # negative zero ties with zero
    expected_scores, expected_ids = brute_force(scores, 10)
    topk = stream(scores, 10, batch)
    assert torch.equal(topk.ids, expected_ids)
    assert torch.equal(topk.scores, expected_scores)
    assert topk.ids[3].tolist() == list(range(10))  # ties go to the lower sample index


def test_fewer_samples_than_k_leaves_empty_slots_last():
    scores = torch.tensor([[1.0, -2.0], [3.0, -1.0]])
    topk = stream(scores, 4, 1)
    assert topk.ids.tolist() == [[1, 0, -1, -1], [1, 0, -1, -1]]
    assert torch.isinf(topk.scores[:, 2:]).all()


def test_nan_ranks_last_and_infinities_are_ordered():
    scores = torch.tensor([[float("nan")], [float("inf")], [float("-inf")], [0.5]])
    topk = stream(scores, 4, 2)
    assert topk.ids[0].tolist() == [1, 3, 0, 2] or topk.ids[0].tolist() == [1, 3, 2, 0]
    keys = order_keys(torch.tensor([float("nan"), float("-inf")]), torch.tensor([0, 1]))
    assert keys[0] > keys[1]  # NaN counts as -inf, and id 0 beats id 1 on that tie


def test_merge_of_shards_equals_single_pass_and_is_associative():
    torch.manual_seed(1)
    scores = torch.randn(90, 5).round(decimals=1)
    whole = stream(scores, 8, 16)
    a, b, c = stream(scores[:30], 8, 4), stream(scores[30:60], 8, 5, 30), stream(scores[60:], 8, 9, 60)
    for merged in (a.merge(b).merge(c), a.merge(b.merge(c)), c.merge(a).merge(b)):
        assert torch.equal(merged.ids, whole.ids)
        assert torch.equal(merged.scores, whole.scores)


def test_maps_follow_their_samples():
    torch.manual_seed(2)
    maps = torch.randn(40, 3, 2, 2)
    scores = maps.mean(dim=(2, 3))
    topk = TopK.empty(3, 5, (2, 2))
    for start in range(0, 40, 6):
        topk.update(scores[start : start + 6], torch.arange(start, min(start + 6, 40)), maps[start : start + 6])
    for unit in range(3):
        assert torch.equal(topk.maps[unit], maps[topk.ids[unit], unit])
    half = TopK.empty(3, 5, (2, 2))
    half.update(scores[:20], torch.arange(20), maps[:20])
    other = TopK.empty(3, 5, (2, 2))
    other.update(scores[20:], torch.arange(20, 40), maps[20:])
    assert torch.equal(half.merge(other).maps, topk.maps)


class ConvLinearTokens(nn.Module):
    """A conv layer, a token layer (N,L,C) and a linear head, to read all three layouts."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.tokens = nn.Identity()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        feature = self.conv(x)
        tokens = self.tokens(feature.flatten(2).transpose(1, 2))  # N, H*W, C
        return self.head(tokens.mean(1))


@pytest.mark.parametrize(
    "spec,reference",
    [
        ("conv", lambda m, x: m.conv(x).mean(dim=(2, 3))),
        ("conv:pool=max", lambda m, x: m.conv(x).amax(dim=(2, 3))),
        ("tokens", lambda m, x: m.conv(x).flatten(2).mean(2)),
        ("tokens:token=0", lambda m, x: m.conv(x).flatten(2)[:, :, 0]),
        ("head", lambda m, x: m(x)),
        ("head:signed=true", lambda m, x: torch.cat([m(x), -m(x)], dim=1)),
    ],
)
def test_collect_matches_brute_force_for_each_layout(spec, reference):
    torch.manual_seed(3)
    model = ConvLinearTokens().eval()
    data = torch.randn(37, 3, 6, 6)
    layer = LayerSpec.parse(spec)
    result = collect_topk(model, [layer], iterate_batches(data, 8), k=5)[layer.name]
    with torch.no_grad():
        expected_scores, expected_ids = brute_force(reference(model, data), 5)
    assert torch.equal(result.ids, expected_ids)
    torch.testing.assert_close(result.scores, expected_scores)


def test_units_that_never_fire_or_never_differ_are_inactive() -> None:
    from semlens.analysis.validity import inactive_units

    scores = torch.tensor(
        [
            [3.0, 2.0, 1.0],  # fires and ranks samples: active
            [-0.5, -1.0, -2.0],  # negative on every sample (it varies, but never fires): inactive
            [0.0, 0.0, 0.0],  # dead: inactive
            [1.5, 1.5, 1.5],  # constant: inactive
            [0.2, -1.0, -3.0],  # positive on one sample: active
            [2.0, 1.0, float("-inf")],  # fewer samples than k: active
        ]
    )
    assert inactive_units(scores).tolist() == [False, True, True, True, False, False]
    # one example per unit (k = 1): one score shows whether a unit fired, not whether it is constant
    assert inactive_units(scores[:, :1]).tolist() == [False, True, True, False, False, False]
    # the scores of a vector output are its values (a logit below zero on every image still ranks them): only equal ones
    assert inactive_units(scores, values=True).tolist() == [False, False, True, True, False, False]


def test_a_logit_below_zero_on_every_probe_image_keeps_its_examples(tmp_path, colour_folder, tiny_clip_dir) -> None:
    """A classifier's head scored a class below zero on every image: the build marked it inactive ("never fired"), its
    examples arbitrary, and advised reading the activation after it or max pooling, neither of which a logit has."""
    from semlens import BuildConfig, build_lens

    config = BuildConfig(model="py:tiny_models:tiny_cnn", layers=["head"], data=f"folder:{colour_folder}", foundation=f"hf:{tiny_clip_dir}", k=3, workers=0)
    lens = build_lens(config, tmp_path / "head.lens", progress=False)
    scores = lens.arrays.scores("head")
    below = (scores[:, 0] <= 0).nonzero().flatten().tolist()
    assert below, "the tiny CNN's head should score some class below zero on every image"
    assert not lens.arrays.inactive("head")[below].any()
