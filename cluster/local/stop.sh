#!/usr/bin/env bash
# Stop the stack that cluster/local/start.sh started, by the PIDs it recorded (never `ray stop`,
# which would end every Ray on the machine). Each PID leads its own process group (start.sh used
# setsid), so the group goes with it: Ray's gcs_server, raylet and workers included.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${AMBIENT_LOCAL_STATE:-$ROOT/runs/local}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}

PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
same_process() { "$PYTHON" "$ROOT/cluster/local/owner.py" same "$@"; }  # same PID STARTTIME
group_alive() { "$PYTHON" "$ROOT/cluster/local/owner.py" group "$1"; }
failed=0

stop_one() {
  local name=$1 pid_file=$STATE/pids/$1.pid pid started deadline
  [[ -f $pid_file ]] || return 0
  read -r pid started <"$pid_file"
  # A PID file can outlive its process, and the PID can belong to another program by now: signal only
  # the process start.sh started (same PID and kernel start time). Its group may outlive the leader.
  if same_process "$pid" "$started" || { ! kill -0 "$pid" 2>/dev/null && group_alive "$pid"; }; then
    # SIGTERM to the leader first: `ray start --block` then shuts its own processes down cleanly.
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while group_alive "$pid" && ((SECONDS < deadline)); do sleep 0.5; done
    if group_alive "$pid"; then
      echo "stop.sh: $name (PID $pid) still up after ${STOP_TIMEOUT}s; killing its process group" >&2
      kill -KILL -- "-$pid" 2>/dev/null || true
      sleep 1
    fi
    if group_alive "$pid"; then
      echo "stop.sh: $name (process group $pid) survived SIGKILL; its PID file stays" >&2
      failed=1
      return 0
    fi
    echo "stopped $name (PID $pid)"
  elif kill -0 "$pid" 2>/dev/null; then
    echo "stop.sh: PID $pid of $pid_file is another process now ($name is gone); not signalled" >&2
  fi
  rm -f "$pid_file"
}

# Ray first: it may still be writing to S3 (checkpoints) when asked to stop.
for name in ray s3 prometheus; do stop_one "$name"; done

# `ray start` recorded this cluster as the machine's default (plain ray.init() would try to join it);
# forget it, as `ray stop` does, but only if it still names this stack's GCS.
if [[ -f $STATE/ports.env ]]; then
  # shellcheck disable=SC1091
  source "$STATE/ports.env"
  current=${RAY_TEMP_DIR:-/tmp/ray}/ray_current_cluster
  if [[ -f $current && $(cat "$current") == "${RAY_GCS_ADDRESS:-}" ]]; then rm -f "$current"; fi
  rm -f "$STATE/ports.env" "$STATE/env.sh"
fi
rm -f "$STATE/ray_auth_token"
exit "$failed"
