#!/usr/bin/env bash
# Issue 20's lever table, downstream: for each cell, the lever table's teacher (copied into the cell; same inputs
# hash, so `mtllm run` skips it): the two-phase main job's teacher-sib200, kept in the k6-m16 cell since later main
# jobs retrained runs/pocket's (TEACHER=<folder> to use another), then the cell's own distillation and evaluation of
# the MT-LLM on the 15 fixed SIB-200 languages + English (common.yaml's evaluate section). One cell at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."
teacher="${TEACHER:-runs/speed/k6-m16/teacher-sib200}"
for cell in "$@"; do
  if [ ! -d "runs/speed/$cell/teacher-sib200" ]; then cp -r "$teacher" "runs/speed/$cell/teacher-sib200"; fi
  echo "$(date -u +%FT%TZ) $cell downstream"
  mtllm run --config "experiments/stage1-speed/$cell.yaml" --data-dir ../shared/data \
    --stages '[stage1, teacher, distill, eval]'
  echo "$(date -u +%FT%TZ) $cell done"
done
