"""A TopK sparse autoencoder on the concept world's classifier, end to end.

Trains a TopK SAE (plain torch, SAELens's TopK: the k largest pre-activations through ReLU) on the
per-position activations of one layer of ``zoo:world-cnn`` over the world's probe images, writes it as
a SAELens directory (``cfg.json`` + ``sae_weights.safetensors``), builds a Lens that reads the layer
through it (class relevance and relevance crops through the SAE), labels it and audits the world's
artefact class. Prints the SAE's fraction of variance explained, the error term's mean share of the
layer's relevance, and the audit's flagged features with their shares.

    python benchmarks/sae_world.py --out /tmp/sae-world [--layer features.14] [--d-sae 256] [--k 8]
                                   [--steps 1000] [--train-images 300] [--probe-images 1200]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from semlens import BuildConfig, build_lens, load_model
from semlens.data import load_data
from semlens.model.units import hooks, resolve_module
from semlens.world.demo import PROBE_IMAGES, K
from semlens.world.render import WorldConfig
from semlens.world.vocabulary import world_vocabulary


def activations(layer: str, images: int) -> torch.Tensor:
    """The layer's output at every position of ``images`` probe images, ``[positions, channels]``."""
    model, data = load_model("zoo:world-cnn"), load_data(f"world::{images}:probe")
    captured: list[torch.Tensor] = []
    module = resolve_module(model.module, layer)
    with hooks([module.register_forward_hook(lambda _m, _i, out: captured.append(out.movedim(1, -1).flatten(0, 2)))]), torch.no_grad():
        for start in range(0, len(data), 100):
            model.module(torch.stack([model.preprocessing(data.load(i)) for i in range(start, min(start + 100, len(data)))]))
    return torch.cat(captured)


def train_topk(x: torch.Tensor, d_sae: int, k: int, steps: int, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A TopK SAE fitted to ``x`` by Adam on the reconstruction error (unit-norm decoder rows)."""
    generator = torch.Generator().manual_seed(seed)
    decoder = torch.randn(d_sae, x.shape[1], generator=generator)
    decoder = torch.nn.Parameter(decoder / decoder.norm(dim=1, keepdim=True))
    encoder = torch.nn.Parameter(decoder.detach().T.clone())
    bias, decoder_bias = torch.nn.Parameter(torch.zeros(d_sae)), torch.nn.Parameter(x.mean(0).clone())
    optimiser = torch.optim.Adam([decoder, encoder, bias, decoder_bias], lr=2e-3)
    for _ in range(steps):
        rows = x[torch.randint(len(x), (batch,), generator=generator)]
        pre = (rows - decoder_bias) @ encoder + bias
        values, indices = pre.topk(k, dim=1)
        codes = torch.zeros_like(pre).scatter(1, indices, values.relu())
        loss = ((codes @ decoder + decoder_bias - rows) ** 2).sum(1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            decoder /= decoder.norm(dim=1, keepdim=True)
    return {"W_enc": encoder.detach(), "b_enc": bias.detach(), "W_dec": decoder.detach(), "b_dec": decoder_bias.detach()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layer", default="features.14")
    parser.add_argument("--d-sae", type=int, default=256)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--probe-images", type=int, default=PROBE_IMAGES)
    args = parser.parse_args()
    torch.manual_seed(0)

    x = activations(args.layer, args.train_images)
    weights = train_topk(x, args.d_sae, args.k, args.steps, args.batch)
    folder = args.out / "sae"
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architecture": "topk", "d_in": x.shape[1], "d_sae": args.d_sae, "k": args.k, "apply_b_dec_to_input": True,
              "normalize_activations": "none", "hook_name": args.layer}  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(config, indent=1))
    save_file({name: tensor.contiguous() for name, tensor in weights.items()}, str(folder / "sae_weights.safetensors"))

    from semlens.model.sae import SparseAutoencoder

    sae = SparseAutoencoder.load(folder)
    residual = x - sae.decode(sae.encode(x))
    explained = 1 - float(residual.pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    print(f"SAE {args.layer}: topk, d_sae {args.d_sae}, k {args.k}; variance explained {explained:.3f} on {len(x)} positions", flush=True)

    settings = BuildConfig(model="zoo:world-cnn", layers=["features.10", f"{args.layer}:sae={folder}"],
                           data=f"world::{args.probe_images}:probe", foundation="world", k=K)  # fmt: skip
    lens = build_lens(settings, args.out / "sae.lens", progress=False)
    lens.label(world_vocabulary(WorldConfig.load(None)))
    valid = lens.arrays.valid(args.layer)
    print(f"{lens.manifest['layers'][args.layer]['crop']['mode']} crops; {int(valid.sum())} of {args.d_sae} features with examples of their own")
    audit = lens.audit("star", ["star"], ["watermark"], layers=[args.layer])
    flagged = [unit for unit in audit.units if unit.verdict == "spurious"]
    print(f"audit of star on the SAE features: {len(audit.units)} relevant, {len(flagged)} spurious "
          f"({audit.shares['spurious']:.2f} of the class's relevance): "
          + ", ".join(f"{unit.unit} ({lens.labels.label_of(unit.unit)})" for unit in flagged[:8]))  # fmt: skip


if __name__ == "__main__":
    main()
