#!/usr/bin/env bash
# The model's one-shot GPU check, for a fresh H100 machine with torch and timm installed; run from anywhere.
#
#   1. packages and GPU;  2. tests/test_model_cuda.py;
#   3. benchmarks/model_throughput.py at 299, batch 32 training / 64 inference, bf16 + channels_last, eager:
#      RECCE, the per-position-loop baseline (3 steps) and legacy_xception;
#   4. benchmarks/train_pipeline.py: the training input pipeline feeding the model on the GPU;
#   5. the model benchmark under torch.compile (RECCE compiled; the loop stays eager, 2 steps);
#   6. if time is left: the official recipe (fp16 autocast + GradScaler, no channels_last), RECCE vs the loop.
#
# Every step runs under `timeout`, and all of them share one budget (GPU_CHECK_BUDGET_S, default 360 s): a step
# gets at most what is left, and a step with under 30 s left is skipped. Output goes to the terminal and to
# $OUT/gpu_check.log; each benchmark writes $OUT/<name>.json, rewritten after every measurement, so a step cut
# short by its limit still leaves what it measured. OUT defaults to ./gpu-out. Wheels for missing packages can be
# carried in .whl/ at the repository root; they are installed into /tmp/site first.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu-out}"
mkdir -p "$OUT"

PYTHON="${PYTHON:-python3}"
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-360}))
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
failures=0

step() { # step NAME LIMIT_S COMMAND...: run under a hard limit within the shared budget; note failures, go on
	local name=$1 limit=$2 left=$((DEADLINE - SECONDS)) start=$SECONDS rc
	shift 2
	((limit > left)) && limit=$left
	if ((limit < 30)); then
		echo "=== $name: SKIPPED, only ${left}s of the budget left"
		failures=$((failures + 1))
		return
	fi
	echo "=== $name (limit ${limit}s): $*"
	timeout --kill-after=10 "$limit" "$@"
	rc=$?
	if ((rc == 124 || rc == 137)); then
		echo "=== $name: TIMED OUT after ${limit}s"
	fi
	echo "=== $name: exit $rc after $((SECONDS - start))s"
	((rc == 0)) || failures=$((failures + 1))
}

main() {
	echo "=== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) in $PWD, results in $OUT"
	nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu \
		--format=csv || echo "nvidia-smi failed"

	if compgen -G ".whl/*.whl" >/dev/null; then
		echo "=== installing carried wheels: $(ls .whl)"
		"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
			echo "wheel install FAILED"
		export PYTHONPATH="/tmp/site:$PYTHONPATH"
	fi

	missing=$("$PYTHON" -c 'import importlib.util as u
print(" ".join(n for n in ("torch", "timm", "safetensors", "pytest") if u.find_spec(n) is None))')
	if [[ -n "$missing" ]]; then
		echo "MISSING PYTHON PACKAGES on this machine: $missing"
		echo "  carry their wheels in .whl/ (see the device README: pip download --no-deps --only-binary=:all: ...)"
	fi
	if [[ " $missing " == *" torch "* || " $missing " == *" timm "* ]]; then
		echo "cannot run without torch and timm: stopping"
		return 2
	fi
	"$PYTHON" -c 'import torch, timm
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), timm {timm.__version__}")
print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE VISIBLE TO TORCH")'

	# Only the CUDA tests: the CPU tests pass on the CPU, and test_parity.py would skip there (its golden files sit
	# beside the repository, which stays behind).
	step tests 70 "$PYTHON" -m pytest tests/test_model_cuda.py -q -rs --durations=5 -p no:cacheprovider

	bench=("$PYTHON" benchmarks/model_throughput.py --device cuda --size 299 --batch-size 32 --infer-batch-size 64)
	step bench_eager 110 "${bench[@]}" --dtype bf16 --channels-last --steps 20 --warmup 5 \
		--baseline-steps 3 --baseline-warmup 1 --json "$OUT/bf16_eager.json"
	step train_pipeline 70 "$PYTHON" benchmarks/train_pipeline.py --device cuda --size 299 --batch-size 32 \
		--workers 8 --steps 15 --warmup 3 --amp bf16
	step bench_compile 240 "${bench[@]}" --dtype bf16 --channels-last --compile --steps 20 --warmup 3 \
		--models recce,looped --baseline-steps 2 --baseline-warmup 1 --json "$OUT/bf16_compile.json"
	step bench_fp16_official_recipe 90 "${bench[@]}" --dtype fp16 --steps 20 --warmup 5 \
		--models recce,looped --baseline-steps 3 --baseline-warmup 1 --json "$OUT/fp16_eager.json"

	echo "=== summary (the tables again; the JSON files hold every number)"
	for result in "$OUT"/bf16_eager.json "$OUT"/bf16_compile.json "$OUT"/fp16_eager.json; do
		[[ -f "$result" ]] && "$PYTHON" benchmarks/model_throughput.py --show "$result"
	done
	echo "=== gpu_check done in ${SECONDS}s with $failures failed, timed-out or skipped step(s)"
	return $((failures > 0))
}

main 2>&1 | tee -a "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
