#!/usr/bin/env bash
# The GPU figures of the README ("Measured on a GPU"): the collection pass, CRP heatmaps and measures
# (micro), a whole build of a random ResNet-50 into a random open_clip ViT-B-32 (build), and the demo
# (demo), on one CUDA machine with semlens installed. Run from the repository root:
#
#   bash benchmarks/gpu.sh OUT_DIR [micro] [build] [demo]        (no part named: all three)
#
# Each step's output goes to OUT_DIR/<step>.log as well as to the terminal; the build's and the demo's
# stage times and crop modes are read from their Lenses' manifest.json.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [micro] [build] [demo]}
shift
parts=" ${*:-micro build demo} "
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
    print(f"  {name}: {layer.get('crop', {}).get('mode')} crops ({layer.get('crop', {}).get('why')})")
EOF
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import os, torch; print('torch', torch.__version__, torch.cuda.get_device_name(), os.cpu_count(), 'cores')"

if [[ $parts == *" micro "* ]]; then
  for precision in bfloat16 float32; do
    step "collect-$precision" python3 benchmarks/collect.py --model timm:resnet50:none \
      --layers layer1 layer2 layer3 layer4 fc --images 1024 --batch 128 --device cuda --precision $precision
  done
  step crops python3 benchmarks/crops.py --device cuda --model resnet18 --sizes 128 224 --batches 16 64 256
  step measures python3 benchmarks/measures.py --device cuda
fi

if [[ $parts == *" build "* ]]; then
  step build python3 -m semlens.cli run --model timm:resnet50:none --layer layer3 --layer layer4 \
    --data world::2000:probe --foundation open_clip:ViT-B-32:none -k 10 --out "$out/r50.lens" --overwrite --no-progress
  stages "$out/r50.lens" | tee -a "$out/build.log"
fi

if [[ $parts == *" demo "* ]]; then
  step demo python3 -m semlens.cli demo --out "$out/demo" --no-progress
  for lens in "$out"/demo/*.lens; do echo "$lens"; stages "$lens"; done | tee -a "$out/demo.log"
fi
