"""--distributed start-up: the process layout from the environment, and clear errors without
one (the runs themselves: test_multiprocess.py)."""
import os
import pathlib
import subprocess
import sys

import pytest

from vqjax import distributed
from vqjax.errors import UserInputError

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_layout_from_the_three_variables():
  environ = {"JAX_COORDINATOR_ADDRESS": "host0:1234", "JAX_NUM_PROCESSES": "4",
             "JAX_PROCESS_ID": "3"}
  assert distributed.process_arguments(environ) == {"num_processes": 4, "process_id": 3}
  assert distributed.process_arguments({}) == {}  # left to jax's cluster detection


@pytest.mark.parametrize("environ,message", [
    ({"JAX_NUM_PROCESSES": "2"}, "set both JAX_NUM_PROCESSES and JAX_PROCESS_ID"),
    ({"JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES='two': expected an integer"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     r"JAX_PROCESS_ID=2 must be in 0..JAX_NUM_PROCESSES-1"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "JAX_COORDINATOR_ADDRESS .* is not"),
])
def test_incomplete_or_bad_layouts_are_named(environ, message):
  with pytest.raises(UserInputError, match=message):
    distributed.process_arguments(environ)


def test_no_cluster_and_no_variables_is_one_line(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR",
                                                                  "JAX_NUM_PROCESSES",
                                                                  "JAX_PROCESS_ID", "SLURM_",
                                                                  "OMPI_"))}
  out = subprocess.run([sys.executable, "-m", "vqjax.main", "--distributed", "--config",
                        "configs/mvtec_vq.py:smoke", f"--config.workdir={tmp_path}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith(
      "error: --distributed: coordinator_address should be defined. Run under SLURM")
  assert "Traceback" not in out.stderr
