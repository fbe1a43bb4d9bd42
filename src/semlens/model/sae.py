"""Sparse autoencoders (SAEs) whose features become a layer's units.

Two on-disk formats are read:

- SAELens: a directory with ``cfg.json`` and ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``,
  ``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``, ``threshold`` or ``log_threshold`` for JumpReLU);
  ``sae=`` names the directory or its ``cfg.json``;
- semlens's own safetensors file: ``W_enc`` and ``b_enc``, optional ``b_dec`` (subtracted from the
  input), ``threshold`` (JumpReLU, else ReLU) and ``W_dec`` (needed for relevance and pruning).

Three architectures, as SAELens computes them from ``pre = (x - b_dec) @ W_enc + b_enc``:
``standard`` ReLU(pre); ``jumprelu`` ReLU(pre) where pre > ReLU(threshold), else 0; ``topk`` the k largest
pre-activations of each position through ReLU, every other feature 0. Settings that change this
arithmetic and that semlens does not implement (activation normalisation, gated SAEs, ...) are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .._util.errors import LayerError
from .._util.fingerprint import hash_file, hash_json

ARCHITECTURES = ("standard", "jumprelu", "topk")
SAELENS_CONFIG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
#: SAELens settings that must have one of these values (the first is the default when absent)
SUPPORTED_SETTINGS = {
    "normalize_activations": ("none", None),
    "reshape_activations": ("none", None),
    "finetuning_scaling_factor": (False, None),
}


def sae_files(path: str | Path) -> list[Path]:
    """The files an SAE spec reads: the semlens safetensors file, or a SAELens directory's config and weights."""
    path = Path(path)
    if path.is_dir() or path.name == SAELENS_CONFIG:
        folder = path if path.is_dir() else path.parent
        return [folder / SAELENS_CONFIG, folder / SAELENS_WEIGHTS]
    return [path]


def sae_fingerprint(path: str | Path) -> str:
    """Fingerprint of every file the SAE at ``path`` is read from (a missing file is an error)."""
    files = sae_files(path)
    for file in files:
        if not file.is_file():
            raise LayerError(f"cannot read SAE weights from {path}: {file} is missing")
    hashes = [hash_file(file) for file in files]
    return hashes[0] if len(hashes) == 1 else hash_json(hashes)


def has_decoder(path: str | Path) -> bool:
    """Whether the SAE at ``path`` has ``W_dec`` (SAELens always has; a semlens file may not): relevance and
    pruning in SAE space need it."""
    from safetensors import SafetensorError, safe_open

    if sae_files(path)[0].name == SAELENS_CONFIG:
        return True
    try:
        with safe_open(str(path), "pt") as handle:
            return "W_dec" in handle.keys()
    except (OSError, RuntimeError, SafetensorError) as error:
        raise LayerError(f"cannot read SAE weights from {path} (a safetensors file is expected): {error}") from error


def sae_summary(description: dict[str, Any] | None) -> str:
    """One table cell for ``describe()``: ``topk SAE, d_sae 16384, k 64``; ``-`` for a plain layer."""
    if description is None:
        return "-"
    return f"{description['architecture']} SAE, d_sae {description['d_sae']}" + (f", k {description['k']}" if description.get("k") else "")


@dataclass
class SparseAutoencoder:
    """An SAE's weights and architecture; ``encode`` gives the features, ``decode`` the reconstruction.

    ``weight`` is ``W_enc [d_in, d_sae]``, ``decoder`` ``W_dec [d_sae, d_in]`` (None when the file has none),
    ``decoder_bias`` ``b_dec`` (None: zero), subtracted from the input when ``apply_b_dec_to_input``.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    decoder_bias: torch.Tensor | None = None
    threshold: torch.Tensor | None = None
    decoder: torch.Tensor | None = None
    path: str = ""
    architecture: str = "standard"
    k: int | None = None
    apply_b_dec_to_input: bool = True
    hook_name: str | None = None

    @property
    def d_sae(self) -> int:
        return self.weight.shape[1]

    @classmethod
    def load(cls, path: str | Path, d_in: int | None = None) -> SparseAutoencoder:
        """The SAE at ``path`` (SAELens directory or ``cfg.json``, or a semlens safetensors file) for a
        layer with ``d_in`` channels (None: whatever the SAE reads)."""
        if sae_files(path)[0].name == SAELENS_CONFIG:
            return _load_saelens(Path(path), d_in)
        tensors = _read_tensors(path, Path(path))
        missing = {"W_enc", "b_enc"} - set(tensors)
        if missing:
            raise LayerError(f"SAE file {path} lacks {', '.join(sorted(missing))}; it has {', '.join(sorted(tensors))}")
        weight = tensors["W_enc"].float()
        if d_in is None:  # b_enc's length is d_sae; W_enc's other side is d_in
            d_in = weight.shape[0] if weight.shape[1] == tensors["b_enc"].shape[0] else weight.shape[1]
        if weight.shape[0] != d_in:
            if weight.shape[1] != d_in:
                raise LayerError(f"SAE W_enc {tuple(weight.shape)} in {path} does not fit the layer's {d_in} channels")
            weight = weight.T
        decoder = tensors.get("W_dec")
        if decoder is not None:
            if tuple(decoder.shape) not in ((weight.shape[1], d_in), (d_in, weight.shape[1])):
                raise LayerError(f"SAE W_dec {tuple(decoder.shape)} in {path} does not fit W_enc {tuple(weight.shape)}")
            decoder = decoder if decoder.shape[0] == weight.shape[1] else decoder.T
        architecture = "jumprelu" if "threshold" in tensors else "standard"
        return _checked(cls(weight, tensors["b_enc"], tensors.get("b_dec"), tensors.get("threshold"), decoder, str(path), architecture), d_in)

    def describe(self) -> dict[str, Any]:
        """What ``semlens info`` and the explorer show about the SAE."""
        return {
            "architecture": self.architecture, "d_in": self.weight.shape[0], "d_sae": self.d_sae, "k": self.k,
            "decoder": self.decoder is not None, "hook_name": self.hook_name,
            "format": "saelens" if sae_files(self.path)[0].name == SAELENS_CONFIG else "semlens",
        }  # fmt: skip

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - b_dec) @ W_enc + b_enc`` over the last dimension of ``x`` (b_dec only when applied to the input)."""
        if self.decoder_bias is not None and self.apply_b_dec_to_input:
            x = x - self.decoder_bias.to(x.device)
        return x @ self.weight.to(x.device) + self.bias.to(x.device)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The features ``[..., d_sae]`` of ``x`` ``[..., d_in]``."""
        pre = self.pre_activations(x)
        if self.architecture == "topk":
            values, indices = pre.topk(self.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, indices, values.relu())
        if self.architecture == "jumprelu":
            return pre.relu() * (pre > self.threshold.to(x.device).relu())
        return F.relu(pre)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``codes @ W_dec + b_dec``."""
        decoded = codes @ self.checked_decoder("decoding").to(codes.device)
        return decoded if self.decoder_bias is None else decoded + self.decoder_bias.to(codes.device)

    def checked_decoder(self, purpose: str) -> torch.Tensor:
        """``W_dec``, or an error saying that ``purpose`` needs it."""
        if self.decoder is None:
            raise LayerError(f"{purpose} needs the SAE's decoder, but {self.path} has no W_dec")
        return self.decoder

    def without(self, x: torch.Tensor, features: list[int]) -> torch.Tensor:
        """``x`` (last dimension ``d_in``) with ``features`` switched off in SAE space: the reconstruction
        without them plus the SAE's error, i.e. ``x`` minus those features' decoded share.

        The codes are those of the intact SAE: for TopK, dropping a feature does not let the next largest
        pre-activation into the top k (that would change features the user did not switch off)."""
        decoder = self.checked_decoder("switching SAE features off")
        codes = self.encode(x.float())[..., features]
        return (x.float() - codes @ decoder[features].to(x.device)).to(x.dtype)


def _read_tensors(path: str | Path, file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (OSError, RuntimeError, SafetensorError) as error:
        raise LayerError(f"cannot read SAE weights from {path} (a safetensors file is expected): {error}") from error


def _load_saelens(path: Path, d_in: int | None) -> SparseAutoencoder:
    """A SAELens directory: ``cfg.json`` (the fields of SAELens 3 to 6) and ``sae_weights.safetensors``."""
    folder = path if path.is_dir() else path.parent
    try:
        config = json.loads((folder / SAELENS_CONFIG).read_text())
    except (OSError, ValueError) as error:
        raise LayerError(f"cannot read the SAELens config {folder / SAELENS_CONFIG}: {error}") from error
    architecture, k = _architecture(config, folder)
    tensors = _read_tensors(path, folder / SAELENS_WEIGHTS)
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors["log_threshold"].exp()
    needed = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if architecture == "jumprelu" else set())
    missing = needed - set(tensors)
    if missing:
        raise LayerError(f"SAELens weights in {folder} lack {', '.join(sorted(missing))}; they have {', '.join(sorted(tensors))}")
    declared = (config.get("d_in"), config.get("d_sae"))
    if tuple(tensors["W_enc"].shape) != declared or tuple(tensors["W_dec"].shape) != declared[::-1]:
        raise LayerError(
            f"SAELens weights in {folder}: W_enc {tuple(tensors['W_enc'].shape)} and W_dec {tuple(tensors['W_dec'].shape)} "
            f"do not match cfg.json's d_in={declared[0]}, d_sae={declared[1]}"
        )
    metadata = config.get("metadata") or {}
    sae = SparseAutoencoder(
        tensors["W_enc"], tensors["b_enc"], tensors["b_dec"], tensors.get("threshold") if architecture == "jumprelu" else None,
        tensors["W_dec"], str(path), architecture, k, bool(config.get("apply_b_dec_to_input", True)),
        config.get("hook_name") or metadata.get("hook_name"),
    )  # fmt: skip
    sae = _checked(sae, declared[0] if d_in is None else d_in)
    if config.get("rescale_acts_by_decoder_norm"):
        _fold_decoder_norm(sae)
    return sae


def _architecture(config: dict[str, Any], folder: Path) -> tuple[str, int | None]:
    """The architecture and k of a SAELens config, or an error naming the unsupported setting."""
    for key, allowed in SUPPORTED_SETTINGS.items():
        if config.get(key, allowed[0]) not in allowed:
            raise LayerError(
                f"SAELens config {folder / SAELENS_CONFIG}: {key}={config[key]!r} is not supported by semlens "
                f"(supported: {allowed[0]!r}); fold it into the weights first"
            )
    architecture = config.get("architecture", "standard")
    activation = config.get("activation_fn_str", "topk" if architecture == "topk" else "relu")
    if architecture == "standard" and activation == "topk":  # SAELens < 5 wrote TopK SAEs as standard + topk
        architecture = "topk"
    if architecture not in ARCHITECTURES or activation not in ("relu", "topk") or (activation == "topk") != (architecture == "topk"):
        raise LayerError(
            f"SAELens config {folder / SAELENS_CONFIG}: architecture={architecture!r} with activation_fn_str={activation!r} "
            f"is not supported; semlens reads the architectures {', '.join(ARCHITECTURES)} (ReLU, or TopK for topk)"
        )
    if architecture != "topk":
        return architecture, None
    k = config.get("k", (config.get("activation_fn_kwargs") or {}).get("k"))
    if not isinstance(k, int) or not 0 < k <= config.get("d_sae", k):
        raise LayerError(f"SAELens config {folder / SAELENS_CONFIG}: a topk SAE needs an integer k in 1..d_sae (k or activation_fn_kwargs.k), got {k!r}")
    return architecture, k


def _fold_decoder_norm(sae: SparseAutoencoder) -> None:
    """SAELens's ``rescale_acts_by_decoder_norm`` (TopK): pre-activations times the decoder rows' norms, codes
    divided by them before decoding; folded into the weights, so that encode and decode stay plain."""
    norms = sae.decoder.norm(dim=1)
    sae.weight, sae.bias, sae.decoder = sae.weight * norms, sae.bias * norms, sae.decoder / norms[:, None]


def _checked(sae: SparseAutoencoder, d_in: int) -> SparseAutoencoder:
    """Float32, contiguous tensors whose shapes fit ``d_in`` and each other."""
    path = sae.path
    if sae.weight.shape[0] != d_in:
        raise LayerError(f"SAE W_enc {tuple(sae.weight.shape)} in {path} does not fit the layer's {d_in} channels")
    expected = {"b_enc": (sae.bias, sae.d_sae), "b_dec": (sae.decoder_bias, d_in), "threshold": (sae.threshold, sae.d_sae)}
    for name, (tensor, size) in expected.items():
        if tensor is not None and tuple(tensor.shape) != (size,):
            raise LayerError(f"SAE {name} in {path} has shape {tuple(tensor.shape)}; expected ({size},)")
    for name in ("weight", "bias", "decoder_bias", "threshold", "decoder"):
        tensor = getattr(sae, name)
        if tensor is not None:
            setattr(sae, name, tensor.float().contiguous())
    return sae
