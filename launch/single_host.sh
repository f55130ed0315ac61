#!/usr/bin/env bash
# Data-parallel training on every GPU of one machine: jax sees them all and the trainer
# shards each batch over a `data` mesh axis (params replicated). Batch sizes must be a
# multiple of the GPU count; CUDA_VISIBLE_DEVICES picks a subset.
#   bash launch/single_host.sh configs/mvtec_vq.py:paper --config.data.root=/data/mvtec_ad \
#     --config.data.category=bottle
# Every category, one per GPU at a time (results.md / results.csv at the end):
#   bash launch/single_host.sh configs/mvtec_vq.py:paper --config.data.root=/data/mvtec_ad \
#     --config.data.category=all --config.sweep.parallel=per_device
# VQJAX_DRY_RUN=1 prints the command instead of running it.
set -euo pipefail
config=${1:?usage: launch/single_host.sh CONFIG [--config.key=value ...]}; shift
# Let XLA use most of the GPU memory without pre-allocating all of it up front.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}

cmd=(python -m vqjax.main --config "$config" "$@")
if [[ ${VQJAX_DRY_RUN:-0} == 1 ]]; then line=$(printf '%q ' "${cmd[@]}"); echo "${line% }"; exit 0; fi
exec "${cmd[@]}"
