"""What a CRP relevance crop costs: per (unit, example) pair, as a multiple of one no-grad forward pass
of the whole model on the same images, at several pairs per backward pass and input sizes, with
semlens' composite (``relevance/rules.py``) and zennit's own ``EpsilonPlusFlat`` side by side.

``--model small-cnn``: four convolutions, the last one, ``relu4``, with ``--units`` channels, then a
linear head. ``--model resnet18``: torchvision's ResNet-18 (random weights), units at ``layer4`` (512); ``--model resnet50``: timm's
ResNet-50 (random weights), ``layer4`` (2 048; ``--layer layer3``: 1 024), the GPU regime of issue 60. ``--profile``
prints where one pass of the largest batch spends its time (torch.profiler).
``--model mobilenet``: timm's MobileNetV3-Large (random weights), units at ``blocks.4`` (112): Hardswish
inputs, depthwise convolutions and linear bottlenecks, where semlens' convolutions take the signed rule;
``--rules hooks`` times semlens' composite with that rule computed by zennit's four-branch hook (reading its
branches on the host, so on a GPU compare it with ``semlens-exact``)
(``SignedZPlus``) instead of directly (``LeanZPlus._signed``), the same relevance. ``--rules semlens-exact`` times
semlens' composite reading each convolution's branch on the host in every pass, where ``semlens`` guesses it on a GPU
as a build does (``rules.Speculation``); on a CPU the two are the same.
Random images; each unit's ``--samples`` examples are the images where it fires most (mean
activation), as the collection pass picks them, and the pairs are ordered by sample as ``CropStage``
orders them. For each input size and each ``--batches`` value B, one round times ``crp_heatmaps`` on
the first ``--pairs`` pairs, B per call, with each rule, then the whole model (no grad) on the same
images, B per call: the ratio is batch-matched. Rounds alternate ``--repeats`` times and the medians
are printed, so a load that changes during the run touches all sides alike. The regime (cores, torch
threads, load average before and after) is printed with the figures.

Measured on the 2-core development CPU, one torch thread (``--threads 1``: on this shared machine two
threads wait on each other whenever another process runs, which swamps the figures), load average 3 to
4, medians of 3 rounds: a pair costs, in forward passes, for the small CNN (512 pairs) 2.2 to 2.9 with
semlens' rules against 5.9 to 7.1 with zennit's; for ResNet-18 at 128 px (``layer4``, 256 pairs) 2.9
to 3.1 at 16 and 64 pairs per pass, 3.5 at 256 (the build passes 49 at 128 px), against 7.2 to 8.9.

On a GPU the build computes heatmaps in float32 proper (``strict_float32``: LRP's check fails under
TF32); ``--math float32 tf32`` times both, alternating, so the ratio says what that costs.

``--shared`` also times one forward per distinct sample shared by that sample's pairs, two ways. With zennit's
rules (semlens' ZPlus reads which channels carry relevance, a data-dependent step vmap cannot batch): the pairs'
backward passes batched with ``torch.autograd.grad(is_grads_batched=True)`` (vmap). Its heatmaps are exact, but on a
CPU vmap runs the convolutions' backward once per pair, so it is slower. With semlens' rules ("rounds"): one backward
pass per round, round r the r-th pair of every sample, through the one forward pass (``retain_graph``); exact too,
and on a CPU slower as well, with 1.8 distinct samples a pass (the build's order) and with 25.5
(docs/explanation/performance.md). The build keeps one forward per pair.

Exactness: semlens' heatmaps of the first ``--check`` pairs are compared with zennit's, and the
batched heatmaps with one pair per call (max |difference| / max |map|).

    PYTHONPATH=tests/support python benchmarks/crops.py [--model small-cnn|resnet18|mobilenet] [--sizes 64 128]
        [--batches 16 64 256] [--pairs 512] [--rules semlens zennit hooks] [--threads 1] [--math float32 tf32]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn
from zennit.composites import EpsilonPlusFlat

from semlens._util.devices import strict_float32
from semlens.model.units import hooks, resolve_module
from semlens.pipeline.embed import chunks
from semlens.relevance.lrp import ATTRIBUTED, RelevanceModel, _Stop, crp_heatmaps
from semlens.relevance.rules import LeanZPlus, SignedZPlus


def small_cnn(units: int) -> nn.Sequential:
    """Four convolutions down to an 8x8 map (at 64x64 input) with ``units`` channels, then a linear head."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 32, 3, stride=2, padding=1), relu1=nn.ReLU(),
            conv2=nn.Conv2d(32, 64, 3, padding=1), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
            conv3=nn.Conv2d(64, 128, 3, padding=1), relu3=nn.ReLU(), pool3=nn.MaxPool2d(2),
            conv4=nn.Conv2d(128, units, 3, padding=1), relu4=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(units, 10),
        )  # fmt: skip
    ).eval()


def resnet(units: int) -> nn.Module:  # noqa: ARG001 (layer4 has 512 units)
    from torchvision.models import resnet18

    return resnet18(num_classes=10).eval()


def resnet50(units: int) -> nn.Module:  # noqa: ARG001 (layer4 has 2 048 units, layer3 1 024)
    import timm

    return timm.create_model("resnet50", pretrained=False).eval()


def mobilenet(units: int) -> nn.Module:  # noqa: ARG001 (blocks.4 has 112 units)
    import timm

    return timm.create_model("mobilenetv3_large_100", pretrained=False, num_classes=10).eval()


class HookedSignedZPlus(LeanZPlus):
    """semlens' convolution rule with its signed rule computed by zennit's four-branch hook, as before
    ``LeanZPlus._signed`` computed it directly."""

    def _signed(self, module: nn.Module, grad_input: tuple, grad: torch.Tensor, every_channel: bool = False) -> tuple[torch.Tensor | None, ...]:
        return SignedZPlus.backward(self, module, grad_input, (grad,))


def with_hooked_signed_rule(composite):
    """``composite`` (semlens') with ``HookedSignedZPlus`` for its convolutions."""
    composite.layer_map = [(kind, HookedSignedZPlus() if isinstance(rule, LeanZPlus) else rule) for kind, rule in composite.layer_map]
    return composite


#: heatmap arithmetic: float32 proper, as the build runs it, or torch's default (TF32 convolutions on GPUs)
MATH: dict[str, Callable[[], contextlib.AbstractContextManager]] = {"float32": strict_float32, "tf32": contextlib.nullcontext}

#: model name: (builder from --units, the CRP layer)
MODELS: dict[str, tuple[Callable[[int], nn.Module], str]] = {
    "small-cnn": (small_cnn, "relu4"),
    "resnet18": (resnet, "layer4"),
    "resnet50": (resnet50, "layer4"),
    "mobilenet": (mobilenet, "blocks.4"),
}


@contextlib.contextmanager
def ruled(relevance: RelevanceModel, composite, rule: str, math: str, model: nn.Module):
    """The model under ``composite``'s rules in ``math``. semlens' passes run as a build's (``crp_heatmaps`` with the
    model ``relevance`` attributes: guessing their branches on a GPU, ``rules.Speculation``, and releasing what the
    rules kept after each pass); ``semlens-exact``'s read every branch on the host and keep the last pass's inputs
    until the next replaces them, as before either."""
    with MATH[math](), composite.context(model) as modified:
        if rule == "semlens":
            ATTRIBUTED[modified] = relevance
        try:
            yield modified
        finally:
            ATTRIBUTED.pop(modified, None)


def top_samples(model: nn.Module, layer: str, images: torch.Tensor, samples: int) -> torch.Tensor:
    """``[U, samples]`` ids: per unit of the CRP layer, the images with the highest mean activation."""
    captured: list[torch.Tensor] = []
    with hooks([resolve_module(model, layer).register_forward_hook(lambda _m, _i, output: captured.append(output))]), torch.no_grad():
        model(images)
    return captured[0].mean(dim=(2, 3)).T.topk(samples, dim=1).indices


def shared_forward(modified: nn.Module, layer: str, images: torch.Tensor, samples: torch.Tensor):
    """One forward pass per distinct sample of ``samples`` (sorted) to ``layer``: the inputs (a leaf), the layer's
    activation, each pair's distinct sample (``slot``), its round among that sample's pairs (``rank``), the rounds."""
    distinct, slot = torch.unique_consecutive(samples, return_inverse=True)
    counts = torch.bincount(slot)
    rank = torch.arange(len(samples), device=samples.device) - (torch.cumsum(counts, 0) - counts)[slot]
    captured: list[torch.Tensor] = []

    def stop(_module, _inputs, output):
        captured.append(output)
        raise _Stop

    inputs = images[distinct].requires_grad_(True)
    try:
        with hooks([resolve_module(modified, layer).register_forward_hook(stop)]), torch.enable_grad():
            modified(inputs)
    except _Stop:
        pass
    return inputs, captured[0], slot, rank, int(counts.max())


def shared_forward_heatmaps(
    modified: nn.Module, layer: str, images: torch.Tensor, samples: torch.Tensor, channels: torch.Tensor
) -> torch.Tensor:
    """``crp_heatmaps`` with one forward per distinct sample: round r backpropagates the r-th pair of
    every sample, all rounds in one vmapped backward pass (``samples`` sorted)."""
    inputs, activation, slot, rank, rounds = shared_forward(modified, layer, images, samples)
    initial = torch.zeros(rounds, *activation.shape, device=activation.device)
    initial[rank, slot, channels] = activation[slot, channels].detach()
    (relevance,) = torch.autograd.grad(activation, inputs, grad_outputs=initial, is_grads_batched=True)
    return relevance[rank, slot].sum(dim=1)


def rounds_heatmaps(
    modified: nn.Module, layer: str, images: torch.Tensor, samples: torch.Tensor, channels: torch.Tensor
) -> torch.Tensor:
    """``crp_heatmaps`` with one forward per distinct sample and one backward pass per round: round r
    backpropagates the r-th pair of every sample through that forward pass (``samples`` sorted)."""
    inputs, activation, slot, rank, rounds = shared_forward(modified, layer, images, samples)
    heat = inputs.new_empty(len(samples), *inputs.shape[2:])
    for round in range(rounds):
        pairs = (rank == round).nonzero().flatten()
        start = torch.zeros_like(activation)
        start[slot[pairs], channels[pairs]] = activation[slot[pairs], channels[pairs]].detach()
        (relevance,) = torch.autograd.grad(activation, inputs, grad_outputs=start, retain_graph=round < rounds - 1)
        heat[pairs] = relevance[slot[pairs]].sum(dim=1)
    return heat.detach()


def profile(kinds, relevance: RelevanceModel, composites, model: nn.Module, heatmaps: Callable, batch: int, size: int, device: str) -> None:
    """Where one pass of ``batch`` pairs spends its time, per kind: the wall, the GPU's busy time, and the busiest
    operations by GPU time (torch.profiler), so that launch-bound passes show as a GPU idle much of the wall."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    for name, rule, math in kinds:
        with ruled(relevance, composites[rule], rule, math, model) as modified:
            heatmaps(modified, 0, batch)
            sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
            sync()
            with profiler(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as run:
                start = time.perf_counter()
                heatmaps(modified, 0, batch)
                sync()
                wall = time.perf_counter() - start
        events = run.key_averages()
        busy = sum(event.self_device_time_total for event in events) / 1e6
        print(f"{size:4d}  profile {name}, {batch} pairs: wall {wall * 1e3:.1f} ms, GPU busy {busy * 1e3:.1f} ms ({busy / wall:.0%}); "
              f"{sum(event.count for event in events if event.key in ('aten::_local_scalar_dense', 'aten::nonzero'))} reads on the host")  # fmt: skip
        print(events.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="small-cnn")
    parser.add_argument("--units", type=int, default=512, help="channels of the small CNN's CRP layer")
    parser.add_argument("--samples", type=int, default=30, help="examples per unit")
    parser.add_argument("--images", type=int, default=256, help="random images the examples are picked from")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="input sides in pixels")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256], help="pairs per backward pass")
    parser.add_argument("--pairs", type=int, default=512, help="pairs timed per setting (the first, in sample order)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; medians are printed")
    parser.add_argument("--check", type=int, default=64, help="pairs compared across rules and with one pair per call")
    parser.add_argument("--rules", nargs="+", choices=["semlens", "semlens-exact", "zennit", "hooks"], default=["semlens", "zennit"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (then the regime names the GPU)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 is steadier on a shared machine")
    parser.add_argument("--math", nargs="+", choices=MATH, default=["float32"], help="float32 proper (as the build) and/or TF32 (GPUs)")
    parser.add_argument("--layer", help="the CRP layer (default: the model's, above)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler's busiest operations over one pass of the largest batch per kind")
    parser.add_argument("--shared", action="store_true", help="also time one shared forward per distinct sample (vmap with zennit's rules; rounds with semlens')")
    args = parser.parse_args()
    if args.check < 1:
        parser.error(f"--check {args.check}: give at least 1 pair (the heatmaps are compared on those pairs)")
    if args.shared and not {"zennit", "semlens"} <= set(args.rules):
        parser.error("--shared runs with zennit's rules (vmap) and semlens' (rounds): give both in --rules")

    build, layer = MODELS[args.model]
    layer = args.layer or layer
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"regime: {torch.cuda.get_device_name() + ', ' if args.device.startswith('cuda') else ''}CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
        f"torch threads, torch {torch.__version__}; load average {os.getloadavg()[0]:.1f} before; {args.model} "
        f"(units at {layer}), {args.samples} samples per unit from {args.images} random images"
    )
    # each timed kind: (its column's name, rule, math); the last one's single-pair heatmaps are the reference
    kinds = [(f"{rule}/{math}" if len(args.math) > 1 else rule, rule, math) for rule in args.rules for math in sorted(args.math, reverse=True)]
    print("size  pairs/pass  distinct/pass  forward ms/image" + "".join(f"  {name} ms/pair  ratio" for name, _, _ in kinds) + ("  shared ms/pair  ratio  rounds ms/pair  ratio" * args.shared))
    for size in args.sizes:
        model = build(args.units).to(args.device)
        images = torch.rand(args.images, 3, size, size).to(args.device)
        ids = top_samples(model, layer, images, args.samples)
        unit_of = torch.arange(ids.shape[0], device=ids.device).repeat_interleave(args.samples)
        flat_ids = ids.reshape(-1)
        order = torch.argsort(flat_ids, stable=True)[: args.pairs]  # by sample, as the build orders them
        samples, channels = flat_ids[order], unit_of[order]
        relevance = RelevanceModel(model, images[:2])
        assert relevance.check().supported, relevance.check().reason
        composites = {
            "semlens": relevance.composite,
            "semlens-exact": relevance.composite,
            "zennit": EpsilonPlusFlat(epsilon=relevance.epsilon, canonizers=relevance.composite.canonizers),
            "hooks": with_hooked_signed_rule(RelevanceModel(model, images[:2]).composite),
        }
        times: dict[tuple[str, int], list[float]] = {}

        peaks: dict[tuple[str, int], float] = {}

        def timed(kind: str, batch: int, run: Callable[[int, int], object]) -> None:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            for begin, end in chunks(len(order), batch):
                run(begin, end)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
                peaks[kind, batch] = max(peaks.get((kind, batch), 0.0), torch.cuda.max_memory_allocated() / 2**30)
            times.setdefault((kind, batch), []).append((time.perf_counter() - start) / len(order))

        def heatmaps(modified: nn.Module, begin: int, end: int) -> torch.Tensor:
            return crp_heatmaps(modified, images[samples[begin:end]], layer, channels[begin:end], torch.ones(end - begin, device=args.device))

        check = min(args.check, len(order))
        maps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, rule, math in kinds:
            with ruled(relevance, composites[rule], rule, math, model) as modified:
                heatmaps(modified, 0, 2)  # warm-up
                single = torch.cat([heatmaps(modified, i, i + 1) for i in range(check)])
                maps[name] = (heatmaps(modified, 0, check), single)
                if args.shared and rule == "zennit" and math == kinds[-1][2]:
                    maps["shared"] = (shared_forward_heatmaps(modified, layer, images, samples[:check], channels[:check]), single)
                if args.shared and rule == "semlens" and math == kinds[-1][2]:
                    maps["rounds"] = (rounds_heatmaps(modified, layer, images, samples[:check], channels[:check]), single)
        for _ in range(args.repeats):
            for batch in args.batches:
                for name, rule, math in kinds:
                    with ruled(relevance, composites[rule], rule, math, model) as modified:
                        timed(name, batch, lambda b, e: heatmaps(modified, b, e))
                        if args.shared and rule == "zennit" and math == kinds[-1][2]:
                            timed("shared", batch, lambda b, e: shared_forward_heatmaps(modified, layer, images, samples[b:e], channels[b:e]))
                        if args.shared and rule == "semlens" and math == kinds[-1][2]:
                            timed("rounds", batch, lambda b, e: rounds_heatmaps(modified, layer, images, samples[b:e], channels[b:e]))
                with torch.no_grad():
                    timed("forward", batch, lambda b, e: model(images[samples[b:e]]))
        for batch in args.batches:
            per_image = statistics.median(times["forward", batch])
            distinct = sum(len(torch.unique(samples[b:e])) for b, e in chunks(len(order), batch)) / len(range(0, len(order), batch))
            row = f"{size:4d}  {batch:10d}  {distinct:13.1f}  {per_image * 1e3:16.2f}"
            for name in [name for name, _, _ in kinds] + ["shared", "rounds"] * args.shared:
                per_pair = statistics.median(times[name, batch])
                row += f"  {per_pair * 1e3:{len(name) + 8}.2f}  {per_pair / per_image:5.2f}"
            print(row, flush=True)
        if peaks:
            print(f"{size:4d}  peak GiB a pass (model and images included): " + "; ".join(
                f"{name} " + ", ".join(f"{batch}: {peaks[name, batch]:.2f}" for batch in args.batches)
                for name in [name for name, _, _ in kinds] + ["shared", "rounds"] * args.shared))  # fmt: skip
        if args.profile:
            profile(kinds, relevance, composites, model, heatmaps, max(args.batches), size, args.device)
        reference = maps[kinds[-1][0]][1]
        peak = reference.abs().flatten(1).amax(1).clamp_min(1e-30)  # a unit that never fired has an all-zero map
        gaps = {
            f"{rule} {kind}": float(((heat - reference).abs().flatten(1).amax(1) / peak).max())
            for rule, (batched, single) in maps.items()
            for kind, heat in (("batched", batched), ("one per call", single))
            if rule not in ("shared", "rounds") or kind == "batched"
        }
        print(f"{size:4d}  heatmaps of {check} pairs against {kinds[-1][0]}'s one pair per call: max |difference| / max |map| = "
              + ", ".join(f"{gap:.1e} {name}" for name, gap in gaps.items()))  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.1f} after; {len(order)} pairs timed per setting, medians of {args.repeats} rounds")


if __name__ == "__main__":
    main()
