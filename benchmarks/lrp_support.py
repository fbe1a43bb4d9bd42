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
"""

from __future__ import annotations

import argparse

import torch

from semlens.relevance.lrp import RelevanceModel

DEFAULT = [
    "resnet18", "seresnet18", "ecaresnet26t", "regnety_002", "regnetx_002", "mobilenetv3_small_100", "mobilenetv3_large_100",
    "rexnet_100", "semnasnet_050", "tf_efficientnet_lite0", "efficientnet_b0", "ghostnet_100", "skresnet18", "resnest14d", "mixnet_s", "densenet121",
    "resnetv2_50", "dla34", "convnext_atto", "vit_tiny_patch16_224", "deit3_small_patch16_224", "swin_tiny_patch4_window7_224",
]  # fmt: skip


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


def main() -> None:
    import timm

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=DEFAULT, help="timm model names")
    parser.add_argument("--calibrate", action="store_true", help="batch-norm statistics measured on random images first")
    parser.add_argument("--init-values", type=float, default=None, help="layer scales' initial value (timm's init_values; models that have them)")
    parser.add_argument("--size", type=int, default=96, help="side of the two random probe images (models of a fixed input size take theirs)")
    args = parser.parse_args()
    for name in args.models:
        torch.manual_seed(0)
        scales = {} if args.init_values is None else {"init_values": args.init_values}
        model = timm.create_model(name, pretrained=False, num_classes=10, **scales).eval()
        config = model.pretrained_cfg
        size = config["input_size"][-1] if config.get("fixed_input_size") else args.size
        probe = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        if args.calibrate:
            calibrate(model, size)
        report = RelevanceModel(model, probe).check()
        print(f"{name:<24} {'supported' if report.supported else 'refused':<9}  {report.reason[:300]}")


if __name__ == "__main__":
    main()
