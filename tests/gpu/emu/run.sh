#!/bin/sh
# Run the GPU suite on a machine without a GPU: the CUDA backend's .cu files
# are compiled as C++ against a CPU emulator (emu_cuda.h: one fiber per
# thread, block and warp barriers, warp shuffles; cuBLAS as a plain loop) and
# linked with the real CPU backend. It checks kernel logic (indexing, layouts,
# reductions, bounds under ASan), not timing, races or GPU math ulps. Slow
# (minutes); not part of meson or CI.
#   tests/gpu/test_cuda_ops.c    every op against the CPU backend (after
#                                emu/test_device_info.c: the device_info slot)
#   tests/gpu/test_cuda_mma.c    the W4/W2 tensor-core matmul (WMMA emulated
#                                in emu/inc/mma.h)
#   tests/gpu/test_cuda_tp.c     tensor parallelism: communicators, split models
#   tests/gpu/test_cuda_graph.c  decode steps recorded as CUDA graphs and replayed
#   tests/gpu/test_cuda_sample.c the sample slot against the host sampler
#                                (with model/sampler*.c; ~1 minute)
#   tests/gpu/test_cuda_model.c  whole models (with model/, kvcache/ and the
#                                engine's libraries): the tiny Qwen3s only
#                                (~1.5 minutes). SmolLM2 takes ~11 minutes per
#                                weight format (half an hour for its three), so
#                                run.sh unsets BALLAST_SMOLLM2_GGUF unless
#                                EMU_SMOLLM2=1.
#   tests/gpu/emu/run.sh                 # from the repository root; both tests
#   TESTS=model tests/gpu/emu/run.sh     # one of them (ops, model)
#   SAN=1 tests/gpu/emu/run.sh           # with AddressSanitizer + alignment checks
set -e
S=$(cd "$(dirname "$0")/../../.." && pwd)
E=$S/tests/gpu/emu
O=${TMPDIR:-/tmp}/ballast-cuda-emu
TESTS=${TESTS:-ops mma model tp graph sample}
rm -rf "$O" && mkdir -p "$O/gen" "$O/eng" "$O/model"
FLAGS="-O1 -g"
[ -n "$SAN" ] && FLAGS="$FLAGS -fsanitize=address,alignment,bounds -fno-sanitize-recover=all"
# kernel<<<grid, block, smem, stream>>>(args); -> emu_launch(grid, block, lambda)
for f in "$S"/kernels/cuda/*.cu; do
  python3 - "$f" "$O/gen/$(basename "${f%.cu}").cpp" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
pat = re.compile(r'(\w+(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\s*\((.*?)\);', re.S)
def split_args(a):  # at commas outside (), [] and {}
    out, depth, cur = [], 0, ''
    for ch in a:
        depth += ch in '([{'
        depth -= ch in ')]}'
        if ch == ',' and depth == 0:
            out.append(cur)
            cur = ''
        else:
            cur += ch
    return [x.strip() for x in out + [cur] if x.strip()]
def rep(m):
    # the arguments are evaluated at the launch, as CUDA does (a graph
    # capture replays the launch after the caller's locals are gone)
    cfg = [c.strip() for c in m.group(2).split(',')]
    args = split_args(m.group(3))
    caps = ', '.join('a%d = (%s)' % (i, a) for i, a in enumerate(args))
    call = ', '.join('a%d' % i for i in range(len(args)))
    return 'emu_launch(%s, %s, [%s]() { %s(%s); });' % (cfg[0], cfg[1], caps, m.group(1), call)
open(sys.argv[2], 'w').write('#line 1 "%s"\n' % sys.argv[1] + pat.sub(rep, s))
PY
done
CXX="g++ -std=c++17 $FLAGS -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas"
CXX="$CXX -I$E/inc -I$E -I$S/kernels/cuda -I$S/kernels -I$S/kvcache -I$S/common -include emu_cuda.h"
for f in "$O"/gen/*.cpp; do $CXX -c "$f" -o "${f%.cpp}.o"; done
g++ -std=c++17 $FLAGS -I"$E" -I"$S/common" -c "$E/emu_rt.cpp" -o "$O/eng/emu_rt.o"
CC="gcc -std=c11 $FLAGS -D_GNU_SOURCE -I$S/kernels -I$S/kvcache -I$S/common -I$S/tests/common"
# the engine below the model: kernels, CPU backend, common
$CC -c "$S/kernels/backend.c" -o "$O/eng/backend.o"
$CC -c "$S/kernels/bk_fault.c" -o "$O/eng/bk_fault.o"
$CC -c "$S/kernels/bk_comm.c" -o "$O/eng/bk_comm.o"
$CC -c "$S/common/bl_status.c" -o "$O/eng/bl_status.o"
$CC -c "$S/common/bl_log.c" -o "$O/eng/bl_log.o"
for f in "$S"/kernels/cpu/*.c; do
  case "$f" in *isa_none.c) continue ;; esac
  $CC -mavx2 -mfma -mf16c -c "$f" -o "$O/eng/cpu_$(basename "$f" .c).o"
done
LIBS="-lm -lpthread"
# model_test NAME [VAR=VALUE...]: tests/gpu/test_cuda_NAME.c with model/,
# kvcache/ and the rest of common/ (built once) and the tokenizer's
# libraries, run on tests/data in the given environment
MCC="$CC -I$S/model $(pkg-config --cflags libcjson libpcre2-8 libutf8proc)"
model_test() {
  name=$1
  shift
  for f in "$S"/model/*.c "$S"/kvcache/*.c "$S"/common/bl_file.c; do
    o="$O/model/$(basename "$f" .c).o"
    [ -f "$o" ] || $MCC -c "$f" -o "$o"
  done
  $MCC -c "$S/tests/gpu/test_cuda_$name.c" -o "$O/test_cuda_$name.o"
  g++ $FLAGS -o "$O/test_cuda_$name" "$O/test_cuda_$name.o" "$O"/model/*.o "$O"/eng/*.o \
    "$O"/gen/*.o $(pkg-config --libs libcjson libpcre2-8 libutf8proc) $LIBS
  env ASAN_OPTIONS=detect_leaks=0 "$@" "$O/test_cuda_$name" "$S/tests/data"
}
for t in $TESTS; do
  case "$t" in
  ops)
    # the device_info slot on the emulated device first (seconds)
    $CC -I"$S/kernels/cuda" -c "$E/test_device_info.c" -o "$O/test_device_info.o"
    g++ $FLAGS -o "$O/test_device_info" "$O/test_device_info.o" "$O"/eng/*.o "$O"/gen/*.o $LIBS
    ASAN_OPTIONS=detect_leaks=0 "$O/test_device_info"
    $CC -c "$S/tests/gpu/test_cuda_ops.c" -o "$O/test_cuda_ops.o"
    g++ $FLAGS -o "$O/test_cuda_ops" "$O/test_cuda_ops.o" "$O"/eng/*.o "$O"/gen/*.o $LIBS
    ASAN_OPTIONS=detect_leaks=0 BALLAST_NO_BENCH=1 "$O/test_cuda_ops"
    ;;
  mma)
    $CC -c "$S/tests/gpu/test_cuda_mma.c" -o "$O/test_cuda_mma.o"
    g++ $FLAGS -o "$O/test_cuda_mma" "$O/test_cuda_mma.o" "$O"/eng/*.o "$O"/gen/*.o $LIBS
    ASAN_OPTIONS=detect_leaks=0 BALLAST_NO_BENCH=1 "$O/test_cuda_mma"
    ;;
  model)
    if [ "$EMU_SMOLLM2" = 1 ]; then model_test model; else model_test model BALLAST_SMOLLM2_GGUF=; fi
    ;;
  tp) model_test tp ;;
  graph) model_test graph ;;
  sample)
    # the host sampler alone from model/ (it needs nothing else)
    for f in sampler sampler_hist; do
      $CC -I"$S/model" -c "$S/model/$f.c" -o "$O/$f.o"
    done
    $CC -I"$S/model" -c "$S/tests/gpu/test_cuda_sample.c" -o "$O/test_cuda_sample.o"
    g++ $FLAGS -o "$O/test_cuda_sample" "$O/test_cuda_sample.o" "$O/sampler.o" \
      "$O/sampler_hist.o" "$O"/eng/*.o "$O"/gen/*.o $LIBS
    ASAN_OPTIONS=detect_leaks=0 "$O/test_cuda_sample"
    ;;
  *) echo "run.sh: unknown test '$t' (ops, mma, model, tp, graph, sample)" >&2; exit 2 ;;
  esac
done
