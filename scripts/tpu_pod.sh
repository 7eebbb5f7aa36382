#!/usr/bin/env bash
# Runs the LARY benchmark on a Cloud TPU pod slice: every host of the slice
# runs the same `python -m lary_jax.main run ...`, and JAX finds the other
# hosts by itself (lary_jax/mesh.py calls jax.distributed.initialize() with
# no arguments; on a TPU VM that reads the slice's metadata).
#
#   scripts/tpu_pod.sh [options] COMMAND [-- RUN_FLAGS...]
#
# Commands:
#   create   gcloud compute tpus tpu-vm create (with --disk: attached
#            read-only to every host)
#   setup    on every host: Python >= 3.11 venv, lary-jax[sim,tpu] from this
#            checkout (git archive HEAD, copied with tpu-vm scp) or --repo,
#            then the data: --bucket mounted with gcsfuse, --disk mounted
#            read-only, --data copied to worker 0 with gsutil rsync
#   run      on every host at once, detached from this ssh session (setsid,
#            nohup): python -m lary_jax.main run --workdir=<shared>
#            [--data_dir=...] RUN_FLAGS, its output in ~/lary-run.log on
#            each host; returns at once (a run still going is left alone).
#            Rerun after a failure, a preemption or a reboot: it resumes
#   logs     on every host: the last lines of ~/lary-run.log and whether the
#            run is going or ended (and its exit status)
#   wait     on every host: wait until the run ends; exits with its status
#            (reconnects when the ssh connection drops)
#   exec     on every host: the shell command given after --
#   delete   gcloud compute tpus tpu-vm delete
#   up       create, setup, run; with --delete_after also wait and delete
#
# Options (some also read from the environment variable in brackets):
#   --name NAME          TPU VM name [LARY_TPU_NAME, default lary-pod]
#   --zone ZONE          [LARY_TPU_ZONE, default us-central1-a]
#   --project PROJECT    [LARY_TPU_PROJECT, default gcloud's]
#   --type TYPE          accelerator type [LARY_TPU_TYPE, default v5litepod-16:
#                        4 hosts x 4 chips]
#   --version VERSION    TPU software version [LARY_TPU_VERSION, default
#                        v2-alpha-tpuv5-lite; v4: tpu-ubuntu2204-base,
#                        v6e: v2-alpha-tpuv6e]
#   --spot               create a Spot TPU (cheaper, may be preempted;
#                        `run` resumes where it stopped)
#   --bucket gs://B[/P]  a bucket (folder) that every host mounts read-write
#                        with gcsfuse at /mnt/lary: the shared workdir
#                        /mnt/lary/workdir [LARY_TPU_BUCKET]
#   --workdir DIR        the workdir on the hosts instead (it must be one
#                        folder seen by every host: NFS, Filestore, ...)
#   --data gs://B/DIR    a LARYBench DATA_DIR copied to worker 0's disk
#                        (/mnt/lary_data; process 0 prepares the datasets)
#                        and passed as --data_dir
#   --disk DISK          a persistent disk holding the DATA_DIR, attached
#                        read-only and mounted at /mnt/lary_data
#                        (--disk_device, default /dev/sdb)
#   --repo URL[@REF]     install lary-jax from this git URL (pip git+) instead
#                        of copying this checkout
#   --delete_after       up: wait for the run, then delete the TPU VM, even if
#                        the run failed
#   --dry_run            print the gcloud commands instead of running them
#
# `run` keeps everything in the shared workdir: LARY-Sim (rendered there by
# process 0 when neither --data nor --disk is given), the prepared datasets,
# feature stores, probe results and report.html. With --data or --disk,
# process 0 prepares the datasets from /mnt/lary_data. A DATA_DIR already in
# the mounted bucket needs neither: add --data_dir=/mnt/lary/DATA_DIR after --.
set -euo pipefail
shopt -s inherit_errexit  # a failing $(...) stops the script too

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NAME=${LARY_TPU_NAME:-lary-pod}
ZONE=${LARY_TPU_ZONE:-us-central1-a}
PROJECT=${LARY_TPU_PROJECT:-}
TYPE=${LARY_TPU_TYPE:-v5litepod-16}
VERSION=${LARY_TPU_VERSION:-v2-alpha-tpuv5-lite}
BUCKET=${LARY_TPU_BUCKET:-}
WORKDIR=""
DATA=""
DISK=""
DISK_DEVICE=/dev/sdb
REPO=""
SPOT=0
DELETE_AFTER=0
DRY_RUN=0
COMMAND=""
RUN_FLAGS=()

need() { [ "$2" -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --name) need "$1" $#; NAME=$2; shift 2 ;;
    --zone) need "$1" $#; ZONE=$2; shift 2 ;;
    --project) need "$1" $#; PROJECT=$2; shift 2 ;;
    --type) need "$1" $#; TYPE=$2; shift 2 ;;
    --version) need "$1" $#; VERSION=$2; shift 2 ;;
    --bucket) need "$1" $#; BUCKET=$2; shift 2 ;;
    --workdir) need "$1" $#; WORKDIR=$2; shift 2 ;;
    --data) need "$1" $#; DATA=$2; shift 2 ;;
    --disk) need "$1" $#; DISK=$2; shift 2 ;;
    --disk_device) need "$1" $#; DISK_DEVICE=$2; shift 2 ;;
    --repo) need "$1" $#; REPO=$2; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --delete_after) DELETE_AFTER=1; shift ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; RUN_FLAGS=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$COMMAND" ] || die "one command, got $COMMAND and $1"
       COMMAND=$1; shift ;;
  esac
done
[ -n "$COMMAND" ] || { usage >&2; exit 2; }
case "$BUCKET" in ""|gs://?*) ;; *) die "--bucket $BUCKET: expected gs://BUCKET[/FOLDER]" ;; esac
case "$DATA" in ""|gs://?*) ;; *) die "--data $DATA: expected gs://BUCKET/DATA_DIR" ;; esac
[ -z "$DATA" ] || [ -z "$DISK" ] || die "--data and --disk both name the data; give one"
if [ -n "$DISK" ] && [ -z "$PROJECT" ]; then
  die "--disk needs --project (the disk's full name is projects/P/zones/Z/disks/D)"
fi

# Every gcloud call names the same TPU VM.
LOCATION=(--zone="$ZONE")
[ -z "$PROJECT" ] || LOCATION+=(--project="$PROJECT")

gcloud_() {
  if [ "$DRY_RUN" = 1 ]; then
    printf 'gcloud'; printf ' %q' "$@"; printf '\n'
  else
    gcloud "$@"
  fi
}

# One shell command on every host of the slice, all at once.
on_all_hosts() {
  gcloud_ compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker=all \
    --command="$1"
}

# ------------------------------------------------------------ remote pieces
# Shell text run on the hosts (bash, as the ssh user). Idempotent: `setup`
# and `run` can be repeated.

remote_python() {
  # TPU VM images of Ubuntu 22.04 ship Python 3.10; lary-jax needs >= 3.11.
  cat <<'EOF'
set -e
PY=$(command -v python3.12 || command -v python3.11 || true)
if [ -z "$PY" ]; then
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv
  PY=python3.11
fi
[ -x "$HOME/lary-venv/bin/python" ] || "$PY" -m venv "$HOME/lary-venv"
"$HOME/lary-venv/bin/pip" install -q --upgrade pip
EOF
}

remote_install() {
  if [ -n "$REPO" ]; then
    printf '"$HOME/lary-venv/bin/pip" install -q %q\n' \
      "lary-jax[sim,tpu] @ git+$REPO"
  else
    cat <<'EOF'
rm -rf "$HOME/lary-jax" && mkdir -p "$HOME/lary-jax"
tar -xzf "$HOME/lary-jax.tar.gz" -C "$HOME/lary-jax"
"$HOME/lary-venv/bin/pip" install -q -c "$HOME/lary-jax/constraints.txt" -e "$HOME/lary-jax[sim,tpu]"
EOF
  fi
}

remote_mounts() {
  if [ -n "$BUCKET" ]; then
    local path=${BUCKET#gs://} bucket folder=""
    bucket=${path%%/*}
    [ "$bucket" = "$path" ] || folder=${path#*/}
    cat <<'EOF'
if ! command -v gcsfuse >/dev/null; then
  # Google's apt repository for gcsfuse, as its install guide gives it.
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcsfuse
fi
sudo mkdir -p /mnt/lary && sudo chown "$USER" /mnt/lary
EOF
    # --rename-dir-limit: TFDS and orbax finish a folder by renaming it.
    printf 'mountpoint -q /mnt/lary || gcsfuse --implicit-dirs --rename-dir-limit=100000%s %q /mnt/lary\n' \
      "${folder:+ --only-dir $(printf %q "$folder")}" "$bucket"
  fi
  if [ -n "$DISK" ]; then
    printf 'sudo mkdir -p /mnt/lary_data\n'
    # noload: a disk attached read-only to several hosts has no journal to
    # replay.
    printf 'mountpoint -q /mnt/lary_data || sudo mount -o ro,noload %q /mnt/lary_data\n' \
      "$DISK_DEVICE"
  fi
}

remote_copy_data() {
  printf 'sudo mkdir -p /mnt/lary_data && sudo chown "$USER" /mnt/lary_data\n'
  printf 'gsutil -m -q rsync -r %q /mnt/lary_data\n' "$DATA"
}

shared_workdir() {
  if [ -n "$WORKDIR" ]; then
    printf '%s' "$WORKDIR"
  elif [ -n "$BUCKET" ]; then
    printf '/mnt/lary/workdir'
  else
    die "run needs a workdir that every host shares: --bucket gs://... (or --workdir on your own shared file system)"
  fi
}

# The run's files on each host: its output, its process id, its exit status
# (single-quoted: the host's $HOME).
RUN_LOG='$HOME/lary-run.log'
RUN_PID='$HOME/lary-run.pid'
RUN_STATUS='$HOME/lary-run.status'
# True on the host while the run started there is alive.
RUN_ALIVE="[ -s \"$RUN_PID\" ] && kill -0 \"\$(cat \"$RUN_PID\")\" 2>/dev/null"

remote_run() {
  local workdir args
  workdir=$(shared_workdir)
  args=(--workdir="$workdir")
  if [ -n "$DATA" ] || [ -n "$DISK" ]; then
    args+=(--data_dir=/mnt/lary_data)
  fi
  echo 'set -e'
  # Only the mounts: a host that rebooted (Spot, maintenance) lost them.
  if [ -n "$BUCKET" ]; then
    printf 'mountpoint -q /mnt/lary || { echo "/mnt/lary is not mounted: run setup again" >&2; exit 1; }\n'
  fi
  if [ -n "$DISK" ]; then
    printf 'mountpoint -q /mnt/lary_data || sudo mount -o ro,noload %q /mnt/lary_data\n' "$DISK_DEVICE"
  fi
  printf 'mkdir -p %q\n' "$workdir"
  # A run still going (a second `run`, or one after a dropped connection)
  # is left alone.
  printf 'if %s; then\n' "$RUN_ALIVE"
  printf '  echo "$(hostname): the run is still going (pid $(cat "%s")), log %s"\n' \
    "$RUN_PID" "$RUN_LOG"
  printf '  exit 0\nfi\nrm -f "%s"\n' "$RUN_STATUS"
  # The run as a script of its own, started in a new session: it outlives
  # this ssh connection (no SIGHUP reaches it) and records its exit status.
  printf 'cat > "$HOME/lary-run.sh" <<'"'"'LARY_RUN_EOF'"'"'\n'
  printf 'cd %q\n' "$workdir"
  printf '"$HOME/lary-venv/bin/python" -m lary_jax.main run'
  printf ' %q' "${args[@]}" "${RUN_FLAGS[@]+"${RUN_FLAGS[@]}"}"
  printf '\n'
  printf 'echo $? > "%s"\n' "$RUN_STATUS"
  printf 'LARY_RUN_EOF\n'
  printf 'echo "--- $(date -u +%%FT%%TZ) run started" >> "%s"\n' "$RUN_LOG"
  printf 'setsid nohup bash "$HOME/lary-run.sh" >> "%s" 2>&1 < /dev/null &\n' \
    "$RUN_LOG"
  printf 'echo $! > "%s"\n' "$RUN_PID"
  printf 'echo "$(hostname): run started (pid $!), log %s"\n' "$RUN_LOG"
}

remote_logs() {
  printf 'echo "=== $(hostname)"\n'
  printf 'tail -n 20 "%s" 2>/dev/null || echo "(no run started here)"\n' \
    "$RUN_LOG"
  printf 'if [ -s "%s" ]; then\n' "$RUN_STATUS"
  printf '  echo "=== $(hostname): the run ended with status $(cat "%s")"\n' \
    "$RUN_STATUS"
  printf 'elif %s; then\n' "$RUN_ALIVE"
  printf '  echo "=== $(hostname): the run is going"\n'
  printf 'elif [ -s "%s" ]; then\n' "$RUN_PID"
  printf '  echo "=== $(hostname): the run stopped without a status (killed, or the host restarted): run again to resume"\n'
  printf 'fi\n'
}

remote_wait() {
  printf 'while [ ! -s "%s" ]; do\n' "$RUN_STATUS"
  printf '  if ! { %s; } && [ ! -s "%s" ]; then\n' "$RUN_ALIVE" "$RUN_STATUS"
  printf '    echo "$(hostname): no run is going and none ended: run again to resume" >&2\n'
  printf '    exit 3\n  fi\n  sleep 20\ndone\n'
  printf 'tail -n 5 "%s"\n' "$RUN_LOG"
  printf 'exit "$(cat "%s")"\n' "$RUN_STATUS"
}

# ----------------------------------------------------------------- commands

create() {
  local extra=()
  [ "$SPOT" = 0 ] || extra+=(--spot)
  [ -z "$DISK" ] || extra+=(
    --data-disk="source=projects/$PROJECT/zones/$ZONE/disks/$DISK,mode=read-only")
  gcloud_ compute tpus tpu-vm create "$NAME" "${LOCATION[@]}" \
    --accelerator-type="$TYPE" --version="$VERSION" \
    "${extra[@]+"${extra[@]}"}"
}

setup() {
  if [ -z "$REPO" ]; then
    # What is committed here, not the working tree's edits or build folders.
    TMP=$(mktemp -d)
    trap 'rm -rf "$TMP"' EXIT
    git -C "$ROOT" archive --format=tar.gz -o "$TMP/lary-jax.tar.gz" HEAD
    gcloud_ compute tpus tpu-vm scp "$TMP/lary-jax.tar.gz" \
      "$NAME:~/lary-jax.tar.gz" "${LOCATION[@]}" --worker=all
  fi
  local script
  script=$(remote_python; remote_install; remote_mounts)
  on_all_hosts "$script" || return
  if [ -n "$DATA" ]; then
    # Only process 0 (worker 0) prepares the datasets, so only it reads them.
    script=$(remote_copy_data)
    gcloud_ compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker=0 \
      --command="$script"
  fi
}

# This script with the options that name the TPU VM (for follow-ups).
self_command() {
  local words=("scripts/tpu_pod.sh" --name "$NAME" --zone "$ZONE")
  [ -z "$PROJECT" ] || words+=(--project "$PROJECT")
  [ -z "$BUCKET" ] || words+=(--bucket "$BUCKET")
  [ -z "$WORKDIR" ] || words+=(--workdir "$WORKDIR")
  printf '%q ' "${words[@]}"
}

run() {
  local script self again=""
  shared_workdir >/dev/null  # no shared workdir: stop before any ssh
  script=$(remote_run)
  # `|| return`: inside `up`'s `{ ...; } || status=$?` errexit is off.
  on_all_hosts "$script" || return
  self=$(self_command)
  [ ${#RUN_FLAGS[@]} -eq 0 ] || again=$(printf ' %q' -- "${RUN_FLAGS[@]}")
  cat <<EOF
tpu_pod.sh: the run goes on on every host without this ssh session (a
dropped connection does not stop it); each host writes ~/lary-run.log.
  how it goes:       ${self}logs
  wait for the end:  ${self}wait
  after a failure, a preemption or a reboot, resume where it stopped:
                     ${self}run${again}
EOF
}

# Waits for the run on every host; a dropped ssh connection (status 255)
# reconnects, up to 30 times.
wait_run() {
  local script status tries=0
  script=$(remote_wait)
  while true; do
    status=0
    on_all_hosts "$script" || status=$?
    if [ "$status" != 255 ] || [ $((tries += 1)) -gt 30 ]; then
      return "$status"
    fi
    echo "tpu_pod.sh: the ssh connection dropped; reconnecting" >&2
    [ "$DRY_RUN" = 1 ] || sleep "${LARY_TPU_RECONNECT_S:-30}"
  done
}

delete() { gcloud_ compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet; }

case "$COMMAND" in
  create) create ;;
  setup) setup ;;
  run) run ;;
  logs) on_all_hosts "$(remote_logs)" ;;
  wait) wait_run ;;
  exec)
    [ ${#RUN_FLAGS[@]} -gt 0 ] || die "exec: give the command after --"
    on_all_hosts "${RUN_FLAGS[*]}" ;;
  delete) delete ;;
  up)
    shared_workdir >/dev/null  # fail before paying for a TPU
    create
    if [ "$DELETE_AFTER" = 1 ]; then
      status=0
      { setup && run && wait_run; } || status=$?
      delete
      exit "$status"
    fi
    setup
    run ;;
  *) die "unknown command $COMMAND (create, setup, run, logs, wait, exec, delete, up)" ;;
esac
