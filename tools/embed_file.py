#!/usr/bin/env python3
"""Write a C file holding a data file's bytes as a char array (build step).

Usage: embed_file.py INPUT OUTPUT.c SYMBOL
Defines `const char SYMBOL[]` (the bytes plus a terminating NUL) and
`const size_t SYMBOL_len` (the byte count without the NUL).
"""
import sys


def main():
    src, out, sym = sys.argv[1:4]
    data = open(src, "rb").read()
    lines = [f"/* Generated from {src.split('/')[-1]} by tools/embed_file.py; do not edit. */",
             "#include <stddef.h>", f"const char {sym}[] = {{"]
    for i in range(0, len(data), 16):
        lines.append("  " + ", ".join(str(b) for b in data[i:i + 16]) + ",")
    lines += ["  0};", f"const size_t {sym}_len = {len(data)};", ""]
    with open(out, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
