#!/usr/bin/env bash
# The GPU figures of docs/gpu.md, on one CUDA machine with semlens installed: the
# collection pass (collect), CRP heatmaps in float32 proper against TF32 (crops), measures (measures),
# the foundation model's precisions (embedding), a whole build of a random ResNet-50 into a random
# open_clip ViT-B-32 (build), a random timm ViT-S/16 under study (vit), a random MobileNetV3-Large
# (Hardswish, linear bottlenecks: the signed z+ rule; mobile), the same ResNet-50 build with the relevance passes'
# default memory budget (8 GiB) and with none (budget: their peaks and embed stages side by side), a build on 4.2 GiB of the card
# whose relevance passes must halve instead of failing (small-gpu), the demo (demo), LRP's check on the GPU
# for models of timm, torchvision and transformers with their heatmaps against the CPU's and LRP's time
# against a plain gradient (lrp), builds of a torchvision Swin-T and a timm EVA-02 with relevance crops
# (swin-eva), and of a BiT ResNetV2 (weight-standardised convolutions: bit), the map cells' measured placement on
# trained models on the CPU and on the GPU (shift), and the quality judge on two worlds with the GPU's default
# precisions (judge), the test suite with the GPU shown to it (tests: SEMLENS_TEST_CUDA=1, so device auto takes CUDA
# and its half precisions; tests/conftest.py), class relevance predicting its own targets (class-relevance) and the
# embed stage's hand-over per dtype (handover), and both libraries against each other in issue 60's regime with top-k
# checked against a float32 brute force (reference: needs semanticlens 0.2.1's interpreter in REFERENCE_PYTHON; not
# among the parts run when none is named); micro names the first three. Run from the repository root:
#
#   bash benchmarks/gpu.sh OUT_DIR [PART ...]        (no part named: all of them)
#
# Each step's output goes to OUT_DIR/<step>.log as well as to the terminal; the build's and the demo's
# stage times and crop modes are read from their Lenses' manifest.json.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [collect crops measures embedding build budget vit mobile small-gpu demo lrp swin-eva bit shift judge tests class-relevance handover reference micro]}
shift
parts=" ${*:-micro embedding build budget vit mobile small-gpu demo lrp swin-eva bit shift judge tests class-relevance handover} "
[[ $parts == *" micro "* ]] && parts+=" collect crops measures "
mkdir -p "$out"
export PYTHONPATH="$PWD/tests/support${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SEMLENS_CACHE="$out/cache"

step() {  # step NAME COMMAND...: run, time and log one step
  local name=$1
  shift
  echo "== $name: $*" | tee "$out/$name.log"
  local start=$SECONDS
  "$@" 2>&1 | tee -a "$out/$name.log"
  echo "== $name: rc ${PIPESTATUS[0]}, wall $((SECONDS - start)) s" | tee -a "$out/$name.log"
}

stages() {  # stages LENS: each build stage's seconds and each layer's crop mode, as the manifest records them
  python3 - "$1" <<'EOF'
import json, sys
manifest = json.load(open(f"{sys.argv[1]}/manifest.json"))
for name, record in manifest["stages"].items():
    print(f"  {name}: {record.get('seconds', '?')} s")
for name, layer in manifest["layers"].items():
    crop = layer.get("crop", {})
    smaller = f"; passes {crop['pairs_per_pass']}" if "pairs_per_pass" in crop else ""
    smaller += f"; memory {crop['relevance_memory']}" if "relevance_memory" in crop else ""
    print(f"  {name}: {crop.get('mode')} crops ({crop.get('why')}){smaller}")
if "images_per_pass" in manifest["stages"].get("relevance", {}):
    print(f"  class relevance passes {manifest['stages']['relevance']['images_per_pass']}")
EOF
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import os, torch; print('torch', torch.__version__, torch.cuda.get_device_name(), os.cpu_count(), 'cores')"

if [[ $parts == *" collect "* ]]; then
  for precision in bfloat16 float32; do
    step "collect-$precision" python3 benchmarks/collect.py --model timm:resnet50:none \
      --layers layer1 layer2 layer3 layer4 fc --images 1024 --batch 128 --device cuda --precision $precision
  done
fi
if [[ $parts == *" crops "* ]]; then
  step crops python3 benchmarks/crops.py --device cuda --model resnet18 --sizes 128 224 --batches 16 64 256 \
    --rules semlens --math float32 tf32
  step crops-signed python3 benchmarks/crops.py --device cuda --model mobilenet --sizes 128 224 --batches 16 64 256 \
    --pairs 1024 --rules semlens hooks --check 16
fi
if [[ $parts == *" measures "* ]]; then
  step measures python3 benchmarks/measures.py --device cuda
fi
if [[ $parts == *" embedding "* ]]; then
  step embedding python3 benchmarks/embedding.py --device cuda --model timm:resnet50:none --layers layer4 \
    --foundation open_clip:ViT-B-32:none --images 640 --k 5 --no-every-image --repeats 2 --variants float32 bfloat16 float16
fi

if [[ $parts == *" build "* ]]; then
  step build python3 -m semlens.cli run --model timm:resnet50:none --layer layer3 --layer layer4 \
    --data world::2000:probe --foundation open_clip:ViT-B-32:none -k 10 --out "$out/r50.lens" --overwrite --no-progress
  stages "$out/r50.lens" | tee -a "$out/build.log"
fi

if [[ $parts == *" budget "* ]]; then  # the relevance passes within 8 GiB (the default) against unbounded, one call
  for gib in 8 1000; do
    step "budget-$gib" python3 -m semlens.cli run --model timm:resnet50:none --layer layer3 --layer layer4 \
      --data world::2000:probe --foundation open_clip:ViT-B-32:none -k 10 --relevance-memory-gib $gib \
      --out "$out/r50-budget-$gib.lens" --overwrite --no-progress
    stages "$out/r50-budget-$gib.lens" | tee -a "$out/budget-$gib.log"
  done
fi

if [[ $parts == *" vit "* ]]; then
  step vit python3 -m semlens.cli run --model timm:vit_small_patch16_224:none --layer blocks.5 --layer blocks.11:token=0 \
    --data world::2000:probe --foundation open_clip:ViT-B-32:none -k 10 --out "$out/vit.lens" --overwrite --no-progress
  stages "$out/vit.lens" | tee -a "$out/vit.log"
fi

if [[ $parts == *" mobile "* ]]; then
  step mobile python3 -m semlens.cli run --model timm:mobilenetv3_large_100:none --layer blocks.4 --layer blocks.6 \
    --data world::2000:probe --foundation open_clip:ViT-B-32:none -k 10 --out "$out/mobile.lens" --overwrite --no-progress
  stages "$out/mobile.lens" | tee -a "$out/mobile.log"
fi

if [[ $parts == *" small-gpu "* ]]; then  # a 4.2 GiB share of the card: relevance passes must halve, not fail
  step small-gpu python3 -c "import sys, torch; torch.cuda.set_per_process_memory_fraction(4.2 * 2**30 / torch.cuda.get_device_properties(0).total_memory)
sys.argv = ['semlens', 'run', '--model', 'timm:resnet50:none', '--layer', 'layer3', '--data', 'world::300:probe',
            '--foundation', 'open_clip:ViT-B-32:none', '-k', '5', '--out', '$out/small.lens', '--overwrite', '--no-progress']
from semlens.cli import main; main()"
  stages "$out/small.lens" | tee -a "$out/small-gpu.log"
fi

if [[ $parts == *" lrp "* ]]; then
  step lrp python3 benchmarks/lrp_support.py --device cuda resnet50 vit_small_patch16_224 swin_tiny_patch4_window7_224 \
    beit_base_patch16_224 eva02_tiny_patch14_224 convformer_s18 poolformer_s12 maxvit_nano_rw_256 edgenext_xx_small \
    efficientformer_l1 mobilenetv3_large_100 densenet121 convnext_atto torchvision:resnet50 torchvision:efficientnet_b0 \
    torchvision:vit_b_16 torchvision:swin_t torchvision:maxvit_t transformers:vit transformers:dinov2 transformers:swin \
    resnetv2_50x1_bit.goog_in21k nfnet_l0 xcit_nano_12_p16_224 inception_v3
  step lrp-calibrated python3 benchmarks/lrp_support.py --device cuda --calibrate levit_128s torchvision:inception_v3 \
    torchvision:densenet121 torchvision:mobilenet_v2 torchvision:efficientnet_b0
fi

if [[ $parts == *" bit "* ]]; then  # weight-standardised convolutions (DerivedWeights) in a whole build
  step bit python3 -m semlens.cli run --model timm:resnetv2_50x1_bit.goog_in21k:none --layer stages.2 --layer stages.3 \
    --data world::1000:probe --foundation open_clip:ViT-B-32:none -k 10 --out "$out/bit.lens" --overwrite --no-progress
  stages "$out/bit.lens" | tee -a "$out/bit.log"
fi

if [[ $parts == *" swin-eva "* ]]; then
  step swin python3 -m semlens.cli run --model torchvision:swin_t:none --layer features.5:channels_last=true \
    --layer features.7:channels_last=true --data world::1000:probe --foundation open_clip:ViT-B-32:none -k 10 \
    --out "$out/swin.lens" --overwrite --no-progress
  stages "$out/swin.lens" | tee -a "$out/swin.log"
  step eva python3 -m semlens.cli run --model timm:eva02_tiny_patch14_224:none --layer blocks.5 --layer blocks.11:token=0 \
    --data world::1000:probe --foundation open_clip:ViT-B-32:none -k 10 --out "$out/eva.lens" --overwrite --no-progress
  stages "$out/eva.lens" | tee -a "$out/eva.log"
fi

if [[ $parts == *" shift "* ]]; then  # the same images and models on both devices: the shifts should agree
  for device in cpu cuda; do
    step "shift-$device" python3 benchmarks/receptive.py --trained --device $device
  done
fi

if [[ $parts == *" judge "* ]]; then  # world foundation trained and every Lens built on the GPU; the CPU's figures: docs/quality.md
  step judge python3 benchmarks/ground_truth.py --worlds default benchmarks/worlds/patch-on-star.toml --seeds 0 \
    --out "$out/judge" --json "$out/judge.json"
fi

if [[ $parts == *" tests "* ]]; then  # the expected answers are the CPU's: a failure is a precision or a device bug
  # -v names each result as it comes; 2 threads a worker: the whole suite ran past 8 min on an H200 with 8 workers
  # of torch's default 16 threads each, on 16 cores (docs/gpu.md)
  step tests env SEMLENS_TEST_CUDA=1 OMP_NUM_THREADS=2 python3 -m pytest -v --tb=short -p no:cacheprovider -n 8 tests/unit tests/integration \
    --junitxml="$out/tests.xml" -o junit_logging=no
fi
if [[ $parts == *" class-relevance "* ]]; then
  step class-relevance python3 benchmarks/class_relevance.py --device cuda --images 256 --batch 64
fi
if [[ $parts == *" reference "* ]]; then  # issue 60's regime: both libraries, whole images and relevance crops, top-k exactness
  # REFERENCE_PYTHON: semanticlens 0.2.1's interpreter (.venv-ref by default); REFERENCE_IMAGES: the probe set's size
  step reference python3 benchmarks/reference.py --device cuda --exact --model timm:resnet50 --images "${REFERENCE_IMAGES:-10000}" \
    --k 10 --batch 64 --workers 8 --repeats 1 --crops none relevance --reference-python "${REFERENCE_PYTHON:-.venv-ref/bin/python}" \
    --workdir "$out/reference"
fi
if [[ $parts == *" handover "* ]]; then
  step handover python3 benchmarks/embedding.py --loader --device cuda
fi

if [[ $parts == *" demo "* ]]; then
  step demo python3 -m semlens.cli demo --out "$out/demo" --no-progress
  for lens in "$out"/demo/*.lens; do echo "$lens"; stages "$lens"; done | tee -a "$out/demo.log"
fi
