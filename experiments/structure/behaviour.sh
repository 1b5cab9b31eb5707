#!/usr/bin/env bash
# Issue 22's behaviour check: the tiny pipeline's stage hashes, every logged loss of its stage 1 / teacher /
# distillation, and the bytes `mtllm predict` writes, from the source tree SRC (a checkout of any commit) into OUT.
#   bash experiments/structure/behaviour.sh SRC OUT        (then: diff OUT_A/record.json OUT_B/record.json)
# Runs the package of SRC (PYTHONPATH), in the current virtualenv, on tiny models built in code (~2 min, 1 thread).
set -euo pipefail
SRC=$(cd "$1" && pwd); OUT=$(mkdir -p "$2" && cd "$2" && pwd); rm -rf "${OUT:?}"/*
export PYTHONPATH="$SRC" MTLLM_CACHE="$OUT/cache" OMP_NUM_THREADS=1
cd "$SRC"
python -m mtllm run --config configs/tiny-sib200.yaml --data-dir tests/fixtures/pipeline --output-dir "$OUT/run" \
  --progress false --report_to none > "$OUT/run.log" 2>&1
python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rec = {}
for p in sorted((out / "run").glob("*/stage.json")):
    rec[p.parent.name + ".hash"] = json.loads(p.read_text())["hash"]
for p in sorted((out / "run").glob("*/metrics.jsonl")):
    rec[p.parent.name + ".losses"] = [json.loads(l).get("loss") for l in p.read_text().splitlines() if '"loss"' in l]
(out / "record.json").write_text(json.dumps(rec, indent=1, sort_keys=True))
PY
printf 'text\nLe chat dort sur le tapis.\nHabari za asubuhi.\nThe cat sleeps.\n' > "$OUT/in.csv"
# float32 named: the default became `auto` with issue 20 (bf16 where the CPU computes it faster)
python -m mtllm predict --model "$OUT/run/distill-sib200/final" --input "$OUT/in.csv" --lang fra_Latn \
  --output "$OUT/preds.jsonl" --return_probs true --dtype float32 --progress false > /dev/null 2>&1
sha256sum "$OUT/preds.jsonl" | cut -d' ' -f1 > "$OUT/preds.sha"
cat "$OUT/preds.sha"
