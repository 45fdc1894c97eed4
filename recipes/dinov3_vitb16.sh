#!/usr/bin/env bash
# Paper configuration, DINOv3 ViT-B/16 (weights: DINOv3 License):
# 512x512, global batch 32, AdamW lr 1e-4, up to 400 epochs, early stopping patience 150,
# 3 queries, focal image loss, lambda bbox/GIoU/obj = 5/2/1, backbone pretrained on LVD-1689M (DINOv3, Meta) from the hub.
# usage: recipes/dinov3_vitb16.sh DATASET [RUN_DIR] [extra flags]     2 GPUs: NPROC=2 recipes/dinov3_vitb16.sh ...
# On a GPU with less memory: add --accum-steps 2 (or 4); the global batch stays 32.
RECIPE_NAME=dinov3_vitb16
RECIPE_FLAGS=(--backbone dinov3_vitb16 --pretrained hub --image-size 512 --batch-size 32 --lr 1e-4 --epochs 400
              --patience 150 --precision bf16 --channels-last --workers 8)
source "$(dirname "$0")/_launch.sh"
