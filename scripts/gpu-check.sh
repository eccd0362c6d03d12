#!/bin/sh
# The GPU checks in one run, for a machine with an NVIDIA GPU and nvcc but
# none of the daemon's libraries (the device tool's image): build the engine,
# kernels, tools and tests with CUDA (-Ddaemon=disabled), run the GPU suite,
# then the benchmarks issue 7's goals are stated in, and leave what a
# reader needs in $OUT (default /tmp/gpu-check), at most 8 files:
#   summary.txt        the device, each step's status and time, the figures
#   build.log          meson setup and ninja (the tail on failure)
#   gpu-suite.log      meson test --suite gpu -v
#   bench-qwen3-8b.json, bench-qwen3-32b.json
#                      ballast bench --device cuda --synthetic NAME
#                      --precision fp16,w4,w2 --batch 1,8 --json (decode
#                      steps replayed as CUDA graphs, the default)
#   bench-qwen3-8b-eager.json
#                      the same for qwen3-8b fp16 and w2 with --graphs off
#   kv-capacity.json   ballast kv-capacity --device cuda, qwen3-8b, 8192
# A step that fails is recorded and the next one still runs; the exit status
# is that of the GPU suite. Every step has a time limit, 560 s in all, so
# the whole run fits one 10-minute device call.
#   scripts/gpu-check.sh                   # from the repository root
#   BENCH_STEPS=128 GPU_ARCH=90 scripts/gpu-check.sh
set -u
S=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/gpu-check}
B=${BUILD:-$S/build-gpu}
ARCH=${GPU_ARCH:-90}
STEPS=${BENCH_STEPS:-64}
mkdir -p "$OUT"
SUM=$OUT/summary.txt
: >"$SUM"
say() { echo "$*" | tee -a "$SUM"; }

# step NAME LIMIT_S CMD...: run with a time limit, record status and time
step() {
  name=$1 limit=$2
  shift 2
  t0=$(date +%s)
  timeout "$limit" "$@"
  rc=$?
  say "$name: exit $rc in $(($(date +%s) - t0)) s"
  return $rc
}

say "ballast gpu-check $(git -C "$S" rev-parse --short HEAD 2>/dev/null || echo '?') $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory,driver_version --format=csv,noheader \
  >>"$SUM" 2>&1 || say "nvidia-smi: not available"
nvcc --version | tail -1 >>"$SUM" 2>&1

if [ -f "$B/build.ninja" ]; then
  setup="meson configure '$B'"
else
  setup="meson setup '$B' '$S'"
fi
step build 170 sh -c "$setup -Dbuildtype=release -Dcuda=enabled -Ddaemon=disabled \
  -Dgpu_arch=$ARCH >'$OUT/build.log' 2>&1 && ninja -C '$B' >>'$OUT/build.log' 2>&1"
built=$?
if [ $built -ne 0 ]; then
  tail -40 "$OUT/build.log" >>"$SUM"
  exit 1
fi

step gpu-suite 140 meson test -C "$B" --suite gpu --no-rebuild -v --print-errorlogs \
  >"$OUT/gpu-suite.log" 2>&1
suite=$?
grep -E "checks, [0-9]+ failed|^[0-9]+/[0-9]+ .*(OK|FAIL|SKIP)" "$OUT/gpu-suite.log" >>"$SUM"

# bench NAME FILE LIMIT ARGS...: one ballast bench run and its figures
bench() {
  m=$1 file=$2 limit=$3
  shift 3
  step "bench $m $*" "$limit" "$B/tools/ballast" bench --device cuda --synthetic "$m" \
    --batch 1,8 --steps "$STEPS" --json "$@" >"$OUT/$file" 2>>"$SUM"
  python3 - "$OUT/$file" >>"$SUM" 2>&1 <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:  # a failed run leaves no JSON
    sys.exit(f"  (no figures: {e})")
g = "graphs" if d.get("graphs") else "eager"
for r in d["results"]:
    frac = r.get("peak_fraction")
    up = r.get("speedup_vs_fp16")
    print(f"  {d['model']} {g} {r['precision']:>4} batch {r['batch']}: {r['decode_tok_s']:9.1f} tok/s"
          f"  {r['weight_gb_s']:7.1f} GB/s"
          + (f" ({100 * frac:.1f}% of peak)" if frac is not None else "")
          + (f"  {up:.2f}x fp16" if up is not None else ""))
PY
}

bench qwen3-8b bench-qwen3-8b.json 70 --precision fp16,w4,w2
bench qwen3-8b bench-qwen3-8b-eager.json 45 --precision fp16,w2 --graphs off
# 64 GB of fp16 weights are made on the host first
bench qwen3-32b bench-qwen3-32b.json 120 --precision fp16,w4,w2

step kv-capacity 15 "$B/tools/ballast" kv-capacity --synthetic qwen3-8b --device cuda \
  --context 8192 --json >"$OUT/kv-capacity.json" 2>>"$SUM"

say "done: GPU suite exit $suite"
exit $suite
