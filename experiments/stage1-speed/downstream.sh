#!/usr/bin/env bash
# Issue 20's lever table, downstream: for each cell, the main job's teacher (runs/pocket/teacher-sib200, copied into
# the cell; same inputs hash, so `mtllm run` skips it), then the cell's own distillation and evaluation of the MT-LLM
# on the 15 fixed SIB-200 languages + English (common.yaml's evaluate section). One cell at a time, on both cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
for cell in "$@"; do
  if [ ! -d "runs/speed/$cell/teacher-sib200" ]; then cp -r runs/pocket/teacher-sib200 "runs/speed/$cell/"; fi
  echo "$(date -u +%FT%TZ) $cell downstream"
  mtllm run --config "experiments/stage1-speed/$cell.yaml" --data-dir ../shared/data \
    --stages '[stage1, teacher, distill, eval]'
  echo "$(date -u +%FT%TZ) $cell done"
done
