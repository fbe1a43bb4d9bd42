"""Lens files as earlier builds wrote them, for the tests that check readers still answer from them."""

from __future__ import annotations

import torch

from semlens import Lens


def rewrite_as_before_rule_thetas(lens: Lens, name: str, second: str, tied: bool) -> None:
    """Rewrite the embed file ``name`` of a Lens with two crop rules in place as builds before each rule's theta
    was stored wrote it: ``theta`` the mean over both rules' boxes (``second``: the other rule's theta key) and
    every unit's ``tied`` set to ``tied``, whatever the build found; readers must derive both again."""
    stored = lens.store.read_tensors(name)
    old = {"crop_index": stored["crop_index"], "boxes": stored["boxes"], "theta": (stored["theta"] + stored[second]) / 2,
           "tied": torch.full_like(stored["tied"], tied)}  # fmt: skip
    manifest = lens.store.read_manifest()
    lens.store.write_tensors(name, old)
    manifest["arrays"][name] = lens.store.array_record(name)
    lens.store.write_manifest(manifest)
