#!/usr/bin/env bash
# GPU checks on a CUDA machine with no network (the lent device machine): the CUDA tests, a tiny end-to-end
# `mtllm run` on the GPU, stage 1 with fp32 against `mixed_precision: auto` (bf16 on a GPU that supports it),
# and the fast test suite. Logs go to $OUT (default /tmp/gpu-check).
#
#   bash benchmarks/gpu_check.sh
#
# Packages the machine lacks travel as wheels in .whl/ (see BENCHMARKS.md, "GPU checks").
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
step() { echo; echo "=== $* ($(date -u +%T))"; }

step environment
nvidia-smi -L
python3 -c "import torch, transformers, peft; from mtllm.device import resolve_device, fast_bf16; \
print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__); \
print('device', resolve_device(), torch.cuda.get_device_name(), 'fast_bf16', fast_bf16(resolve_device()))"

step CUDA tests
timeout 240 python3 -m pytest -q -p no:cacheprovider -rs tests/test_device.py tests/test_resume.py tests/test_predict.py \
  -k cuda 2>&1 | tee "$OUT/cuda-tests.log" | tail -15

step "stage 1 on the GPU, no (fp32) vs auto (tiny models, 30 steps)"
for mp in no auto; do
  /usr/bin/time -f "wall %e s" timeout 120 python3 -m mtllm adapt --config configs/tiny.yaml --output_dir /tmp/adapt-$mp \
    --mixed_precision $mp --log_steps 10 > "$OUT/adapt-$mp.log" 2>&1
  grep -aE "^\[|mixed_precision|^wall" "$OUT/adapt-$mp.log" | tail -6
  cp /tmp/adapt-$mp/metrics.jsonl "$OUT/adapt-$mp.metrics.jsonl" 2>/dev/null
done

step "tiny end-to-end mtllm run on the GPU"
/usr/bin/time -f "wall %e s" timeout 200 python3 -m mtllm run --config configs/tiny-sib200.yaml --output_dir /tmp/tiny-gpu \
  > "$OUT/tiny-run.log" 2>&1
grep -aE "^\[|^wall|auto ->|Error" "$OUT/tiny-run.log" | tail -30
cp /tmp/tiny-gpu/run_summary.json "$OUT/tiny-run-summary.json" 2>/dev/null

step "fast test suite with a GPU present (xdist, 12 workers)"
timeout 300 python3 -m pytest -m "not slow" -q -p no:cacheprovider -n 12 --timeout 200 2>&1 \
  | tee "$OUT/suite.log" | tail -25
step done
