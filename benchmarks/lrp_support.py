"""Which timm architectures LRP explains here: each model, random weights (seeded per model), through
``RelevanceModel.check`` (rules for every module, the canonized model's outputs, conservation on a
bias-free copy), with the reason it gives.

A random initialisation can shrink activations layer by layer to 1e-5 and below, where the rules'
stabiliser (1e-6) takes a real share of the relevance: a check that fails there says little about
trained weights. ``--calibrate`` first measures every batch norm's statistics on 64 random images (a
forward in train mode), as training would, so that activations have about unit scale. Likewise a
transformer's layer scales start at 1e-6 (DeiT III), where trained ones are 0.01 and more: the class
token, which the check's bias-free copy zeroes, then only ever holds values of 1e-6; ``--init-values``
starts them (timm's ``init_values``) where trained ones are.

    PYTHONPATH=tests/support python benchmarks/lrp_support.py [--size 96] [--calibrate] [--init-values 0.01] mobilenetv3_small_100 ...

A name ``transformers:TYPE`` is transformers' image classifier of that model type at its default size
(``AutoModelForImageClassification.from_config``, its logits; ``--transformers`` checks the list below). A name
``torchvision:NAME`` is torchvision's model builder ``NAME`` instead (``--torchvision`` checks the list
below), at 224 px where its architecture fixes the size (ViT, Swin, MaxViT) and 299 px for Inception v3. A
linear layer initialised to zero (a ViT's head, timm's or torchvision's) is drawn at random instead.

``--device cuda`` runs the check on the GPU and, for a supported model, also: the heatmap of each probe
image's top logit against the CPU's (max |difference| / max |map|: the rules' device paths), and the
time of one LRP pass over ``--batch`` images against a plain gradient of the same logits, both in float32
proper (medians of 3 after a warm-up), and of preparing the model (``RelevanceModel``: its probe forwards).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Callable

import torch

from semlens._util.devices import strict_float32
from semlens.relevance.lrp import RelevanceModel

DEFAULT = [
    "resnet18", "seresnet18", "ecaresnet26t", "regnety_002", "regnetx_002", "mobilenetv3_small_100", "mobilenetv3_large_100",
    "rexnet_100", "semnasnet_050", "tf_efficientnet_lite0", "efficientnet_b0", "ghostnet_100", "skresnet18", "resnest14d", "mixnet_s", "hrnet_w18_small", "densenet121",
    "resnetv2_50", "dla34", "convnext_atto", "vit_tiny_patch16_224", "deit3_small_patch16_224", "swin_tiny_patch4_window7_224",
]  # fmt: skip


TORCHVISION = [
    "alexnet", "vgg16", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "densenet121", "googlenet", "inception_v3",
    "squeezenet1_1", "shufflenet_v2_x1_0", "mobilenet_v2", "mobilenet_v3_large", "mnasnet1_0", "efficientnet_b0",
    "efficientnet_v2_s", "regnet_y_400mf", "regnet_x_400mf", "convnext_tiny", "vit_b_16", "swin_t", "swin_v2_t", "maxvit_t",
]  # fmt: skip


TRANSFORMERS = ["vit", "dinov2", "beit", "swin", "convnext", "resnet", "regnet", "mobilenet_v2", "efficientnet", "levit"]


class Logits(torch.nn.Module):
    """A transformers classifier's logits (its forward returns an output object)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).logits


def create(name: str, init_values: float | None) -> tuple[torch.nn.Module, int]:
    """A model with random weights, seeded, and the side its input takes by default (``--size``: 0)."""
    torch.manual_seed(0)
    if name.startswith("transformers:"):
        from transformers import AutoConfig, AutoModelForImageClassification

        config = AutoConfig.for_model(name.removeprefix("transformers:"), num_labels=10)
        model = Logits(AutoModelForImageClassification.from_config(config)).eval()
        return model, getattr(config, "image_size", 0) if name.endswith(("vit", "deit", "beit", "swin", "levit")) else 0
    if name.startswith("torchvision:"):
        import torchvision.models

        name = name.removeprefix("torchvision:")
        options = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        model = getattr(torchvision.models, name)(num_classes=10, **options)
        return drawn_heads(model).eval(), 299 if name == "inception_v3" else 224 if name.startswith(("vit", "swin", "maxvit")) else 0
    import timm

    scales = {} if init_values is None else {"init_values": init_values}
    model = drawn_heads(timm.create_model(name, pretrained=False, num_classes=10, **scales)).eval()
    config = model.pretrained_cfg
    return model, config["input_size"][-1] if config.get("fixed_input_size") else 0


def drawn_heads(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with each linear layer initialised to zero (a ViT's or MLP-Mixer's head, which makes every logit
    zero: nothing to explain) drawn at random instead."""
    for layer in model.modules():
        if isinstance(layer, torch.nn.Linear) and not layer.weight.any():
            torch.nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
    return model


def calibrate(model: torch.nn.Module, size: int) -> None:
    """Every batch norm's running statistics measured on 64 random images (cumulative average), then eval mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(64, 3, size, size, generator=torch.Generator().manual_seed(1)))
    model.eval()


def top_logit(outputs: torch.Tensor) -> torch.Tensor:
    """Initial relevance: each image's largest logit, every other output zero."""
    return outputs * torch.nn.functional.one_hot(outputs.argmax(1), outputs.shape[1]).to(outputs.dtype)


def seconds(run: Callable[[], object], device: torch.device) -> float:
    """Median wall time of 3 calls after a warm-up, the device synchronised around each."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda _device: None
    run()
    times = []
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def on_device(model: torch.nn.Module, probe: torch.Tensor, device: torch.device, batch: int) -> str:
    """The heatmaps' agreement with the CPU's and LRP's time against a plain gradient, for one supported model."""
    cpu_maps = RelevanceModel(copy.deepcopy(model), probe).input_relevance(probe, top_logit)
    model = model.to(device)
    start = time.perf_counter()
    lrp = RelevanceModel(model, probe.to(device))
    prepare = time.perf_counter() - start
    maps = lrp.input_relevance(probe.to(device), top_logit).cpu()
    difference = ((maps - cpu_maps).abs().max() / cpu_maps.abs().max()).item()
    images = torch.rand(batch, *probe.shape[1:], generator=torch.Generator().manual_seed(2)).to(device)

    def gradient() -> None:
        inputs = images.clone().requires_grad_(True)
        with strict_float32():
            outputs = model(inputs)
            torch.autograd.grad(outputs, inputs, grad_outputs=top_logit(outputs))

    relevance, plain = seconds(lambda: lrp.input_relevance(images, top_logit), device), seconds(gradient, device)
    return f"vs CPU {difference:.1e}; {batch} images: LRP {relevance * 1e3:.1f} ms, gradient {plain * 1e3:.1f} ms ({relevance / plain:.2f}x); prepare {prepare:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="timm model names, or torchvision:NAME (default: the list above)")
    parser.add_argument("--calibrate", action="store_true", help="batch-norm statistics measured on random images first")
    parser.add_argument("--init-values", type=float, default=None, help="layer scales' initial value (timm's init_values; models that have them)")
    parser.add_argument("--size", type=int, default=96, help="side of the two random probe images (models of a fixed input size take theirs)")
    parser.add_argument("--torchvision", action="store_true", help="torchvision's models (TORCHVISION) instead of the default timm list")
    parser.add_argument("--transformers", action="store_true", help="transformers' classifiers (TRANSFORMERS) instead")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: the check there, the heatmaps against the CPU's, LRP's time")
    parser.add_argument("--batch", type=int, default=32, help="images per timed pass (--device cuda)")
    args = parser.parse_args()
    names = args.models or (
        [f"torchvision:{name}" for name in TORCHVISION] if args.torchvision
        else [f"transformers:{name}" for name in TRANSFORMERS] if args.transformers else DEFAULT
    )  # fmt: skip
    for name in names:
        try:
            model, fixed = create(name, args.init_values)
        except Exception as error:  # noqa: BLE001 (a library that cannot build the model: say so, go on)
            print(f"{name:<30} {'not built':<9}  {type(error).__name__}: {error}")
            continue
        size = fixed or args.size
        probe = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        if args.calibrate:
            calibrate(model, size)
        device = torch.device(args.device)
        report = RelevanceModel(copy.deepcopy(model).to(device), probe.to(device)).check()
        print(f"{name:<30} {'supported' if report.supported else 'refused':<9}  {report.reason[:300]}", flush=True)
        if report.supported and device.type == "cuda":
            print(f"{'':<41}{on_device(model, probe, device, args.batch)}", flush=True)


if __name__ == "__main__":
    main()
