"""Probes: text prompts (with templates) and images, embedded and compared with units' theta.

Alignment (the paper's Eq. 4) subtracts what every prompt shares: a(theta, probe) = s(theta, probe) -
s(theta, null), where null is the embedding of the empty template(s).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .._util.errors import SemlensError

#: the paper's template sets (Sec. 3.2, D.1, F): "{}" stands for the concept
TEMPLATES: dict[str, tuple[str, ...]] = {
    "search": ("{}", "a {}", "an image of a close up of {}"),
    "label": ("{}", "{}-like", "a {}", "an image of a close up of {}"),
    "audit": ("{}", "an image of {}"),
}


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A named template set (alone, or as the only item of a list) or custom templates, each holding ``{}`` once."""
    if isinstance(templates, str):
        templates = (templates,)
    if len(templates) == 1 and templates[0] in TEMPLATES:
        return TEMPLATES[templates[0]]
    bad = [template for template in templates if template.count("{}") != 1]
    if bad or not templates:
        raise SemlensError(
            f"templates must each contain '{{}}' once, or name a set ({', '.join(TEMPLATES)}); got {list(templates)}"
        )
    return tuple(templates)


def fill(concept: str, templates: Sequence[str]) -> list[str]:
    return [template.format(concept).strip() for template in templates]


def null_prompts(templates: Sequence[str]) -> list[str]:
    """The templates with an empty concept (``"a {}"`` becomes ``"a"``, ``"{}"`` the empty string)."""
    return fill("", templates)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity ``[A, B]`` of rows (Eq. 3)."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def alignment(theta: torch.Tensor, probes: torch.Tensor, null: torch.Tensor | None) -> torch.Tensor:
    """a = s(theta, probe) - s(theta, null), ``[U, P]``; without a null (image probes) just s."""
    scores = cosine(theta, probes)
    return scores if null is None else scores - cosine(theta, null.reshape(1, -1))


SCALE_FLOOR = 1e-3  # cosine differences below this are float16 storage noise, not a spread


def robust_null(null: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The median and robust spread (1.4826 MAD, at least ``SCALE_FLOOR``) ``[P]`` of a null's alignments ``[N, P]``
    (e.g. every unit of a layer with each probe): alignments are judged against other units', since every unit
    aligns a little with most prompts and their scale differs from one foundation model to the next."""
    median = null.quantile(0.5, dim=0)
    return median, (1.4826 * (null - median).abs().quantile(0.5, dim=0)).clamp_min(SCALE_FLOOR)
