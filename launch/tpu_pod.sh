#!/usr/bin/env bash
# Data-parallel training on a Cloud TPU VM pod: the same command on every worker at once, over
# gcloud's ssh; jax.distributed detects the pod's layout itself. Needs the repository (and its
# Python environment) at ~/$REPO_DIR on every worker, and data.root / config.workdir on a
# filesystem every worker sees. Environment variables:
#   TPU_NAME  the TPU VM (pod) name          ZONE      its zone
#   REPO_DIR  the checkout, relative to the home directory on each worker (default: vqjax)
# (gcloud takes the project from CLOUDSDK_CORE_PROJECT or its configuration.)
#   TPU_NAME=my-pod ZONE=us-central2-b bash launch/tpu_pod.sh configs/mvtec_vq.py:paper \
#     --config.data.root=/mnt/shared/mvtec_ad --config.workdir=/mnt/shared/runs/bottle
# VQJAX_DRY_RUN=1 prints the gcloud command instead of running it.
set -euo pipefail
tpu=${TPU_NAME:?set TPU_NAME to the TPU VM pod name}
zone=${ZONE:?set ZONE to the TPU pod zone, e.g. us-central2-b}
config=${1:?usage: TPU_NAME=... ZONE=... launch/tpu_pod.sh CONFIG [--config.key=value ...]}; shift
repo=${REPO_DIR:-vqjax}

# Quoted here once, so that arguments with spaces survive the remote shell.
remote="cd $(printf '%q' "$repo") && $(printf '%q ' python -m vqjax.main --distributed \
  --config "$config" "$@")"
cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="${remote% }")
if [[ ${VQJAX_DRY_RUN:-0} == 1 ]]; then line=$(printf '%q ' "${cmd[@]}"); echo "${line% }"; exit 0; fi
exec "${cmd[@]}"
