#!/usr/bin/env bash
# One lent-GPU call: carried wheels installed, the GPU tests, then a sweep spec on ML-1M (converted under .data/).
#   [POOL=p15] [SWEEP_DIR=/tmp/sweep] bash benchmarks/gpu_round.sh SPEC OUTNAME [SEEDS] [JOBS]
# Runs already done under SWEEP_DIR are not run again: a second call on a still-warm machine (or with the
# first call's run folders carried as SWEEP_DIR) finishes a sweep the first stopped at its wall limit.
set -uo pipefail
spec=$1; name=$2; seeds=${3:-3}; jobs=${4:-16}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
(test -n "${NO_TESTS:-}" && exit 0; python3 -m pytest -q -p no:cacheprovider tests/engine/distill/test_gpu_paths.py \
  tests/engine/evaluate/test_bench.py::test_bench_runs_every_phase_on_the_gpu_and_repeats_itself \
  > "$out/gpu-tests.txt" 2>&1; echo "gpu tests exit $?" >> "$out/gpu-tests.txt") &
tests=$!
start=$(date +%s)
sweep=${SWEEP_DIR:-/tmp/sweep}
rm -f "$sweep/sweep.json"  # a stale summary of an earlier call would hide this one's merge
SWEEP_JOB_TIMEOUT_S=${SWEEP_JOB_TIMEOUT_S:-400} timeout ${SWEEP_WALL_S:-540} python3 benchmarks/sweep.py "$spec" --data .data/ml-1m --out "$sweep" \
  --seeds "$seeds" --jobs "$jobs" --pool "${POOL:-p5}" ${MODELS:+--models $MODELS} | tee "$out/$name.txt"
# a sweep stopped at its wall limit: summarise what finished
test -f "$sweep/sweep.json" || python3 benchmarks/sweep.py "$spec" --data .data/ml-1m --out "$sweep" --seeds "$seeds" \
  --pool "${POOL:-p5}" --merge-only | tee -a "$out/$name.txt"
echo "sweep wall $(( $(date +%s) - start )) s" | tee -a "$out/$name.txt"
wait $tests
cp "$sweep/sweep.json" "$out/$name.json" 2>/dev/null || echo "no sweep.json (the sweep was stopped)"
tail -3 "$out/gpu-tests.txt" 2>/dev/null
(cd "$sweep" && tar czf "$out/$name-logs.tgz" */log.txt */config.json $(ls */results.json 2>/dev/null))
