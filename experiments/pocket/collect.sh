#!/usr/bin/env bash
# Copy what the pocket main jobs wrote under RUN (default runs/pocket) into experiments/pocket/: the small
# files RESULTS.md cites (results, metrics, stage summaries), never weights. Run from the repository root:
#
#   mtllm run --config configs/pocket-sib200.yaml --data-dir ../shared/data     # the main job
#   mtllm run --config configs/pocket-nusax.yaml --data-dir ../shared/data      # NusaX, reuses its stage 1
#   mtllm run --config configs/pocket-xnli.yaml --data-dir ../shared/data       # XNLI + Kardes-NLU, reuses it too
#   bash experiments/pocket/collect.sh [RUN]
set -eu
RUN=${1:-runs/pocket}
DEST=experiments/pocket
[ -d "$RUN" ] || { echo "collect.sh: no run folder $RUN; run the main job first (commands above) or pass its output_dir" >&2; exit 2; }
copy() {  # copy RUN/$1/<files...> into DEST/$1/ (those that exist)
  local dir=$1; shift
  [ -d "$RUN/$dir" ] || return 0
  mkdir -p "$DEST/$dir"
  for f in "$@"; do [ -f "$RUN/$dir/$f" ] && cp "$RUN/$dir/$f" "$DEST/$dir/"; done
  return 0
}
copy stage1 metrics.jsonl stage1_summary.json stage1_config.json stage.json
copy retrieval results.json results.md stage.json
for task in sib200 nusax xnli; do
  copy teacher-$task metrics.jsonl finetune_summary.json finetune_config.json stage.json
  copy distill-$task metrics.jsonl distill_summary.json distill_config.json stage.json
  copy encoder-ft-$task metrics.jsonl encoder_ft_summary.json encoder_ft_config.json stage.json
done
for task in sib200 nusax xnli kardes-nlu; do
  copy eval-$task results.json results.md stage.json
done
# each `mtllm run` rewrites RUN/run_summary.json: keep the SIB-200 job's as run_summary.json, others by task
if [ -f "$RUN/run_summary.json" ]; then
  task=$(grep -o 'eval-[a-z0-9-]*' "$RUN/run_summary.json" | head -1 | cut -d- -f2)
  case "$task" in sib200|"") cp "$RUN/run_summary.json" "$DEST/run_summary.json" ;;
                  *) cp "$RUN/run_summary.json" "$DEST/run_summary-$task.json" ;; esac
fi
echo "copied into $DEST:"; find "$DEST" -newer "$0" -type f | sort
