"""scripts/tpu_pod.sh against a fake `gcloud` that records its arguments.

No cloud is reached: the fake stands first on PATH. The commands the script
would send to the TPU hosts are run here with bash, against a stub Python,
to check that every host would run exactly the intended argv.
"""

import json
import os
import pathlib
import stat
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "tpu_pod.sh"

# Records argv (and, for scp, what the tarball holds); exits 7 when an
# argument contains $FAKE_GCLOUD_FAIL.
_FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, sys, tarfile
args = sys.argv[1:]
entry = {{"args": args}}
if args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
  with tarfile.open(args[4]) as tar:
    entry["tar"] = sorted(tar.getnames())
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
  log.write(json.dumps(entry) + "\\n")
fail = os.environ.get("FAKE_GCLOUD_FAIL")
# The first $FAKE_GCLOUD_DROPS ssh calls lose their connection (ssh: 255).
drops = int(os.environ.get("FAKE_GCLOUD_DROPS", "0"))
with open(os.environ["FAKE_GCLOUD_LOG"]) as log:
  ssh_calls = sum('"ssh"' in line for line in log)
if args[3:4] == ["ssh"] and ssh_calls <= drops:
  sys.exit(255)
sys.exit(7 if fail and any(fail in a for a in args) else 0)
"""

# Stands in for the hosts' venv Python: records each call's argv and
# session, prints a line (the run's log) and exits with $FAKE_PYTHON_EXIT
# after $FAKE_PYTHON_SLEEP seconds.
_FAKE_PYTHON = f"""#!{sys.executable}
import json, os, sys, time
time.sleep(float(os.environ.get("FAKE_PYTHON_SLEEP", "0")))
with open(os.environ["FAKE_PYTHON_LOG"], "a") as log:
  log.write(json.dumps({{"argv": sys.argv[1:], "sid": os.getsid(0),
                        "cwd": os.getcwd()}}) + "\\n")
print("lary run: 1 process, 4 tpu devices: TPU v5 lite")
sys.exit(int(os.environ.get("FAKE_PYTHON_EXIT", "0")))
"""


def _executable(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def pod(tmp_path):
  """Runs the script with the fake gcloud; returns (result, gcloud calls)."""
  bin_dir = tmp_path / "bin"
  _executable(bin_dir / "gcloud", _FAKE_GCLOUD)
  log = tmp_path / "gcloud.jsonl"
  env = {k: v for k, v in os.environ.items() if not k.startswith("LARY_TPU")}
  env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
             FAKE_GCLOUD_LOG=str(log))

  def call(*args, fail=None, drops=0):
    if log.exists():
      log.unlink()
    done = subprocess.run(
        ["bash", str(SCRIPT), *args], env={
            **env, **({"FAKE_GCLOUD_FAIL": fail} if fail else {}),
            "FAKE_GCLOUD_DROPS": str(drops), "LARY_TPU_RECONNECT_S": "0"},
        capture_output=True, text=True, timeout=60, check=False)
    calls = ([json.loads(line) for line in log.read_text().splitlines()]
             if log.exists() else [])
    return done, calls

  return call


def _ssh_command(call):
  """The shell text an `ssh --worker=all` call runs on every host."""
  args = call["args"]
  assert args[:5] == ["compute", "tpus", "tpu-vm", "ssh", "pod1"], args
  assert "--worker=all" in args
  (command,) = [a for a in args if a.startswith("--command=")]
  return command[len("--command="):]


def _run_line(script: str) -> str:
  """The python command line of the run script a host writes and starts."""
  (line,) = [l for l in script.splitlines()
             if l.startswith('"$HOME/lary-venv/bin/python" -m lary_jax.main')]
  return line


def test_up_creates_sets_up_runs_and_deletes(pod):
  done, calls = pod("--name", "pod1", "--zone", "europe-west4-a",
                    "--project", "proj", "--type", "v4-32", "--version",
                    "tpu-ubuntu2204-base", "--spot", "--bucket",
                    "gs://my-bucket/lary", "--delete_after", "up", "--",
                    "--tiny", "--seed=3")
  assert done.returncode == 0, done.stderr
  where = ["--zone=europe-west4-a", "--project=proj"]
  # --delete_after: the detached run is waited for before the delete.
  assert [c["args"][:4] for c in calls] == [
      ["compute", "tpus", "tpu-vm", verb]
      for verb in ("create", "scp", "ssh", "ssh", "ssh", "delete")]
  assert calls[0]["args"][4:] == ["pod1", *where, "--accelerator-type=v4-32",
                                  "--version=tpu-ubuntu2204-base", "--spot"]
  # This checkout's committed files, copied to every host.
  scp = calls[1]
  assert scp["args"][5:] == ["pod1:~/lary-jax.tar.gz", *where,
                             "--worker=all"]
  assert {"pyproject.toml", "lary_jax/main.py", "lary_jax/mesh.py",
          "configs/default.py"} <= set(scp["tar"])
  assert not any(n.startswith((".venv", ".git/")) for n in scp["tar"])
  setup = _ssh_command(calls[2])
  assert calls[2]["args"][5:7] == where
  assert 'tar -xzf "$HOME/lary-jax.tar.gz" -C "$HOME/lary-jax"' in setup
  assert ('"$HOME/lary-venv/bin/pip" install -q -c '
          '"$HOME/lary-jax/constraints.txt" -e "$HOME/lary-jax[sim,tpu]"') in (
              setup)
  assert "constraints.txt" in scp["tar"]
  assert ("gcsfuse --implicit-dirs --rename-dir-limit=100000 --only-dir lary "
          "my-bucket /mnt/lary") in setup
  run = _ssh_command(calls[3])
  assert run.splitlines()[1].startswith("mountpoint -q /mnt/lary || ")
  assert _run_line(run) == (
      '"$HOME/lary-venv/bin/python" -m lary_jax.main run '
      "--workdir=/mnt/lary/workdir --tiny --seed=3")
  assert "setsid nohup bash" in run
  assert 'exit "$(cat "$HOME/lary-run.status")"' in _ssh_command(calls[4])
  assert calls[5]["args"][4:] == ["pod1", *where, "--quiet"]
  assert "resume where it stopped" in done.stdout


def test_a_failed_run_still_deletes_and_fails(pod):
  done, calls = pod("--name", "pod1", "--bucket", "gs://b", "--delete_after",
                    "up", fail="lary_jax.main run")
  assert done.returncode == 7
  assert [c["args"][3] for c in calls] == [
      "create", "scp", "ssh", "ssh", "delete"]
  # Without a folder the whole bucket is the mount.
  assert "--rename-dir-limit=100000 b /mnt/lary" in _ssh_command(calls[2])


def test_without_delete_after_the_pod_stays(pod):
  done, calls = pod("--name", "pod1", "--bucket", "gs://b", "up",
                    fail="lary_jax.main run")
  assert done.returncode == 7
  assert [c["args"][3] for c in calls] == ["create", "scp", "ssh", "ssh"]


def test_persistent_disk_is_attached_read_only_and_is_the_data(pod):
  done, calls = pod("--name", "pod1", "--zone", "us-east5-b", "--project",
                    "proj", "--disk", "lary-data", "create")
  assert done.returncode == 0, done.stderr
  assert calls[0]["args"][-1] == (
      "--data-disk=source=projects/proj/zones/us-east5-b/disks/lary-data,"
      "mode=read-only")
  done, calls = pod("--name", "pod1", "--project", "proj", "--disk",
                    "lary-data", "--workdir", "/nfs/lary", "run", "--",
                    "--dataset=calvin", "--metadata_dir=/mnt/lary_data/meta")
  assert done.returncode == 0, done.stderr
  run = _ssh_command(calls[0])
  assert "sudo mount -o ro,noload /dev/sdb /mnt/lary_data" in (
      run.splitlines()[1])
  assert _run_line(run) == (
      '"$HOME/lary-venv/bin/python" -m lary_jax.main run --workdir=/nfs/lary '
      "--data_dir=/mnt/lary_data --dataset=calvin "
      "--metadata_dir=/mnt/lary_data/meta")


def test_bucket_data_is_copied_and_repo_installs_with_pip(pod):
  done, calls = pod("--name", "pod1", "--data", "gs://b/DATA_DIR", "--repo",
                    "https://example.org/lary-jax.git@v1", "setup")
  assert done.returncode == 0, done.stderr
  assert [c["args"][3] for c in calls] == ["ssh", "ssh"]  # no scp
  setup = _ssh_command(calls[0])
  assert ("\"$HOME/lary-venv/bin/pip\" install -q lary-jax\\[sim\\,tpu\\]\\ "
          "@\\ git+https://example.org/lary-jax.git@v1") in setup
  assert "gcsfuse" not in setup and "gsutil" not in setup
  # The data goes to worker 0 only: process 0 prepares the datasets.
  assert "--worker=0" in calls[1]["args"]
  (copy,) = [a for a in calls[1]["args"] if a.startswith("--command=")]
  assert "gsutil -m -q rsync -r gs://b/DATA_DIR /mnt/lary_data" in copy


@pytest.mark.parametrize("args, message", [
    (("run",), "run needs a workdir that every host shares"),
    (("up",), "run needs a workdir that every host shares"),
    (("--disk", "d", "create"), "--disk needs --project"),
    (("--data", "gs://b/d", "--disk", "d", "--project", "p", "create"),
     "give one"),
    (("--bucket", "my-bucket", "run"), "expected gs://BUCKET"),
    (("--zone",), "--zone needs a value"),
    (("exec",), "give the command after --"),
    (("launch",), "unknown command launch"),
])
def test_mistakes_stop_before_any_gcloud_call(pod, args, message):
  done, calls = pod(*args)
  assert done.returncode == 2
  assert message in done.stderr
  assert calls == []


def _host(tmp_path, **env):
  """Runs shell text as a host would over ssh, in a session of its own."""
  home = tmp_path / "home"
  _executable(home / "lary-venv" / "bin" / "python", _FAKE_PYTHON)
  log = tmp_path / "python.jsonl"
  env = {**os.environ, "HOME": str(home), "FAKE_PYTHON_LOG": str(log), **env}

  def ssh(text):
    proc = subprocess.Popen(["bash", "-c", text], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    out, err = proc.communicate(timeout=60)
    return proc.pid, proc.returncode, out, err

  return home, log, ssh


def _wait_for(path: pathlib.Path, seconds: float = 60) -> str:
  deadline = time.monotonic() + seconds
  while not (path.exists() and path.read_text().strip()):
    assert time.monotonic() < deadline, f"{path} never written"
    time.sleep(0.1)
  return path.read_text().strip()


def test_hosts_run_exactly_the_given_argv_detached(pod, tmp_path):
  """The ssh command text, run by bash, starts the run in a session of its
  own (a dropped ssh does not stop it) with each argument unchanged."""
  workdir = tmp_path / "shared work"
  done, calls = pod("--name", "pod1", "--workdir", str(workdir), "run", "--",
                    "--seed=5", "--metadata_dir=/data/it's here",
                    "--config.run.models=pixels,random_vit")
  assert done.returncode == 0, done.stderr
  home, log, ssh = _host(tmp_path, FAKE_PYTHON_SLEEP="1")
  session, status, out, _ = ssh(_ssh_command(calls[0]))
  # The ssh session ends at once; the run goes on without it.
  assert status == 0 and "run started (pid" in out
  assert not log.exists()
  _, _, again, _ = ssh(_ssh_command(calls[0]))
  assert "the run is still going" in again  # not started twice
  assert _wait_for(home / "lary-run.status") == "0"
  (run,) = (json.loads(line) for line in log.read_text().splitlines())
  assert run["sid"] != session  # a new session: no SIGHUP from ssh
  assert run["cwd"] == str(workdir)
  assert run["argv"] == ["-m", "lary_jax.main", "run",
                         f"--workdir={workdir}", "--seed=5",
                         "--metadata_dir=/data/it's here",
                         "--config.run.models=pixels,random_vit"]
  assert "lary run: 1 process" in (home / "lary-run.log").read_text()
  # How to reattach: `logs` shows each host's log and state.
  done, calls = pod("--name", "pod1", "logs")
  _, _, shown, _ = ssh(_ssh_command(calls[0]))
  assert "lary run: 1 process" in shown
  assert "the run ended with status 0" in shown


def test_wait_gives_the_runs_status_and_reconnects(pod, tmp_path):
  done, calls = pod("--name", "pod1", "--workdir", str(tmp_path / "w"), "run")
  home, _, ssh = _host(tmp_path, FAKE_PYTHON_SLEEP="0.5", FAKE_PYTHON_EXIT="4")
  ssh(_ssh_command(calls[0]))
  done, calls = pod("--name", "pod1", "wait")
  assert done.returncode == 0, done.stderr
  _, status, out, _ = ssh(_ssh_command(calls[0]))
  assert status == 4 and "lary run: 1 process" in out
  # A stopped run without a status (the host restarted): `wait` says to
  # resume instead of waiting for ever.
  (home / "lary-run.status").unlink()
  _, status, _, err = ssh(_ssh_command(calls[0]))
  assert status == 3 and "run again to resume" in err
  # A dropped connection (ssh's 255) reconnects; another status ends it.
  done, calls = pod("--name", "pod1", "wait", drops=2)
  assert done.returncode == 0, done.stderr
  assert [c["args"][3] for c in calls] == ["ssh"] * 3
  assert done.stderr.count("the ssh connection dropped; reconnecting") == 2
  done, calls = pod("--name", "pod1", "wait", fail="lary-run.status")
  assert done.returncode == 7 and len(calls) == 1


def test_dry_run_prints_and_help_lists_commands(pod):
  done, calls = pod("--dry_run", "--name", "pod1", "delete")
  assert (done.returncode, calls) == (0, [])
  assert done.stdout == (
      "gcloud compute tpus tpu-vm delete pod1 --zone=us-central1-a "
      "--quiet\n")
  done, _ = pod("--help")
  assert done.returncode == 0
  for word in ("create", "setup", "run", "exec", "delete", "up", "--bucket",
               "--disk", "--data"):
    assert word in done.stdout


def test_exec_runs_a_shell_command_on_every_host(pod):
  done, calls = pod("--name", "pod1", "exec", "--", "ls", "-l", "/mnt/lary")
  assert done.returncode == 0, done.stderr
  assert _ssh_command(calls[0]) == "ls -l /mnt/lary"
