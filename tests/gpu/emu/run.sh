#!/bin/sh
# Run tests/gpu/test_cuda_ops.c on a machine without a GPU: the CUDA backend's
# .cu files are compiled as C++ against a CPU emulator (emu_cuda.h: one fiber
# per thread, block and warp barriers, warp shuffles; cuBLAS as a plain loop)
# and linked with the real CPU backend. It checks kernel logic (indexing,
# layouts, reductions, bounds under ASan), not timing, races or GPU math
# ulps. Slow (minutes); not part of meson or CI.
#   tests/gpu/emu/run.sh            # from the repository root
#   SAN=1 tests/gpu/emu/run.sh      # with AddressSanitizer + alignment checks
set -e
S=$(cd "$(dirname "$0")/../../.." && pwd)
E=$S/tests/gpu/emu
O=${TMPDIR:-/tmp}/ballast-cuda-emu
rm -rf "$O" && mkdir -p "$O/gen"
FLAGS="-O1 -g"
[ -n "$SAN" ] && FLAGS="$FLAGS -fsanitize=address,alignment,bounds -fno-sanitize-recover=all"
# kernel<<<grid, block, smem, stream>>>(args); -> emu_launch(grid, block, lambda)
for f in "$S"/kernels/cuda/*.cu; do
  python3 - "$f" "$O/gen/$(basename "${f%.cu}").cpp" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
pat = re.compile(r'(\w+(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\s*\((.*?)\);', re.S)
def rep(m):
    cfg = [c.strip() for c in m.group(2).split(',')]
    return 'emu_launch(%s, %s, [=]() { %s(%s); });' % (cfg[0], cfg[1], m.group(1), m.group(3))
open(sys.argv[2], 'w').write('#line 1 "%s"\n' % sys.argv[1] + pat.sub(rep, s))
PY
done
CXX="g++ -std=c++17 $FLAGS -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas"
CXX="$CXX -I$E/inc -I$E -I$S/kernels/cuda -I$S/kernels -I$S/kvcache -I$S/common -include emu_cuda.h"
for f in "$O"/gen/*.cpp; do $CXX -c "$f" -o "${f%.cpp}.o"; done
g++ -std=c++17 $FLAGS -I"$E" -I"$S/common" -c "$E/emu_rt.cpp" -o "$O/emu_rt.o"
CC="gcc -std=c11 $FLAGS -D_GNU_SOURCE -I$S/kernels -I$S/kvcache -I$S/common -I$S/tests/common"
$CC -c "$S/tests/gpu/test_cuda_ops.c" -o "$O/test.o"
$CC -c "$S/kernels/backend.c" -o "$O/backend.o"
$CC -c "$S/common/bl_status.c" -o "$O/bl_status.o"
$CC -c "$S/common/bl_log.c" -o "$O/bl_log.o"
for f in "$S"/kernels/cpu/*.c; do
  case "$f" in *isa_none.c) continue ;; esac
  $CC -mavx2 -mfma -mf16c -c "$f" -o "$O/cpu_$(basename "$f" .c).o"
done
g++ $FLAGS -o "$O/test_cuda_ops" "$O"/*.o "$O"/gen/*.o -lm -lpthread
ASAN_OPTIONS=detect_leaks=0 BALLAST_NO_BENCH=1 "$O/test_cuda_ops"
