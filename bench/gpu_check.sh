#!/usr/bin/env bash
# One-shot CUDA check, run by hand on a GPU machine (never in CI): the AMP training paths (fp32/bf16/fp16 with
# channels-last), evaluation on the GPU, and the model-speed table with CUDA timings.
#   bash bench/gpu_check.sh            # writes bench/results/model_speed_cuda.json (or $OUT/...)
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
RESULTS=${OUT:-bench/results}
W=$(mktemp -d)
python3 -c "import torch, timm, torchvision; print('torch', torch.__version__, 'timm', timm.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
python3 -m mammodetr synth --out "$W/raw" --patients 24 --size 640 512 --format png --seed 0 --no-progress
python3 -m mammodetr prepare --source csv --input "$W/raw/table.csv" --out "$W/ds" --workers 8 --no-progress | tail -1
python3 -m mammodetr split --data "$W/ds" --seed 0 | tail -1
for prec in fp32 bf16 fp16; do
  echo "== train convnextv2_tiny 512 px, precision $prec"
  python3 -m mammodetr train --data "$W/ds" --backbone convnextv2_tiny --pretrained none --out "$W/run_$prec" \
    --epochs 2 --batch-size 16 --precision "$prec" --channels-last --workers 4 --no-progress 2>&1 | grep -E "epoch|stopped|Error|error" | tail -4
done
echo "== evaluate on cuda"
python3 -m mammodetr evaluate --data "$W/ds" --split test --checkpoint "$W/run_bf16" --out "$W/eval" --device cuda --bootstrap 200 2>&1 | tail -3
echo "== model speed on cuda"
python3 bench/model_speed.py --device cuda --precisions fp32 bf16 --iters 5 --warmup 2 --train-batch 16 --out "$RESULTS/model_speed_cuda.json"
