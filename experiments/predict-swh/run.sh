#!/bin/bash
# issue 11 must-show: mtllm predict on the 204 Swahili SIB-200 test sentences == mtllm evaluate's swh_Latn
cd /work/main
M=runs/levers/seqspan-1k/distill-sib200/final
IN=../shared/data/sib200/swh_Latn/test.tsv
OUT=runs/levers/swh-predict; mkdir -p $OUT
export OMP_NUM_THREADS=1 MTLLM_CACHE=/tmp/mtllm-cache
for mode in swh_Latn auto; do
  /usr/bin/time -f "%e s wall, %M KB peak" taskset -c ${CORE:-0} python -m mtllm predict --model $M --input $IN --text_column text \
     --id_column index_id --lang $mode --dtype float32 --output $OUT/preds-$mode.jsonl --overwrite > $OUT/predict-$mode.log 2>&1
  tail -3 $OUT/predict-$mode.log
done
python - <<'PY'
import csv, json
gold = {r["index_id"]: r["category"] for r in csv.DictReader(open("../shared/data/sib200/swh_Latn/test.tsv"), delimiter="\t")}
ev = json.load(open("runs/levers/seqspan-1k/eval-sib200/results.json"))
print("evaluate swh_Latn accuracy:", ev["systems"]["mtllm"]["swh_Latn"], "seconds:", ev.get("seconds") or ev.get("meta", {}).get("seconds"))
for mode in ("swh_Latn", "auto"):
    rows = [json.loads(l) for l in open(f"runs/levers/swh-predict/preds-{mode}.jsonl")]
    acc = sum(r["label"] == gold[str(r["id"])] for r in rows) / len(rows)
    line = f"predict --lang {mode}: {len(rows)} rows, accuracy {acc:.6f}"
    if mode == "auto":
        langs = [r.get("lang") for r in rows]
        line += f"; detected swh_Latn {sum(l == 'swh_Latn' for l in langs)}/{len(rows)}; others {sorted(set(langs) - {'swh_Latn'})}"
    print(line)
PY
