#!/usr/bin/env bash
# Install, build and run every test suite that needs no GPU; the last line is
# "N passed, N failed". Two builds: gcc release (unit, integration) and
# clang with AddressSanitizer + UBSan (unit, integration, and the libFuzzer
# targets, which need clang). Idempotent.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh || exit 1
export BALLAST_SMOLLM2_GGUF
BALLAST_SMOLLM2_GGUF=$(scripts/fetch-model.sh) || exit 1

configure() { # dir, meson args...; meson's output is shown only on failure
  local dir=$1 log
  shift
  if [ -f "$dir/build.ninja" ]; then log=$(meson setup --reconfigure "$dir" "$@" 2>&1)
  else log=$(meson setup "$dir" "$@" 2>&1); fi || { echo "$log"; return 1; }
}

status=0
configure build -Dcuda=auto || exit 1
ninja -C build >/dev/null || { ninja -C build; exit 1; }
meson test -C build --no-rebuild --print-errorlogs --suite unit --suite integration || status=1
CC=clang configure build-asan -Dcuda=disabled -Db_sanitize=address,undefined -Dbuildtype=debugoptimized || exit 1
ninja -C build-asan >/dev/null || { ninja -C build-asan; exit 1; }
BALLAST_SKIP_SLOW_MODEL=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C build-asan --no-rebuild --print-errorlogs --suite unit --suite integration \
  --suite fuzz --timeout-multiplier 4 || status=1

python3 - build/meson-logs/testlog.json build-asan/meson-logs/testlog.json <<'PY'
import json, sys
passed = failed = skipped = 0
for path in sys.argv[1:]:
    for line in open(path):
        r = json.loads(line)
        res = r["result"]
        if res in ("OK", "EXPECTEDFAIL"): passed += 1
        elif res == "SKIP": skipped += 1
        else: failed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
PY
exit $status
