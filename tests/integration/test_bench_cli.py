#!/usr/bin/env python3
"""`ballast bench` and `ballast kv-capacity` device reporting, on the CPU.

bench: the JSON's "device_info" object (name, memory, peak and where it came
from), each static-batch row's peak_fraction (weight_gb_s over --peak-gb-s,
null without a peak: a CPU reports none) and speedup_vs_fp16 (decode tok/s
over fp16's at the same batch; 1 for fp16 itself), the existing keys kept,
the text output's device line, and bad --peak-gb-s values rejected (exit 2).
kv-capacity: --device cpu takes the memory from /proc/meminfo's MemTotal, so
it must agree with --memory-gib of that many GiB; --device with --memory-gib,
or neither, is a usage error (exit 2); a backend that cannot say (null) an
error (exit 1).

usage: test_bench_cli.py BALLAST_BINARY
Synthetic SmolLM2-135M weights, two decode steps per row: a few seconds.
"""
import json
import subprocess
import sys



def bench(precision="fp16,w2", batch="1,2"):
    # no --group-size: SmolLM2's widths (576) take the default, 64
    return ["bench", "--synthetic", "smollm2-135m", "--precision", precision, "--batch", batch,
            "--steps", "2", "--prompt-len", "4", "--threads", "2"]

KV = ["kv-capacity", "--synthetic", "qwen3-8b", "--context", "4096"]

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


def run(ballast, *args):
    p = subprocess.run([ballast, *args], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def run_json(ballast, *args):
    rc, out, err = run(ballast, *args)
    if rc != 0:
        sys.exit(f"ballast {' '.join(args)}: exit {rc}: {err}")
    return json.loads(out)


def close(a, b, rel, abs_=0.0):
    return abs(a - b) <= abs_ + rel * abs(b)


def check_bench_keys(doc, peak):
    for k in ("device", "device_info", "model", "synthetic", "steps", "prompt_len", "results"):
        check(k in doc, f"bench JSON has '{k}'")
    check(isinstance(doc["device"], str) and doc["device"].startswith("cpu"),
          f"'device' stays the backend's name: {doc['device']!r}")
    dev = doc["device_info"]
    check(dev["backend"] == doc["device"], "device_info.backend is the backend's name")
    check(isinstance(dev["name"], str) and dev["name"], f"device name: {dev['name']!r}")
    check(dev["memory_total_bytes"] > dev["memory_free_bytes"] > 0, f"memory: {dev}")
    check(dev["sm_count"] is None and dev["compute_capability"] is None, "no SMs on a CPU")
    check(dev["device_peak_gb_s"] is None, "a CPU reports no peak")
    check(dev["peak_gb_s"] == peak, f"peak_gb_s {dev['peak_gb_s']} want {peak}")
    check(dev["peak_source"] == ("flag" if peak else None), f"peak_source {dev['peak_source']}")
    rows = doc["results"]
    check([(r["precision"], r["batch"]) for r in rows] ==
          [("fp16", 1), ("fp16", 2), ("w2", 1), ("w2", 2)], "one row per precision and batch")
    for r in rows:
        for k in ("precision", "batch", "decode_tok_s", "step_ms", "weight_gb_s",
                  "peak_fraction", "speedup_vs_fp16"):
            check(k in r, f"row has '{k}': {r}")
    return rows


def test_bench(ballast):
    doc = run_json(ballast, *bench(), "--json", "--peak-gb-s", "100")
    rows = check_bench_keys(doc, 100)
    fp16 = {r["batch"]: r["decode_tok_s"] for r in rows if r["precision"] == "fp16"}
    for r in rows:
        # weight_gb_s is printed to 3 decimals, peak_fraction to 6
        check(close(r["peak_fraction"], r["weight_gb_s"] / 100, 0, 6e-6),
              f"peak_fraction {r['peak_fraction']} vs weight_gb_s {r['weight_gb_s']} / 100")
        want = 1.0 if r["precision"] == "fp16" else r["decode_tok_s"] / fp16[r["batch"]]
        check(close(r["speedup_vs_fp16"], want, 1e-3, 1e-4),
              f"{r['precision']} batch {r['batch']}: speedup {r['speedup_vs_fp16']} want {want}")
        if r["precision"] == "fp16":
            check(r["speedup_vs_fp16"] == 1, "fp16 rows have speedup 1")

    # no peak: fractions are null, speed-ups still there (w2 first: fp16 comes later)
    doc = run_json(ballast, *bench("w2,fp16"), "--json")
    dev = doc["device_info"]
    check(dev["peak_gb_s"] is None and dev["peak_source"] is None, f"no peak: {dev}")
    rows = doc["results"]
    check(all(r["peak_fraction"] is None for r in rows), "peak_fraction null without a peak")
    check(all(r["speedup_vs_fp16"] is not None for r in rows), "speed-ups with fp16 measured later")

    # only w2: no speed-up to give; graphs on by default (a CPU records none)
    doc = run_json(ballast, *bench("w2", "1"), "--json")
    check([r["speedup_vs_fp16"] for r in doc["results"]] == [None], "no fp16: speedup null")
    check(doc["graphs"] is True, f"graphs by default: {doc['graphs']!r}")
    doc = run_json(ballast, *bench("w2", "1"), "--json", "--graphs", "off")
    check(doc["graphs"] is False and len(doc["results"]) == 1, f"--graphs off: {doc}")

    # text: the device comes first, with the peak given
    rc, out, err = run(ballast, *bench(), "--peak-gb-s", "50")
    lines = out.splitlines()
    check(rc == 0 and lines and lines[0].startswith("device: cpu"), f"text device line: {out!r}")
    check("peak 50.0 GB/s (--peak-gb-s)" in lines[0], f"text peak: {lines[0]!r}")
    check(sum("% of peak" in l for l in lines) == 4, f"text rows with a fraction: {out!r}")
    check(sum("x fp16" in l for l in lines) == 2, f"text w2 rows with a speed-up: {out!r}")

    # a group size that does not divide the widths is refused, naming them
    rc, out, err = run(ballast, *bench(precision="w2"), "--group-size", "128")
    check(rc == 1 and "group size 128 does not divide" in err, f"--group-size 128: exit {rc}, {err!r}")
    rc, out, err = run(ballast, "kv-capacity", "--synthetic", "smollm2-135m", "--context", "64",
                       "--memory-gib", "1", "--group-size", "128")
    check(rc == 2 and "does not divide" in err, f"kv-capacity --group-size 128: exit {rc}, {err!r}")

    for bad in ("yes", "ON", ""):
        rc, out, err = run(ballast, *bench(), "--graphs", bad)
        check(rc == 2 and "--graphs" in err, f"--graphs {bad!r}: exit {rc}, {err!r}")
    for bad in ("0", "-3", "abc", "nan", "inf", "1e9", ""):
        rc, out, err = run(ballast, *bench(), "--peak-gb-s", bad)
        check(rc == 2 and "--peak-gb-s" in err, f"--peak-gb-s {bad!r}: exit {rc}, {err!r}")


def test_kv_capacity(ballast):
    kb = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal:"))
    by_dev = run_json(ballast, *KV, "--device", "cpu", "--json")
    by_gib = run_json(ballast, *KV, "--memory-gib", repr(kb / 1048576), "--json")
    check(by_dev["memory_source"] == "device" and by_gib["memory_source"] == "flag",
          "memory_source")
    info = by_dev["device_info"]
    check(info["memory_total_bytes"] == kb * 1024, f"device memory {info} vs MemTotal {kb} kB")
    check(info["backend"].startswith("cpu") and info["name"], f"device_info {info}")
    check(by_gib["device_info"] is None, "no device_info with --memory-gib")
    for k in ("memory_gib", "weight_bytes", "reserve_bytes", "free_bytes", "formats"):
        check(by_dev[k] == by_gib[k], f"kv-capacity {k}: --device {by_dev[k]} --memory-gib "
              f"{by_gib[k]}")

    rc, out, err = run(ballast, *KV, "--device", "cpu")
    check(rc == 0 and out.startswith("memory: ") and "cpu" in out.splitlines()[0],
          f"text names the device: {out!r}")
    rc, out, err = run(ballast, *KV, "--device", "cpu", "--memory-gib", "8")
    check(rc == 2 and "not both" in err, f"both flags: exit {rc}, {err!r}")
    rc, out, err = run(ballast, *KV)
    check(rc == 2 and "--memory-gib" in err, f"neither flag: exit {rc}, {err!r}")
    rc, out, err = run(ballast, *KV, "--device", "null")
    check(rc == 1 and "cannot say" in err, f"--device null: exit {rc}, {err!r}")


def main():
    ballast = sys.argv[1]
    test_bench(ballast)
    test_kv_capacity(ballast)
    if failures:
        sys.exit(f"{len(failures)} checks failed")
    print("ok")


if __name__ == "__main__":
    main()
