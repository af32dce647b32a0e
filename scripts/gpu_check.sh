#!/usr/bin/env bash
# The GPU check, run from the repository root on a machine with an NVIDIA GPU and a python3 that
# has torch 2.11.0, over a bundle made by scripts/gpu_bundle.sh on the build machine:
#
#   scripts/gpu_check.sh [BUNDLE] [OUT]        (defaults: gpu-bundle, $OUT or runs/gpu-check)
#
# 1. the machine: GPU, driver, CPU and its flags, torch; `preln info`
# 2. the golden tests (logits, loss, every gradient against PyTorch) on CUDA, then on this CPU
# 3. a short Multi30k training run on CUDA in fp32 and in bf16, then beam search and BLEU
# 4. `preln bench train --vs-pytorch` on CUDA (iwslt14 model, two batch sizes)
# 5. `preln analyze init` on CUDA
# 6. data-parallel training on CUDA: one rank per GPU over NCCL (torchrun; one GPU makes a group
#    of one, which still goes through NCCL), and two ranks on GPU 0 over Gloo
# Every step runs even if an earlier one failed; the summary lists each with its exit status.
set -uo pipefail
bundle=$(cd "${1:-gpu-bundle}" && pwd)
out=${2:-${OUT:-runs/gpu-check}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
P=$bundle/bin/preln
py=${PYTHON:-python3}
torch_lib=$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The test binaries read golden files under the folder they were built in.
build_root=$(cat "$bundle/BUILD_ROOT")
if [ "$build_root" != "$PWD" ] && [ ! -e "$build_root" ]; then
  mkdir -p "$(dirname "$build_root")" && ln -s "$PWD" "$build_root"
fi

summary=()
# step NAME CMD...: runs CMD with its output in OUT/NAME.txt, shows the end of it, records rc.
step() {
  local name=$1
  shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  tail -n 40 "$out/$name.txt"
  summary+=("$(printf '%-14s rc %d  %4d s' "$name" "$rc" $((SECONDS - t0)))")
}

machine() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  grep -m1 'model name' /proc/cpuinfo
  echo "cores: $(nproc)"
  grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512(f|bw|vl|dq|_bf16)|amx_(bf16|tile)|avx_ne_convert)$' | tr '\n' ' '
  echo
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
  "$P" info
}

golden() {
  local dev=$1 rc=0
  for t in "$bundle"/bin/test-*; do
    echo "--- $(basename "$t") on $dev"
    PRELN_TEST_DEVICE=$dev "$t" --test-threads 1 || rc=1
  done
  return $rc
}

train() {
  local precision=$1
  "$P" train --config cpu --data "$bundle/m30k" --out "$out/train-$precision" \
    --set train.device=cuda --set train.precision="$precision" --set train.max_updates=400 \
    --set train.valid_every=200 --set train.log_every=50 --set train.max_tokens=8192 \
    --set train.save_every=200 || return 1
  grep -h '"valid"' "$out/train-$precision/metrics.jsonl" | tail -n 2
  "$P" translate --checkpoint "$out/train-$precision" --device cuda --beam 5 \
    < "$bundle/test_2016_flickr.de" > "$out/hyp-$precision.en" || return 1
  "$P" bleu --ref "$bundle/test_2016_flickr.en" < "$out/hyp-$precision.en"
}

# dataparallel BACKEND RANKS: a short CUDA run of RANKS ranks started by torchrun.
dataparallel() {
  local backend=$1 ranks=$2 run="$out/dp-$1"
  "$P" info | grep c10d
  "$py" -m torch.distributed.run --nproc-per-node "$ranks" --no-python "$P" train --config cpu \
    --data "$bundle/m30k" --out "$run" --dist-backend "$backend" --dist-timeout 120 \
    --set train.device=cuda --set train.max_updates=60 --set train.valid_every=30 \
    --set train.log_every=10 --set train.save_every=30 || return 1
  grep -h '"train"' "$run/metrics.jsonl" | tail -n 2
}

bench() {
  "$P" bench train --config iwslt14 --device cuda --vs-pytorch --python "$py" \
    --precisions fp32,bf16 --rounds 2 --steps 10 --warmup 3 "$@"
}

step machine machine
step golden-cuda golden cuda
step golden-cpu golden cpu
step train-fp32 train fp32
step train-bf16 train bf16
step bench-64x32 bench
step bench-256x64 bench --sentences 256 --len 64
step analyze-init "$P" analyze init --device cuda --seeds 3 --out "$out/init"
step dp-nccl dataparallel nccl "$(nvidia-smi -L | wc -l)"
step dp-gloo dataparallel gloo 2
echo "=== summary"
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
