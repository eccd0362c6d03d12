#!/usr/bin/env bash
# Install what ballast needs to build and test, only what is missing.
# Debian packages: compiler, meson/ninja, and the C libraries the code uses:
#   libcjson (config.json, tokenizer.json, safetensors headers), libpcre2
#   (the tokenizer's pre-tokenization regex), libutf8proc (NFC), zlib
#   (compressed test vectors), clang (libFuzzer targets).
set -euo pipefail

pkgs=(build-essential meson ninja-build pkg-config clang python3 python3-pip unzip
      libcjson-dev libpcre2-dev libutf8proc-dev zlib1g-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  echo "deps: installing ${missing[*]}" >&2
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
