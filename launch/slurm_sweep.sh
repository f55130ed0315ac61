#!/usr/bin/env bash
# A whole SLURM sweep in one command: the job array of launch/slurm_sweep.sbatch (one category
# per task) and a job that, once every task has succeeded, merges their results into the
# sweep's results.md / results.csv. Both get the same CONFIG and arguments, hence the same
# workdirs. Activate the Python environment and run from the repository root:
#   bash launch/slurm_sweep.sh configs/mvtec_vq.py:paper --config.data.root=/data/mvtec_ad
# If a task fails, the merge job stays pending (DependencyNeverSatisfied): scancel it, rerun the
# failed index (sbatch --array=I launch/slurm_sweep.sbatch ...) and merge afterwards.
# VQJAX_DRY_RUN=1 prints both sbatch commands (the array's job id as ARRAY_JOB_ID) instead.
set -euo pipefail
config=${1:?usage: launch/slurm_sweep.sh CONFIG [--config.key=value ...]}; shift
here=$(dirname "${BASH_SOURCE[0]}")

array=(sbatch --parsable "$here/slurm_sweep.sbatch" "$config" "$@")
merge=$(printf '%q ' python -m vqjax.main --config "$config" --config.data.category=all \
  --config.sweep.merge_only=True "$@")
merge_job=(--parsable --job-name=vqjax-merge --ntasks=1 --wrap="${merge% }")
if [[ ${VQJAX_DRY_RUN:-0} == 1 ]]; then
  line=$(printf '%q ' "${array[@]}"); echo "${line% }"
  line=$(printf '%q ' sbatch --dependency=afterok:ARRAY_JOB_ID "${merge_job[@]}"); echo "${line% }"
  exit 0
fi
array_id=$("${array[@]}")
array_id=${array_id%%;*}  # --parsable prints "jobid" or "jobid;cluster"
merge_id=$(sbatch --dependency="afterok:$array_id" "${merge_job[@]}")
echo "sweep array job ${array_id}, merge job ${merge_id%%;*} (runs after every task succeeded)"
