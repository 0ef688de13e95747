#!/usr/bin/env bash
# GPU checks of issue 15, about 3 minutes on one GPU. Run from anywhere:  bash bench/gpu_check.sh
# 1. probe: python/torch versions, torch.cuda.is_available(), dcoord's dependencies (stops if unusable);
# 2. tests/test_gpu.py: GPU payloads == CPU payloads, per-sample (DP) grads on GPU, a `dcoord run` with
#    workers on the GPU == plain torch;
# 3. bench/real_models.py --gpu-only: resnet18-cifar (11M params), 4 workers on the GPU, rounds/s vs plain
#    single-process torch on the same global batch, and the share of round time off the GPU.
# Results: bench/results/real_models_gpu.json (also copied to $OUT when set), log on stdout.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
echo "== probe"
timeout 60 "$PY" bench/gpu_check.py || { rc=$?; echo "gpu_check: probe failed (rc $rc), nothing run"; exit "$rc"; }
echo "== GPU tests"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py
tests_rc=$?
echo "== real_models GPU part"
timeout 180 "$PY" bench/real_models.py --gpu-only --rounds 10 --name real_models_gpu
bench_rc=$?
if [ -n "${OUT:-}" ] && [ -f bench/results/real_models_gpu.json ]; then cp bench/results/real_models_gpu.json "$OUT/"; fi
echo "gpu_check: tests rc=$tests_rc, bench rc=$bench_rc"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
