#!/usr/bin/env bash
# The GPU measurements in one go, each under its own time limit, for a machine held briefly:
# overhead (fp32, then bf16 autocast), check cost, and the collector's parity with the CPU. Each
# writes its section of docs/benchmarks.md; the logs, nvidia-smi's view and a copy of that file
# (refreshed after every step, so a cut-off run still leaves what finished) go to OUT_DIR. Then,
# into their logs only: the overhead on transformers Llamas (the attention-logit probe included)
# and where the collector's host memory goes (bench.host_memory).
#
#   bash bench/gpu.sh /tmp/tripwire-gpu                 # on a GPU machine, from the repository root
#   DEVICE=cpu QUICK=1 bash bench/gpu.sh /tmp/try       # the same steps on tiny sizes, nothing written
set -u
out=${1:-/tmp/tripwire-gpu}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}." PYTHONUNBUFFERED=1

# QUICK: argparse keeps an option's last value, so these, given last, override each step's own.
overhead_quick=() check_quick=() parity_quick=() llama_quick=() host_quick=()
if [ -n "${QUICK:-}" ]; then
    overhead_quick=(--sizes tiny --rounds 2 --big-rounds 2 --memory-sizes tiny --no-write)
    check_quick=(--sizes tiny --rounds 2 --svd-steps 11 --log-calls 1000 --no-write)
    parity_quick=(--setups "fp32,fp16 GradScaler" --no-write)
    llama_quick=(--sizes llama-tiny --rounds 2 --big-rounds 2)
    host_quick=(--size tiny)
fi

step() { # step NAME SECONDS MODULE ARGS...
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    timeout "$limit" "$py" -m "$@" --device "$device" >"$out/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - t0)) s"
    cp docs/benchmarks.md "$out/benchmarks.md"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$out/gpu.txt" 2>&1
"$py" -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])" >>"$out/gpu.txt"
# Limits sized from an H200 (2026-11-30, three runs): overhead 182-218 s; bf16 on the large GPT
# 31-35 s; check cost 65-73 s; parity 31-43 s; the two Llamas and the host-memory probe about
# 40 s together (the third run). All six fit one 600 s call.
step overhead 280 bench.overhead --sizes small,medium,large --rounds 30 --big-rounds 8 \
    --memory-sizes large "${overhead_quick[@]}"
step overhead-bf16 60 bench.overhead --sizes large --big-rounds 20 --no-memory \
    --autocast bf16 --variants "none,tripwire,tripwire every step" "${overhead_quick[@]}"
step check-cost 100 bench.check_cost --sizes small,medium,large "${check_quick[@]}"
step parity 80 bench.device_parity "${parity_quick[@]}"
step overhead-llama 100 bench.overhead --sizes llama-small,llama-medium --rounds 20 --big-rounds 8 \
    --no-memory --no-write --variants "none,tripwire,tripwire every step" "${llama_quick[@]}"
step host-memory 60 bench.host_memory --size large "${host_quick[@]}"
