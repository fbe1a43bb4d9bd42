"""Labelling methods: a score for every (unit, concept), ``[U, C]``, by one of three rules.

- ``alignment`` (the paper's Eq. 4): the concept's alignment with the unit's theta, the mean embedding of
  its concept examples, with the null prompt subtracted.
- ``centred`` (the default): the alignment less the concept's mean alignment over the layer's valid
  units (``MIN_CENTRED_UNITS`` or more; fewer give no mean worth the name, and keep the alignment). A text
  that aligns with every unit alike (a hub: words the foundation model places near all images, e.g. ones
  it never learnt) then says nothing about any one unit; what sets a unit apart from its layer does.
  Measured on the concept worlds (docs/record.md "Labelling methods"): top-1 0.00 by alignment, 0.71-0.95
  centred, where the world's foundation model puts distractor words ("person", "fire") near every unit.
- ``clip-dissect`` (Oikarinen & Weng 2023, soft-WPMI): each example's p(concept | example) is a softmax
  over the vocabulary of ``temperature`` times its cosine with the concepts; the unit's examples form a
  soft set (the example of rank i belongs to it with a probability falling from ``p_start`` to ``p_end``)
  whose log-likelihood ``log p(concept | examples)`` is scored against ``lam`` times the log of the same
  likelihood averaged over prior sets (random sets of k probe images, see ``lens/label_prior.py``: concepts
  any set shows say nothing).
- ``responses`` (the default where the Lens has them, else ``centred``): ``centred`` and each concept's partial
  effect on the unit's activation over the Lens's own crops (``analysis.responses``), each standardised over the
  vocabulary and summed: of two concepts that all of a unit's top examples show, the one that raises it where
  the other is absent. Measured on the concept worlds (docs/record.md "Labelling methods"): top-1 0.936 against 0.924
  centred, the worst run 0.68 against 0.57.
- ``contrastive``: what separates the unit's examples from look-alikes that do not activate it; the
  negatives are the stored crops nearest to theta among other units' examples whose images are not among
  this unit's, and the score is the alignment with theta minus ``weight`` (0.25) times the alignment with
  the negatives' mean.

Every method ranks with its own score; whether a unit gets a label at all stays the alignment of its best
concept against the threshold (``label.Labels``), so that "unlabelled" means the same for every method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._util.errors import SemlensError
from .alignment import alignment, cosine

METHODS = ("alignment", "centred", "responses", "clip-dissect", "contrastive")
DEFAULT_METHOD = "responses"
FALLBACK_METHOD = "centred"  # the default's where a Lens has no crop responses (built before them, or in another space)
MIN_CENTRED_UNITS = 10  # as the audit's null (analysis.audit.MIN_NULL): fewer units give no layer mean
ALIGNMENT_METHODS = ("alignment", "centred")  # scored from theta alone: no example embeddings needed
#: CLIP-Dissect's soft-WPMI settings (its reference implementation's defaults)
TEMPERATURE, LAMBDA, P_START, P_END = 10.0, 1.0, 0.998, 0.97
CONTRAST_WEIGHT = 0.25  # measured: 1.0 loses most true labels, 0.25 about matches alignment (docs/record.md)
MIN_PROBABILITY = 1e-7
PRIOR_SETS = 1024  # random sets of probe images in clip-dissect's prior
CHUNK_ELEMENTS = 2**25  # bound of the boolean masks built per block of units


def check_method(method: str) -> str:
    """The method name, or a SemlensError listing the valid ones."""
    if method not in METHODS:
        raise SemlensError(f"unknown labelling method {method!r}; the methods are {', '.join(METHODS)}")
    return method


def set_log_likelihood(
    examples: torch.Tensor,
    concepts: torch.Tensor,
    temperature: float = TEMPERATURE,
    p_start: float = P_START,
    p_end: float = P_END,
) -> torch.Tensor:
    """Soft-WPMI's ``log p(concept | set)`` ``[S, C]`` of example sets ``[S, k, d]`` (best first; NaN rows
    in empty slots, which count as never in the set): sum over ranks i of log(1 - w_i + w_i p(c | x_i))."""
    k = examples.shape[1]
    weights = p_start - torch.arange(k, dtype=torch.float32) / k * (p_start - p_end)  # [k]
    empty = examples.isnan().any(dim=-1)  # [S, k]
    weights = weights.expand(empty.shape).masked_fill(empty, 0.0).unsqueeze(-1)  # [S, k, 1]
    flat = examples.nan_to_num(0.0).reshape(-1, examples.shape[-1])
    probabilities = torch.softmax(temperature * cosine(flat, concepts), dim=-1).reshape(*empty.shape, -1)
    return torch.log(1.0 + weights * (probabilities - 1.0) + MIN_PROBABILITY).sum(dim=1)


def random_sets(images: torch.Tensor, k: int, count: int = PRIOR_SETS, seed: int = 0) -> torch.Tensor:
    """``count`` sets of ``k`` of the ``images`` ``[n, d]`` drawn with replacement ``[count, k, d]``: prior sets
    the size of a unit's example set, so that the prior's likelihood is on the units' scale."""
    if images.shape[0] == 0:
        raise SemlensError("random sets need at least one image embedding")
    return images[torch.randint(images.shape[0], (count, k), generator=torch.Generator().manual_seed(seed))]


def clip_dissect_scores(
    examples: torch.Tensor,
    concepts: torch.Tensor,
    prior_sets: torch.Tensor,
    temperature: float = TEMPERATURE,
    lam: float = LAMBDA,
) -> torch.Tensor:
    """Soft-WPMI ``[U, C]``: ``log p(c | unit's examples) - lam * log mean_s p(c | prior set s)``, for the
    units' example sets ``[U, k, d]`` and prior sets ``[S, k', d]`` (the reference implementation takes every
    neuron's examples of the layer; a Lens takes every valid unit's of all its layers)."""
    own = set_log_likelihood(examples, concepts, temperature)
    if prior_sets.shape[0] == 0:  # no other sets (no unit with examples of its own): nothing to subtract
        return own
    prior = torch.logsumexp(set_log_likelihood(prior_sets, concepts, temperature), dim=0)
    prior = prior - torch.log(torch.tensor(float(prior_sets.shape[0])))
    return own - lam * prior


def look_alike_negatives(
    theta: torch.Tensor, samples: torch.Tensor, pool: torch.Tensor, pool_samples: torch.Tensor, count: int
) -> torch.Tensor:
    """Per unit the mean ``[U, d]`` of the ``count`` crops of ``pool`` ``[N, d]`` nearest to its theta whose
    sample (``pool_samples`` ``[N]``) is none of the unit's top-k ``samples`` ``[U, k]``; a zero row where
    no crop is left (its contrast is then nothing)."""
    count = min(count, pool.shape[0])
    unit_pool = F.normalize(pool.float(), dim=-1)
    means = torch.zeros(theta.shape[0], pool.shape[1])
    block = max(1, CHUNK_ELEMENTS // max(1, samples.shape[1] * pool.shape[0]))
    for start in range(0, theta.shape[0], block):  # blocks bound the [B, k, N] mask, not a loop per unit
        rows = slice(start, start + block)
        own = (samples[rows, :, None] == pool_samples[None, None, :]).any(dim=1)  # [B, N]
        near = (F.normalize(theta[rows].float(), dim=-1) @ unit_pool.T).masked_fill(own, float("-inf")).topk(count, dim=1)
        kept = near.values.isfinite().unsqueeze(-1).float()  # [B, count, 1]
        means[rows] = (pool[near.indices] * kept).sum(dim=1) / kept.sum(dim=1).clamp_min(1.0)
    return means


def contrastive_scores(
    theta: torch.Tensor, negatives: torch.Tensor, concepts: torch.Tensor, null: torch.Tensor | None, weight: float = CONTRAST_WEIGHT
) -> torch.Tensor:
    """``alignment(theta, c) - weight * alignment(negatives, c)`` ``[U, C]`` (negatives: ``look_alike_negatives``)."""
    return alignment(theta, concepts, null) - weight * alignment(negatives, concepts, null)


def alignment_method_scores(method: str, alignments: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The scores of one of the ``ALIGNMENT_METHODS`` from the layer's Eq. 4 ``alignments [U, C]``."""
    return alignments if method == "alignment" else centred_scores(alignments, valid)


def response_scores(centred: torch.Tensor, effects: torch.Tensor) -> torch.Tensor:
    """The ``responses`` method ``[U, C]``: the ``centred`` scores and the partial effects
    (``analysis.responses.partial_effects``), each standardised over the concepts per unit, summed."""
    return standardised(centred) + standardised(effects)


def standardised(scores: torch.Tensor) -> torch.Tensor:
    """Each row ``[U, C]`` less its mean over its (population) standard deviation (a constant row, or a vocabulary of
    one concept, becomes zeros: the sample deviation of one value is NaN and warns)."""
    centred = scores - scores.mean(dim=1, keepdim=True)
    return centred / centred.std(dim=1, keepdim=True, correction=0).clamp_min(1e-12)


def centred_scores(alignments: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``alignments [U, C]`` less each concept's mean over the ``valid`` units (unchanged with fewer than
    ``MIN_CENTRED_UNITS`` of them)."""
    if int(valid.sum()) < MIN_CENTRED_UNITS:
        return alignments
    return alignments - alignments[valid].mean(dim=0, keepdim=True)


def distinct_crops(examples: torch.Tensor, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct example embeddings ``[N, d]`` of sets ``[U, k, d]`` with their samples ``[N]`` (empty
    slots dropped; a crop that several units share counts once)."""
    filled = ~examples.isnan().any(dim=-1)
    rows, row_samples = examples[filled], samples[filled]
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1 if len(inverse) else 0,), len(inverse), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(len(inverse)), reduce="amin")
    return rows[first], row_samples[first]


def method_scores(
    method: str,
    theta: torch.Tensor,
    examples: torch.Tensor | None,
    samples: torch.Tensor | None,
    valid: torch.Tensor,
    concepts: torch.Tensor,
    null: torch.Tensor | None,
    prior_sets: torch.Tensor | None = None,
) -> torch.Tensor:
    """One layer's scores ``[U, C]`` by ``method`` from its theta ``[U, d]``, example embeddings ``[U, k, d]``
    and samples ``[U, k]`` (None for the ``ALIGNMENT_METHODS``, which need theta only); the ``valid`` units'
    examples (inactive and tied units left out) give the contrastive negatives, and clip-dissect's prior
    sets unless ``prior_sets`` are given; ``centred`` centres over the ``valid`` units."""
    if check_method(method) in ALIGNMENT_METHODS:
        return alignment_method_scores(method, alignment(theta, concepts, null), valid)
    if method == "clip-dissect":
        return clip_dissect_scores(examples, concepts, examples[valid] if prior_sets is None else prior_sets)
    if method == "responses":
        raise SemlensError("the responses method needs the Lens's crop responses: label with Lens.label(method='responses')")
    pool, pool_samples = distinct_crops(examples[valid], samples[valid])
    negatives = look_alike_negatives(theta, samples, pool, pool_samples, examples.shape[1])
    return contrastive_scores(theta, negatives, concepts, null)
