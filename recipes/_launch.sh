#!/usr/bin/env bash
# Shared launcher of the recipes: one process, or torchrun with NPROC processes (GPUs) per node.
#   NPROC=2 recipes/convnextv2_tiny.sh DATA RUN_DIR            # 2 GPUs on this machine
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 NPROC=2 recipes/...  # multi-node: run on every node
set -euo pipefail
data=${1:?usage: recipe.sh DATASET [RUN_DIR] [extra mammodetr train flags]}
shift
out=${1:-runs/$(basename "${RECIPE_NAME:-run}")}
[ $# -gt 0 ] && shift
args=(train --data "$data" --out "$out" "${RECIPE_FLAGS[@]}" "$@")
if [ "${NPROC:-1}" -gt 1 ] || [ "${NNODES:-1}" -gt 1 ]; then
  exec "${TORCHRUN:-torchrun}" --nproc_per_node="${NPROC:-1}" --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" -m mammodetr "${args[@]}"
fi
exec "${PYTHON:-python3}" -m mammodetr "${args[@]}"
