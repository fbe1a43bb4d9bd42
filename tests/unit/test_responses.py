"""The responses labelling method on known answers: the moments give the same ridge regression as the crops
themselves, and of two concepts every top example shows, the one that drives the unit wins."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from semlens._util.errors import SemlensError
from semlens.analysis.labelling_methods import method_scores, response_scores, standardised
from semlens.analysis.responses import ResponseMoments, concept_directions, partial_effects


def explicit_ridge(
    embeddings: torch.Tensor, activations: torch.Tensor, directions: torch.Tensor, ridge: float
) -> torch.Tensor:
    """The regression written out on the crops: alignments and activations centred, columns scaled to unit norm."""
    alignments = F.normalize(embeddings, dim=-1) @ directions.T  # [n, C]
    s = alignments - alignments.mean(dim=0)
    s = s / s.norm(dim=0)
    a = activations - activations.mean(dim=0)
    a = a / a.norm(dim=0)
    return torch.linalg.solve(s.T @ s + ridge * torch.eye(s.shape[1]), s.T @ a).T


def test_moments_give_the_regression_on_the_crops() -> None:
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(200, 16, generator=generator, dtype=torch.float64)
    activations = torch.randn(200, 5, generator=generator, dtype=torch.float64)
    concepts, null = torch.randn(7, 16, generator=generator), torch.randn(16, generator=generator)
    moments = ResponseMoments(16)
    for start in range(0, 200, 64):  # streamed in batches: the same sums
        unit = moments.add_embeddings(embeddings[start : start + 64])
        moments.add_activations("layer", activations[start : start + 64], unit)
    directions = concept_directions(concepts, null)
    for ridge in (0.1, 1.0):
        expected = explicit_ridge(embeddings, activations, directions.double(), ridge).float()
        torch.testing.assert_close(
            partial_effects(moments.cross("layer"), moments.scatter(), directions, ridge),
            expected,
            atol=1e-4,
            rtol=1e-4,
        )
    many = concept_directions(torch.randn(40, 16, generator=generator), null)  # more concepts than dimensions: Woodbury
    expected = explicit_ridge(embeddings, activations, many.double(), 1.0).float()
    torch.testing.assert_close(
        partial_effects(moments.cross("layer"), moments.scatter(), many), expected, atol=1e-4, rtol=1e-4
    )


def test_a_constant_unit_has_no_effects() -> None:
    moments = ResponseMoments(4)
    unit = moments.add_embeddings(torch.randn(10, 4))
    moments.add_activations("layer", torch.stack([torch.full((10,), 3.0), torch.arange(10.0)], dim=1), unit)
    cross = moments.cross("layer")
    assert torch.equal(cross[0], torch.zeros(4)) and cross[1].abs().sum() > 0


def test_the_concept_that_drives_the_unit_wins_over_one_its_examples_also_show() -> None:
    # a planted watermark unit: every crop it fires on shows a star (large in the embedding) and a watermark
    # (small); stars without the watermark and watermarks on squares leave it or raise it as the watermark says
    star, watermark, square = torch.eye(8)[:3]
    generator = torch.Generator().manual_seed(1)
    crops, activations = [], []
    for has_star, has_watermark, has_square in (
        [(1, 1, 0)] * 20 + [(1, 0, 0)] * 20 + [(0, 1, 1)] * 20 + [(0, 0, 1)] * 20
    ):
        crops.append(
            2.0 * has_star * star
            + 0.6 * has_watermark * watermark
            + 2.0 * has_square * square
            + 0.05 * torch.randn(8, generator=generator)
        )
        activations.append(float(has_watermark) + 0.05 * float(torch.randn(1, generator=generator)))
    crops_tensor, unit_activations = torch.stack(crops), torch.tensor(activations)[:, None]
    moments = ResponseMoments(8)
    moments.add_activations("layer", unit_activations, moments.add_embeddings(crops_tensor))
    concepts = torch.stack([star, watermark, square])
    effects = partial_effects(moments.cross("layer"), moments.scatter(), concept_directions(concepts, None))
    theta = F.normalize(crops_tensor[:20], dim=-1).mean(dim=0, keepdim=True)  # its top examples: watermarked stars
    centred = theta @ F.normalize(concepts, dim=-1).T
    assert centred.argmax().item() == 0  # the examples' mean says "star"
    assert (
        effects.argmax().item() == 1 and response_scores(centred, effects).argmax().item() == 1
    )  # the responses say "watermark"


def test_standardised_rows_and_the_method_needs_a_lens() -> None:
    rows = standardised(torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    spread = (2 / 3) ** 0.5  # the population deviation of 1, 2, 3
    torch.testing.assert_close(rows, torch.tensor([[-1 / spread, 0.0, 1 / spread], [0.0, 0.0, 0.0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one concept: zeros, without torch's "degrees of freedom <= 0" warning
        torch.testing.assert_close(standardised(torch.tensor([[0.3], [0.7]])), torch.zeros(2, 1))
    with pytest.raises(SemlensError, match="crop responses"):
        method_scores(
            "responses",
            torch.ones(2, 2),
            torch.ones(2, 1, 2),
            torch.zeros(2, 1, dtype=torch.long),
            torch.ones(2, dtype=torch.bool),
            torch.eye(2),
            None,
        )
