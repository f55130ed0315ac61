#!/usr/bin/env bash
# Multi-host data parallelism with jax.distributed, for any cluster: run this same command once
# per host (one process owning all of that host's GPUs). Each process feeds its slice of the
# global batch; results and logs are written by process 0; checkpoints are written
# collectively by orbax, so data.root and config.workdir must be on a filesystem every host sees.
#
# Under SLURM (srun), Open MPI (mpirun) or on a Cloud TPU VM jax finds the layout itself (see
# also slurm.sbatch, tpu_pod.sh; k8s_indexed_job.yaml sets the variables below for Kubernetes):
#   srun --nodes=2 --ntasks-per-node=1 bash launch/multi_host.sh configs/mvtec_vq.py:paper \
#     --config.data.root=/shared/mvtec_ad --config.workdir=/shared/runs/bottle
# Anywhere else set three variables on every host:
#   JAX_COORDINATOR_ADDRESS  host:port of process 0, the same on every host (any free port)
#   JAX_NUM_PROCESSES        number of processes (hosts)
#   JAX_PROCESS_ID           this host's process, 0 .. JAX_NUM_PROCESSES-1 (0 on the coordinator)
# e.g. two hosts, started over ssh from a third machine (the repository at ~/vqjax on both):
#   for i in 0 1; do ssh "host$i" "cd vqjax && JAX_COORDINATOR_ADDRESS=host0:1234 \
#     JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=$i bash launch/multi_host.sh configs/mvtec_vq.py:paper \
#     --config.data.root=/shared/mvtec_ad --config.workdir=/shared/runs/bottle" & done; wait
# A process that dies stops the others after --heartbeat_timeout seconds (default 100; pass it
# after CONFIG). VQJAX_DRY_RUN=1 prints the command instead of running it.
set -euo pipefail
config=${1:?usage: launch/multi_host.sh CONFIG [--config.key=value ...]}; shift

cmd=(python -m vqjax.main --distributed --config "$config" "$@")
if [[ ${VQJAX_DRY_RUN:-0} == 1 ]]; then line=$(printf '%q ' "${cmd[@]}"); echo "${line% }"; exit 0; fi
exec "${cmd[@]}"
