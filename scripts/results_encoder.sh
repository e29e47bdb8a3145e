#!/usr/bin/env bash
# The encoder rows of the README's results tables (issue 4), exactly as they were produced.
# Usage: bash scripts/results_encoder.sh [rt|glue|all]   (MAKD_DATA_DIR must point at the real GLUE files for glue)
# Every row writes results/<task>/<row>/metrics.json with its run record; the fine-tuned teacher is cached
# (data/cache/teachers) and shared by the rows of one task.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
what=${1:-all}
common=(--layer-ratio 0.5 --report-to tensorboard --logging-steps 20 --no-save-student)

if [ "$what" = rt ] || [ "$what" = all ]; then
  # embedded default, no network: rt-polarity (a PROXY for SST-2), MiniLM-L6 teacher, layer ratio 0.5
  rt=(--task rt-polarity --max-length 64 --epochs 1 --max-train 3000 --teacher-epochs 1 "${common[@]}")
  for row in makd-hierarchical:hierarchical svd-none:none svd-finetune:finetune logit-kd:model-only; do
    [ -n "${SKIP_ROWS:-}" ] && [[ " $SKIP_ROWS " == *" ${row%%:*} "* ]] && continue
    $PY -m makd distill "${rt[@]}" --objective "${row#*:}" --out "results/rt-polarity/${row%%:*}"
  done
fi

if [ "$what" = glue ] || [ "$what" = all ]; then
  : "${MAKD_DATA_DIR:?set MAKD_DATA_DIR to the folder holding glue/TASK/{train,dev}.tsv}"
  # CPU budget (2 shared cores): teachers 2 epochs (a seeded 4,000-example subsample for the larger tasks),
  # students 1 epoch on at most 3,000 seeded training examples; the full dev sets.
  g=(--data-dir "$MAKD_DATA_DIR" "${common[@]}" --objective hierarchical --epochs 1 --max-train 3000)
  for task in rte mrpc stsb; do
    $PY -m makd distill --task $task --max-length 128 --teacher-epochs 2 --teacher-max-train 4000 "${g[@]}" \
        --out results/glue/$task/makd-hierarchical
  done
  for task in cola sst2; do
    $PY -m makd distill --task $task --max-length 64 --teacher-epochs 2 --teacher-max-train 4000 "${g[@]}" \
        --out results/glue/$task/makd-hierarchical
  done
fi
