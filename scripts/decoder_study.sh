#!/bin/bash
# Issue 19 item 6: the decoder comparison from the whitened student (one epoch of the layer-local stage), at layer
# ratios 0.8 and 0.5: the controls 'init' (as factorised) and 'untrained' (after the layer-local stage), then SFT /
# KD / SeqKD / MaKD seed by seed (3 training seeds), Rouge-L on all 252 SelfInst prompts and on Vicuna-80 (the
# teacher's answers as references), response CE, held-out Wikipedia perplexity. Resumable: run it again and the
# finished models are kept (--resume). Needs the data folder for SelfInst / Vicuna (MAKD_DATA_DIR or $1).
# 512 calibration pairs (whitening and the layer-local stage): response CE of the untrained student +0.63 nats above
# the teacher at ratio 0.8 against +0.96 with 128 (benchmarks/results/decoder_svd_cal512.json). The first, partial
# run from 128 pairs is kept in results/decoder-whiten.
# A checkpoint every 32 of the 128 steps (--save-steps; the default 200 never saved one): a stopped training resumes
# from its last checkpoint instead of starting over (save_steps is not part of a model's configuration).
# Mixed-precision training (--bf16, from 2026-12-07): bfloat16 matrix products in training only (weights, optimizer,
# losses, the layer-local stage and every score stay float32) — a SmolLM2 KD step 2.1x faster on this AVX512-BF16
# CPU. The teacher and the controls are kept (they are never trained); the one float32-trained model recorded before,
# SFT seed 1 (Rouge-L 4.32), moved to results/decoder-whiten512-fp32.
# Then: python -m makd decoder-stats results/decoder-whiten512/ratio-0.8 --write --readme README.md (the README block)
# Two runners share the work (each ~9 GB; start the second once the first has cached the prepared student), e.g.
#   METHODS="init untrained sft seqkd" bash scripts/decoder_study.sh      # in one checkout
#   METHODS="init untrained kd makd" bash scripts/decoder_study.sh        # in another, its own results folder
# (RATIOS, SEEDS and METHODS default to everything; a finished model is kept by --resume, so copy each runner's
# finished <method>/seed-S folders into the other's results before it reaches them.)
set -euo pipefail
DATA="${1:-${MAKD_DATA_DIR:?give the data folder as \$1 or MAKD_DATA_DIR}}"
RATIOS="${RATIOS:-0.8 0.5}"
SEEDS="${SEEDS:-1 2 3}"
METHODS="${METHODS:-init untrained sft kd seqkd makd}"
cd "$(dirname "$0")/.."
for ratio in $RATIOS; do
  # shellcheck disable=SC2086  # word splitting of the lists is intended
  python -m makd decoder --data-dir "$DATA" --teacher smollm2-135m-instruct \
    --layer-ratio "$ratio" --weighting whiten --calibration-examples 512 --local-epochs 1 \
    --methods $METHODS --train-seeds $SEEDS \
    --train-set chatterbot --eval-set selfinst --extra-eval vicuna --max-train 1024 --max-eval 252 \
    --max-new-tokens 64 --gen-batch-size 32 --wiki-windows 16 --save-steps 32 --bf16 --quiet --resume \
    --out "results/decoder-whiten512/ratio-$ratio"
done
