#!/usr/bin/env bash
# The English FVU of a cell's student against the teacher, with the retrieval stage's protocol (50 topic-stratified
# SIB-200 test sentences; one X language, French, so that the run is short): the row the issue's 0.616 target is.
set -euo pipefail
cd "$(dirname "$0")/../.."
for cell in "$@"; do
  mtllm evaluate --task retrieval --model "runs/speed/$cell/stage1/final" --systems '[mtllm, llm]' \
    --langs '[fra_Latn]' --max_examples 50 --dtype auto --data_dir ../shared/data \
    --output_dir "runs/speed/$cell/retrieval-fvu" --overwrite
done
