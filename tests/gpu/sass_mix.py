#!/usr/bin/env python3
"""Static instruction mix of a kernel's streaming loop, from its SASS.

Static analysis of the compiled code, not a measurement: it counts the
instructions between a backward branch and its target (one pass of a loop
as compiled), for the smallest loop of the kernel that both loads 16 bytes
from global memory (LDG.128) and multiplies (HFMA2 or FFMA), and divides by
--loads, the number of 16-byte weight loads one pass of that loop issues
(R rows times the passes the compiler unrolled into it). Predicated-off
instructions count, as they still take an issue slot. Used for the "GEMV
inner loop" section of docs/perf.md:

  cuobjdump -sass build-gpu/kernels/cuda/libblcuda.a.p/cu_matmul.cu.o > mm.sass
  tests/gpu/sass_mix.py mm.sass cu_gemv_q_kernelILi2ELi1ELi4ELb1E --loads 8 --weights 64

cuobjdump comes with the CUDA toolkit (or the nvidia-cuda-cuobjdump wheel).
"""
import argparse
import collections
import re
import sys

CATS = ['I2F', 'LOP3', 'SHF', 'HFMA2', 'HADD2', 'FFMA', 'FADD', 'FMUL', 'LDS', 'LDG']


def functions(text):
    for part in re.split(r'\n\s*Function : ', text)[1:]:
        name = part.split('\n', 1)[0].strip()
        ins = []
        for m in re.finditer(r'/\*([0-9a-f]{4,})\*/\s+(.*?);', part):
            body = re.sub(r'^@!?U?P[T0-9]+\s+', '', m.group(2).strip())  # drop the predicate
            ins.append((int(m.group(1), 16), body))
        yield name, ins


def loops(ins):
    for addr, body in ins:
        if body.startswith('BRA'):
            t = re.search(r'0x([0-9a-f]+)', body)
            if t and int(t.group(1), 16) <= addr:
                lo = int(t.group(1), 16)
                yield [b for a, b in ins if lo <= a <= addr]


def category(op):
    base = op.split('.')[0]
    if base in ('I2F', 'I2FP'):
        return 'I2F'
    return base if base in CATS else 'other'


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('sass', help='output of cuobjdump -sass')
    ap.add_argument('kernel', help='a substring of the mangled kernel name')
    ap.add_argument('--loads', type=float, required=True,
                    help='16-byte weight loads per pass of the loop')
    ap.add_argument('--weights', type=float, default=0,
                    help='weights per 16-byte load (64 for W2, 32 for W4): adds per-weight figures')
    a = ap.parse_args()
    found = False
    for name, ins in functions(open(a.sass).read()):
        if a.kernel not in name:
            continue
        cands = [l for l in loops(ins) if any(b.startswith('LDG.E.128') for b in l) and
                 any(b.split()[0].split('.')[0] in ('HFMA2', 'FFMA') for b in l)]
        if not cands:
            continue
        body = min(cands, key=len)
        c = collections.Counter(category(b.split()[0]) for b in body)
        found = True
        print(name)
        print('  loop: %d instructions, %.1f per 16-byte weight load%s' %
              (len(body), len(body) / a.loads,
               ', %.2f per weight' % (len(body) / a.loads / a.weights) if a.weights else ''))
        print('  per load: ' + '  '.join('%s %.1f' % (k, c[k] / a.loads) for k in CATS + ['other']))
    if not found:
        sys.exit('no kernel matching %r with a streaming loop' % a.kernel)


if __name__ == '__main__':
    main()
