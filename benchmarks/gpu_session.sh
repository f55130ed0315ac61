#!/usr/bin/env bash
# The H100 measurements of the benchmarks (RESULTS.md), each part sized for one call of the
# device tool (< 10 min). Run from the repository root on the GPU machine:
#
#   bash benchmarks/gpu_session.sh throughput   # python -m benchmarks.run --preset paper
#   bash benchmarks/gpu_session.sh resampling   # trains configs/mvtec_vq_resample.py:timing on
#                                               # the demo data, then times the resampling stage
#   bash benchmarks/gpu_session.sh profile      # jax.profiler trace + optimised HLO of predict
#   bash benchmarks/gpu_session.sh favae        # FAVAE inference rows (paper size) vs PyTorch
#   bash benchmarks/gpu_session.sh igd          # IGD inference rows (paper size) vs PyTorch
#   bash benchmarks/gpu_session.sh igd_train    # IGD train step rows (vqjax only: no torch twin)
#
# then, back on the development machine, with both JSONs copied into benchmarks/results/:
#   python -m benchmarks.results_md --throughput benchmarks/results/paper_<gpu>.json \
#       --resampling benchmarks/results/resampling_<gpu>.json
#
# Machines without ml-collections / dm-pix / tensorflow-datasets: run
# `bash ../shared/tools/gpu_wheels.sh` on the development machine and carry .whl; this script
# installs them into /tmp/site. Results go to benchmarks/results/ and, when $OUT is set (the
# device tool's output folder), are copied there. VQJAX_GPU_SESSION_SMOKE=1 runs every part
# at toy sizes on any machine (a check of this script, not a measurement).
set -euo pipefail
part="${1:?usage: bash benchmarks/gpu_session.sh throughput|resampling|profile|favae|igd|igd_train}"
cd "$(dirname "$0")/.."

if compgen -G ".whl/*.whl" > /dev/null; then
  pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-}"
smoke="${VQJAX_GPU_SESSION_SMOKE:-0}"
results="benchmarks/results"
if [[ "$smoke" == 1 ]]; then results="$(mktemp -d)"; fi
mkdir -p "$results"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu \
  --format=csv 2>/dev/null || echo "nvidia-smi: not available"

case "$part" in
  throughput)
    if [[ "$smoke" == 1 ]]; then
      python -m benchmarks.run --preset smoke --batches 1,2 --train-batches 2 --repeats 2 \
        --warmup 1 --no-torch-compile --out-dir "$results"
    else
      # torch.compile's cold compiles stop after 300 s in total (later rows say skipped), so
      # the part fits one 10-minute call.
      python -m benchmarks.run --preset paper --parts inference,train,ssim \
        --compile-budget-s 300 --out-dir "$results"
    fi
    ;;
  favae)
    # Its own call and folder (paper_<gpu>.json there): torch.compile stops after 200 s.
    python -m benchmarks.run --preset "$([[ "$smoke" == 1 ]] && echo smoke || echo paper)" \
      --parts favae --compile-budget-s 200 --out-dir "$results/favae" \
      $([[ "$smoke" == 1 ]] && echo "--batches 1,2 --repeats 2 --warmup 1 --no-torch-compile")
    ;;
  igd)
    # Its own call and folder; inference batches 1, 8, 32 (a 256 px image is also 225 local
    # patches of 32 px: batch 32 is 7200 patches). torch.compile stops after 200 s.
    python -m benchmarks.run --preset "$([[ "$smoke" == 1 ]] && echo smoke || echo paper)" \
      --parts igd --compile-budget-s 200 --out-dir "$results/igd" \
      $([[ "$smoke" == 1 ]] && echo "--batches 1,2 --repeats 2 --warmup 1 --no-torch-compile" \
        || echo "--batches 1,8,32")
    ;;
  igd_train)
    # Its own call (a separate folder, so the igd call's JSON survives a cut-off): the training
    # step at the paper preset's train batches 32, 64, vqjax only.
    python -m benchmarks.run --preset "$([[ "$smoke" == 1 ]] && echo smoke || echo paper)" \
      --parts igd_train --out-dir "$results/igd_train" \
      $([[ "$smoke" == 1 ]] && echo "--train-batches 2 --repeats 2 --warmup 1")
    ;;
  resampling)
    if [[ "$smoke" == 1 ]]; then
      python -m benchmarks.bench_resampling --config configs/mvtec_vq_resample.py:smoke \
        --workdir "$(mktemp -d)" --batches 1,2 --images 4 --repeats 1 \
        --out "$results/resampling_smoke.json"
    else
      # 256 tables per set drawn from the demo test images; the naive walk (1025 prior passes
      # per batch) on the first 8 at batch 1 and one batch at 64. The trained run stays in
      # /tmp/vqjax_resample_timing: a second call restores it instead of training again.
      python -m benchmarks.bench_resampling --config configs/mvtec_vq_resample.py:timing \
        --workdir /tmp/vqjax_resample_timing --batches 1,64 --images 256 --naive-images 8 \
        --repeats 3
    fi
    ;;
  profile)
    python -m benchmarks.profile_predict --out-dir "$results/profile" \
      $([[ "$smoke" == 1 ]] && echo "--config configs/mvtec_vq.py:smoke --batch 2")
    ;;
  *)
    echo "unknown part '$part': expected throughput, resampling, profile, favae, igd or igd_train" >&2
    exit 2
    ;;
esac

if [[ -n "$out" ]]; then
  mkdir -p "$out" && cp -r "$results"/. "$out"/
  echo "copied $results to \$OUT"
fi
