#!/usr/bin/env bash
# Issue 20's cells, one at a time on both cores: stage 1 (with its held-out FVU), then the retrieval probe of the
# main job's protocol (50 topic-stratified SIB-200 test sentences, all 59 non-English languages) on the MT-LLM alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
for cell in "$@"; do
  echo "$(date -u +%FT%TZ) $cell stage1"
  mtllm run --config "experiments/stage1-speed/$cell.yaml" --data-dir ../shared/data
  echo "$(date -u +%FT%TZ) $cell retrieval"
  mtllm evaluate --task retrieval --model "runs/speed/$cell/stage1/final" --systems '[mtllm]' --max_examples 50 \
    --dtype auto --data_dir ../shared/data --output_dir "runs/speed/$cell/retrieval-all" --overwrite
  echo "$(date -u +%FT%TZ) $cell done"
done
