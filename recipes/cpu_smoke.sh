#!/usr/bin/env bash
# CPU smoke run: a tiny model for two short epochs, to check a dataset and an install end to end.
# usage: recipes/cpu_smoke.sh DATASET [RUN_DIR] [extra flags]
RECIPE_NAME=cpu_smoke
RECIPE_FLAGS=(--backbone resnet18 --pretrained none --image-size 128 --batch-size 8 --epochs 2
              --max-steps-per-epoch 10 --precision bf16 --device cpu --workers 2
              --set model.d_model=64 --set model.nheads=4 --set model.dec_layers=2 --set model.dim_feedforward=128)
source "$(dirname "$0")/_launch.sh"
