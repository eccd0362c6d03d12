#!/bin/sh
# Every tracked C, CUDA and C++ file is as clang-format leaves it under the
# committed .clang-format. The file was written for clang-format 14
# (Debian 12's), and other major versions lay out some constructs
# differently, so with another version, or none, or outside a git checkout,
# the check is skipped (status 77) rather than failing on the tool.
#   usage: check_format.sh SOURCE_ROOT
root=${1:?usage: check_format.sh SOURCE_ROOT}
cd "$root" || exit 1
if ! command -v clang-format >/dev/null 2>&1; then
  echo "skipped: no clang-format (Debian: apt-get install clang-format)"
  exit 77
fi
major=$(clang-format --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p')
if [ "$major" != 14 ]; then
  echo "skipped: clang-format $major; .clang-format is checked with version 14"
  exit 77
fi
files=$(git ls-files '*.c' '*.h' '*.cu' '*.cuh' '*.cpp' 2>/dev/null) || {
  echo "skipped: not a git checkout"
  exit 77
}
bad=0
n=0
for f in $files; do
  n=$((n + 1))
  if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
    echo "not formatted: $f (clang-format -i $f)"
    bad=$((bad + 1))
  fi
done
echo "$n files, $bad not formatted"
[ $bad -eq 0 ]
