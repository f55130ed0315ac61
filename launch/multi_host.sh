#!/usr/bin/env bash
# Multi-host data parallelism with jax.distributed: run this same command on every host
# (e.g. via `srun` under SLURM, which jax.distributed detects). Elsewhere, set
#   JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i
# on each host. Each process feeds its slice of the global batch; results and logs are
# written by process 0; checkpoints are written collectively by orbax, so config.workdir
# must be on a filesystem every host sees.
#   srun --nodes=2 --ntasks-per-node=1 bash launch/multi_host.sh configs/mvtec_vq.py:paper ...
set -euo pipefail
config=${1:?usage: launch/multi_host.sh CONFIG [--config.key=value ...]}; shift
exec python -m vqjax.main --distributed --config "$config" "$@"
