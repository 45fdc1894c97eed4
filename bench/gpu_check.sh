#!/usr/bin/env bash
# One-shot CUDA check, run by hand on a GPU machine (never in CI), about 10 minutes on one H100:
#   1. the training step's host syncs (torch.cuda.set_sync_debug_mode counts) and the heads' share at batch 32,
#      512 px, bf16, channels-last, for ResNet50 and ConvNeXtV2-T (issue 11 targets: <= 2 syncs, <= 15 %);
#   2. the ConvNeXtV2-T recipe for 2 epochs on synthetic data: train img/s and GPU utilisation (is the loader
#      keeping up?); 3. the AMP paths fp32/fp16 and --compile for a few steps; 4. evaluation on the GPU;
#   5. the full model-speed table with CUDA timings.
#   bash bench/gpu_check.sh            # writes bench/results/model_speed_cuda*.json (or $OUT/...)
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
RESULTS=${OUT:-bench/results}
W=$(mktemp -d)
python3 -c "import torch, timm, torchvision; print('torch', torch.__version__, 'timm', timm.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"

echo "== 1. host syncs per step and heads' share, batch 32, 512 px, bf16, channels-last"
python3 bench/model_speed.py --device cuda --backbones resnet50 convnextv2_tiny --precisions bf16 \
  --memory-formats channels_last --train-batch 32 --iters 10 --warmup 3 --out "$RESULTS/model_speed_cuda_b32.json"

python3 -m mammodetr synth --out "$W/raw" --patients 200 --size 640 512 --format png --seed 0 --no-progress
python3 -m mammodetr prepare --source csv --input "$W/raw/table.csv" --out "$W/ds" --id-key "$W/id.key" --workers 8 --no-progress | tail -1
python3 -m mammodetr split --data "$W/ds" --seed 0 | tail -1

echo "== 2. recipes/convnextv2_tiny.sh, 2 epochs (no hub weights: --pretrained none), GPU utilisation sampled"
nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 > "$W/util.txt" &
SMI=$!
bash recipes/convnextv2_tiny.sh "$W/ds" "$W/recipe" --pretrained none --epochs 2 --eval-every 2 --no-progress 2>&1 \
  | grep -E "epoch|stopped|Error|error" | tail -4
kill "$SMI"
python3 - "$W/recipe/metrics.jsonl" "$W/util.txt" <<'EOF'
import json, statistics, sys
epochs = [json.loads(line) for line in open(sys.argv[1])]
util = [float(v) for v in open(sys.argv[2]).read().split() if v.strip().replace(".", "").isdigit()]
busy = [u for u in util if u > 0]  # samples while the GPU had work (setup and validation excluded roughly)
print("train img/s per epoch:", [round(e.get("train_images_per_s", float("nan")), 1) for e in epochs])
print(f"GPU utilisation: median {statistics.median(busy) if busy else float('nan'):.0f} % over {len(busy)} busy "
      f"samples, mean {statistics.mean(util) if util else float('nan'):.0f} % over all {len(util)}")
EOF

for prec in fp32 fp16; do
  echo "== 3. train convnextv2_tiny 512 px, precision $prec, 10 steps"
  python3 -m mammodetr train --data "$W/ds" --backbone convnextv2_tiny --pretrained none --out "$W/run_$prec" \
    --epochs 1 --max-steps-per-epoch 10 --batch-size 16 --precision "$prec" --channels-last --workers 4 --no-progress \
    2>&1 | grep -E "epoch|stopped|Error|error" | tail -2
done
echo "== 3. --compile, bf16, 2 x 10 steps (the second epoch runs compiled code)"
python3 -m mammodetr train --data "$W/ds" --backbone resnet50 --pretrained none --out "$W/run_compile" \
  --epochs 2 --max-steps-per-epoch 10 --batch-size 16 --precision bf16 --channels-last --compile --workers 4 \
  --no-progress 2>&1 | grep -E "epoch|stopped|Error|error|graph" | tail -3
echo "== 4. evaluate on cuda"
python3 -m mammodetr evaluate --data "$W/ds" --split test --checkpoint "$W/recipe" --out "$W/eval" --device cuda --bootstrap 200 2>&1 | tail -3
echo "== 5. model speed on cuda"
python3 bench/model_speed.py --device cuda --precisions fp32 bf16 --iters 5 --warmup 2 --train-batch 16 --out "$RESULTS/model_speed_cuda.json"
