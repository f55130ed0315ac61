"""The launchers in launch/, without a cluster: shell syntax, the command each one runs (a dry
run, and a real run against fake srun / sbatch / gcloud / python first on PATH, which must
agree), the Kubernetes manifest's structure, and the copy-paste example in every header."""
import json
import os
import pathlib
import re
import shlex
import string
import subprocess
import sys

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SHELL_FILES = sorted(p.name for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))
MANIFEST = "k8s_indexed_job.yaml"

CONFIG = "configs/mvtec_vq.py:paper"
# Forwarded untouched and in order; the space must survive every level of quoting.
EXTRA = ["--config.data.root=/data/my mvtec", "--config.train.num_steps=7"]
MAIN = ["python", "-m", "vqjax.main"]

# What srun exports to a task (jax.distributed reads it); a job array task adds its index.
SLURM = {"SLURM_JOB_ID": "77", "SLURM_NODELIST": "node[1-2]", "SLURM_NTASKS": "2",
         "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_CPUS_PER_TASK": "16"}
# The environment each shell launcher needs besides its arguments.
ENVIRONMENT = {
    "single_host.sh": {},
    "multi_host.sh": {"JAX_COORDINATOR_ADDRESS": "host0:1234", "JAX_NUM_PROCESSES": "2",
                      "JAX_PROCESS_ID": "1"},
    "slurm.sbatch": SLURM,
    "slurm_sweep.sbatch": {**SLURM, "SLURM_ARRAY_TASK_ID": "3"},
    "slurm_sweep.sh": {},
    "tpu_pod.sh": {"TPU_NAME": "my-pod", "ZONE": "us-central2-b"},
}
# Launchers that run one command: what precedes `python -m vqjax.main` and the flags it must get.
ONE_COMMAND = {
    "single_host.sh": dict(runner=[], flags=[]),
    "multi_host.sh": dict(runner=[], flags=["--distributed"]),
    "slurm.sbatch": dict(runner=["srun", "--kill-on-bad-exit=1", "--cpus-per-task=16"],
                         flags=["--distributed"]),
    "slurm_sweep.sbatch": dict(runner=[], flags=["--config.data.category=all",
                                                 "--config.sweep.category_index=3"]),
}
# Launchers with a test of their own below.
OWN_TEST = {"tpu_pod.sh", "slurm_sweep.sh", MANIFEST}

# Records its name, argv and JAX_/XLA_ environment; as sbatch, prints a job id like --parsable.
FAKE = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_LOG"], "a") as log:
  env = {{k: v for k, v in os.environ.items() if k.startswith(("JAX_", "XLA_"))}}
  log.write(json.dumps({{"argv": [name, *sys.argv[1:]], "env": env}}) + "\\n")
if name == "sbatch":
  print("4242;cluster1")
"""


@pytest.fixture
def launch(tmp_path):
  """launch(name, *args, env=..., dry_run=...) runs launch/<name> from the repository root in a
  clean environment (nothing of a real cluster leaks in) with the fakes first on PATH; returns
  (completed process, the fakes' calls)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("python", "srun", "sbatch", "gcloud"):
    (bin_dir / tool).write_text(FAKE.format(python=sys.executable))
    (bin_dir / tool).chmod(0o755)
  log = tmp_path / "calls.jsonl"

  def run(name, *args, env=None, dry_run=False):
    environ = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
               "FAKE_LOG": str(log), **(ENVIRONMENT[name] if env is None else env)}
    if dry_run:
      environ["VQJAX_DRY_RUN"] = "1"
    log.unlink(missing_ok=True)
    out = subprocess.run(["bash", f"launch/{name}", *args], cwd=REPO, env=environ,
                         capture_output=True, text=True, timeout=30)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return out, calls

  return run


def _dry_run_lines(out):
  assert out.returncode == 0, out.stderr
  return [shlex.split(line) for line in out.stdout.splitlines()]


def test_every_launcher_is_tested():
  files = {p.name for p in LAUNCH.iterdir()}
  assert files == set(ENVIRONMENT) | {MANIFEST}, "a launcher without tests (or a stale entry)"
  assert set(ONE_COMMAND) | OWN_TEST == files


@pytest.mark.parametrize("name", SHELL_FILES)
def test_shell_launchers_parse_and_run_strict(name):
  text = (LAUNCH / name).read_text()
  assert text.startswith("#!/usr/bin/env bash\n")
  assert "\nset -euo pipefail\n" in text
  out = subprocess.run(["bash", "-n", str(LAUNCH / name)], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("name", SHELL_FILES)
def test_without_a_config_a_launcher_prints_its_usage_and_runs_nothing(launch, name):
  out, calls = launch(name)
  assert out.returncode != 0 and "usage:" in out.stderr
  assert calls == []


@pytest.mark.parametrize("name", sorted(ONE_COMMAND))
def test_a_launcher_runs_the_command_its_dry_run_prints(launch, name):
  runner, flags = ONE_COMMAND[name]["runner"], ONE_COMMAND[name]["flags"]
  out, calls = launch(name, CONFIG, *EXTRA, dry_run=True)
  lines = _dry_run_lines(out)
  assert len(lines) == 1 and calls == []  # printed, not run
  command = lines[0]
  assert command[:len(runner) + 3] == runner + MAIN
  cli = command[len(runner) + 3:]
  assert cli[cli.index("--config") + 1] == CONFIG
  assert set(flags) <= set(cli)
  assert ("--distributed" in cli) == ("--distributed" in flags)  # only where multi-process
  assert cli[-len(EXTRA):] == EXTRA
  # Without the dry run the same argv reaches srun / python (fakes), with the environment.
  out, calls = launch(name, CONFIG, *EXTRA)
  assert out.returncode == 0, out.stderr
  assert [call["argv"] for call in calls] == [command]
  jax_env = {k: v for k, v in ENVIRONMENT[name].items() if k.startswith("JAX_")}
  assert jax_env.items() <= calls[0]["env"].items()


def test_single_host_leaves_xla_some_gpu_memory(launch):
  _, calls = launch("single_host.sh", CONFIG)
  assert calls[0]["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9"


def test_slurm_passes_cpus_per_task_to_srun_only_when_the_job_has_it(launch):
  env = {k: v for k, v in SLURM.items() if k != "SLURM_CPUS_PER_TASK"}
  (command,) = _dry_run_lines(launch("slurm.sbatch", CONFIG, env=env, dry_run=True)[0])
  assert command[:4] == ["srun", "--kill-on-bad-exit=1", *MAIN[:2]]


def test_a_sweep_task_outside_a_job_array_stops(launch):
  env = {k: v for k, v in ENVIRONMENT["slurm_sweep.sbatch"].items() if k != "SLURM_ARRAY_TASK_ID"}
  out, calls = launch("slurm_sweep.sbatch", CONFIG, env=env)
  assert out.returncode != 0 and "SLURM_ARRAY_TASK_ID" in out.stderr
  assert calls == []


def _sbatch_directives(name):
  """The #SBATCH options; sbatch reads them only before the first command of the script."""
  lines = (LAUNCH / name).read_text().splitlines()
  first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
  assert all(not line.startswith("#SBATCH") for line in lines[first_command:])
  return [line.split(None, 1)[1].split("#")[0].strip() for line in lines[:first_command]
          if line.startswith("#SBATCH")]


def test_sbatch_directives():
  directives = _sbatch_directives("slurm.sbatch")
  assert "--ntasks-per-node=1" in directives  # one process per node owns its GPUs
  assert any(d.startswith("--nodes=") for d in directives)
  assert any(d.startswith("--gpus-per-node=") for d in directives)
  directives = _sbatch_directives("slurm_sweep.sbatch")
  assert "--array=0-14" in directives  # MVTec AD's 15 categories
  assert "--ntasks=1" in directives and "--gpus=1" in directives


def test_slurm_sweep_submits_the_array_then_the_merge_after_it(launch):
  merge = [*MAIN, "--config", CONFIG, "--config.data.category=all",
           "--config.sweep.merge_only=True", *EXTRA]
  out, calls = launch("slurm_sweep.sh", CONFIG, *EXTRA, dry_run=True)
  array, merge_job = _dry_run_lines(out)
  assert calls == []
  assert array == ["sbatch", "--parsable", "launch/slurm_sweep.sbatch", CONFIG, *EXTRA]
  assert "--dependency=afterok:ARRAY_JOB_ID" in merge_job
  out, calls = launch("slurm_sweep.sh", CONFIG, *EXTRA)
  assert out.returncode == 0, out.stderr
  assert [call["argv"] for call in calls][0] == array
  submitted = calls[1]["argv"]
  assert submitted[0] == "sbatch"
  assert "--dependency=afterok:4242" in submitted  # the id --parsable printed, cluster cut off
  (wrap,) = [arg for arg in submitted if arg.startswith("--wrap=")]
  assert shlex.split(wrap[len("--wrap="):]) == merge
  assert "4242" in out.stdout


def test_tpu_pod_runs_the_cli_on_every_worker(launch):
  out, calls = launch("tpu_pod.sh", CONFIG, env={"ZONE": "us-central2-b"})
  assert out.returncode != 0 and "TPU_NAME" in out.stderr and calls == []
  out, calls = launch("tpu_pod.sh", CONFIG, *EXTRA, dry_run=True)
  (command,) = _dry_run_lines(out)
  assert calls == []
  assert command[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod",
                         "--zone=us-central2-b", "--worker=all"]
  (remote,) = [arg[len("--command="):] for arg in command if arg.startswith("--command=")]
  assert shlex.split(remote) == ["cd", "vqjax", "&&", *MAIN, "--distributed", "--config", CONFIG,
                                 *EXTRA]
  out, calls = launch("tpu_pod.sh", CONFIG, *EXTRA)
  assert out.returncode == 0, out.stderr
  assert [call["argv"] for call in calls] == [command]


def _header_examples(name):
  """The header's example commands (comment lines indented by 3+ spaces), continuations
  joined."""
  examples, current = [], ""
  for line in (LAUNCH / name).read_text().splitlines():
    if line.startswith("#!"):
      continue
    if not line.startswith("#"):
      break
    if current or line.startswith("#   "):
      current += line[1:].strip()
      if current.endswith("\\"):
        current = current[:-1] + " "
      else:
        examples.append(current)
        current = ""
  return examples


def _manifest_variables():
  """The placeholders' values from the manifest header's `export` example."""
  (export,) = [e for e in _header_examples(MANIFEST) if e.startswith("export ")]
  return dict(token.split("=", 1) for token in shlex.split(export)[1:])


def _manifest(**overrides):
  text = (LAUNCH / MANIFEST).read_text()
  # substitute() raises KeyError for a placeholder the header's example does not set.
  documents = list(yaml.safe_load_all(
      string.Template(text).substitute({**_manifest_variables(), **overrides})))
  services = [d for d in documents if d["kind"] == "Service"]
  jobs = [d for d in documents if d["kind"] == "Job"]
  assert len(services) == 1 and len(jobs) == 1 and len(documents) == 2
  return services[0], jobs[0]


@pytest.mark.parametrize("num_processes", ["2", "4"])
def test_k8s_indexed_job_gives_every_pod_the_jax_layout(num_processes):
  service, job = _manifest(NUM_PROCESSES=num_processes)
  spec = job["spec"]
  assert spec["completionMode"] == "Indexed"
  assert spec["completions"] == spec["parallelism"] == int(num_processes)
  pod = spec["template"]["spec"]
  # Pod i is <job>-i.<subdomain>; the headless Service named like the subdomain makes it resolve.
  assert service["spec"]["clusterIP"] == "None"
  assert pod["subdomain"] == service["metadata"]["name"]
  assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
  (container,) = pod["containers"]
  env = {e["name"]: e for e in container["env"]}
  assert {"JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"} <= set(env)
  host, port = env["JAX_COORDINATOR_ADDRESS"]["value"].rsplit(":", 1)
  assert host == f"{job['metadata']['name']}-0.{pod['subdomain']}" and port.isdigit()
  assert env["JAX_NUM_PROCESSES"]["value"] == num_processes
  assert env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
      "metadata.annotations['batch.kubernetes.io/job-completion-index']")
  command = container["command"] + container["args"]
  assert command[:4] == [*MAIN, "--distributed"]
  assert command[command.index("--config") + 1] == _manifest_variables()["CONFIG"]
  assert container["resources"]["limits"]["nvidia.com/gpu"] == int(
      _manifest_variables()["GPUS_PER_PROCESS"])
  # Data and workdir live on the shared claim.
  (claim,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
  (mount,) = [m for m in container["volumeMounts"] if m["name"] == claim["name"]]
  for key in ("data.root", "workdir"):
    (arg,) = [a for a in command if a.startswith(f"--config.{key}=")]
    assert arg.split("=", 1)[1].startswith(mount["mountPath"] + "/")


@pytest.mark.parametrize("name", sorted(p.name for p in LAUNCH.iterdir()))
def test_the_header_example_parses_and_runs_dry(launch, name):
  examples = [e for e in _header_examples(name) if "launch/" in e or "vqjax.main" in e]
  assert any(f"launch/{name}" in e for e in examples), f"no example of launch/{name}"
  for example in examples:
    out = subprocess.run(["bash", "-n", "-c", example], capture_output=True, text=True)
    assert out.returncode == 0, (example, out.stderr)
    for config in re.findall(r"configs/[\w/]+\.py", example):
      assert (REPO / config).is_file(), example
    # A plain invocation of this launcher ([VAR=value ...] bash|sbatch launch/<name> ...) runs.
    tokens = shlex.split(example)
    assignments = [t for t in tokens if re.fullmatch(r"[A-Z_]+=\S*", t)]
    tokens = tokens[len(assignments):]
    if (tokens[:2] in (["bash", f"launch/{name}"], ["sbatch", f"launch/{name}"])
        and not set("$;&|<>()") & set(example)):
      env = {**ENVIRONMENT[name], **dict(a.split("=", 1) for a in assignments)}
      out, _ = launch(name, *tokens[2:], env=env, dry_run=True)
      assert out.returncode == 0 and "vqjax.main" in out.stdout, (example, out.stderr)
