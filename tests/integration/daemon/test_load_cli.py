#!/usr/bin/env python3
"""`ballast load` (tools/cmd_load.c) against the real daemon: the binary runs
as a subprocess and what it reports is checked against itself, the daemon's
/metrics and GetStats.

- --help: exit 0 and the usage; a bad flag or value: exit 2 with the usage.
- A small closed-loop load (6 requests, concurrency 1 and 3, policies direct
  and fp16, 8 tokens past EOS, one warmup request per run) as --json: every
  run has ok 6, failed 0, 48 output tokens, finish LENGTH 6; percentiles
  ordered (min <= p50 <= p90 <= p99 <= max, mean within min..max), TTFT <=
  E2E; tokens/s and requests/s are tokens and requests over the wall time,
  at concurrency 1 the wall time covers the streams back to back; the
  speed-ups are the ratio of the runs' tokens/s, fp16's 1; the daemon's view
  is GetStats'; ballast_requests_total grew by exactly the requests sent,
  warmup included.
- The text output: the table (a row per run), the speed-up lines, the
  daemon's view.
- Requests that fail (an unknown policy) are counted as failed by status
  INVALID_ARGUMENT, with the server's message, as the daemon counts them
  rejected; the next run still runs; exit 0.
- --prompts FILE.jsonl with "messages", "prompt" and "question" lines runs;
  a malformed line exits 1 naming FILE:LINE.
- A closed port: exit 1 at once with UNAVAILABLE; a server that never
  answers: exit 1 at --timeout (nothing hangs).

usage: test_load_cli.py BALLASTD PROTO_DIR BALLAST [NAME_FILTER...]
The model path comes from $BALLAST_SMOLLM2_GGUF (scripts/fetch-model.sh);
BALLAST_DAEMON_ADDR=GRPC,ADMIN runs against a running daemon instead.
"""
import json
import os
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect  # noqa: E402
from test_cli import cli, cli_ok, free_port, show  # noqa: E402

REL = 1e-6  # the JSON's numbers have 9 significant digits


class Ctx:
    def __init__(self, d, ballast):
        self.d, self.ballast = d, ballast


def close(a, b, rel=REL):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def requests_total(d):
    return d.metrics().sum("ballast_requests_total")


def check_dist(name, dist, n=None):
    expect(dist is not None, f"{name}: null")
    if n is not None:
        expect(dist["n"] == n, f"{name}: n {dist['n']}, want {n}")
    expect(dist["min"] <= dist["p50"] <= dist["p90"] <= dist["p99"] <= dist["max"],
           f"{name}: percentiles out of order: {dist}")
    expect(dist["min"] <= dist["mean"] * (1 + REL) and dist["mean"] <= dist["max"] * (1 + REL),
           f"{name}: mean outside min..max: {dist}")
    expect(dist["min"] >= 0, f"{name}: negative: {dist}")


# ---------------------------------------------------------------- usage

def test_usage(ctx):
    out, _ = cli_ok(ctx, "load", "--help", timeout=10)
    expect(out.startswith("usage: ballast load") and "--concurrency" in out and "--server" in out
           and "--tls-ca" in out, f"load --help:\n{out}")
    addr = ["--server", ctx.d.grpc_addr]
    for args in (["--bogus-flag"], ["--concurrency", "0"], ["--concurrency", "1,x"],
                 ["--requests", "0"], ["--requests", "many"], ["--max-tokens", "-1"],
                 ["--temperature", "hot"], ["--policy", ","], ["--prompt", "a", "--prompts", "f"],
                 ["--timeout", "0"], ["--requests"]):
        rc, out, err = cli(ctx, "load", *addr, *args, timeout=10)
        expect(rc == 2 and "usage: ballast load" in err and out == "",
               show(("load", *args), rc, out, err))


# ---------------------------------------------------------------- a load

def test_json_run(ctx):
    d = ctx.d
    d.wait_idle()
    before = requests_total(d)
    args = ["load", "--server", d.grpc_addr, "--requests", "6", "--concurrency", "1,3",
            "--policy", "direct,fp16", "--max-tokens", "8", "--ignore-eos", "--warmup", "1", "--json"]
    t0 = time.monotonic()
    out, err = cli_ok(ctx, *args, timeout=240)
    took = time.monotonic() - t0
    j = json.loads(out)
    after = requests_total(d)

    cfg = j["config"]
    expect(cfg["requests"] == 6 and cfg["concurrency"] == [1, 3] and cfg["policies"] == ["direct", "fp16"]
           and cfg["max_tokens"] == 8 and cfg["ignore_eos"] is True and cfg["warmup"] == 1
           and cfg["temperature"] == 0, f"config: {cfg}")
    expect({p["name"]: p["precision"] for p in j["server"]["pools"]} == {"executor": "w4", "planner": "fp16"},
           f"server: {j['server']}")
    runs = j["runs"]
    expect([(r["policy"], r["concurrency"]) for r in runs]
           == [("direct", 1), ("fp16", 1), ("direct", 3), ("fp16", 3)], f"runs: {runs}")
    for r in runs:
        what = f"{r['policy']} at concurrency {r['concurrency']}: {json.dumps(r)}"
        expect(r["requests"] == 6 and r["ok"] == 6 and r["failed"] == 0 and r["failed_by_status"] == {}
               and r["first_error"] is None and not r["interrupted"], what)
        expect(r["ok"] + r["failed"] == r["requests"], what)
        expect(r["output_tokens"] == 6 * 8 and r["finish_reasons"] == {"LENGTH": 6}, what)
        for k in ("ttft_s", "e2e_s", "tpot_s"):
            check_dist(f"{what}: {k}", r[k], n=6)
        check_dist(f"{what}: itl_s", r["itl_s"])
        # a chunk of k tokens gives k ITL samples; a request's first chunk gives none
        expect(r["itl_s"]["n"] <= 6 * 7, what)
        for k in ("min", "p50", "p90", "p99", "max", "mean"):
            expect(r["ttft_s"][k] <= r["e2e_s"][k] * (1 + REL), f"TTFT {k} > E2E {k}: {what}")
        wall = r["wall_s"]
        expect(wall > 0 and wall >= r["e2e_s"]["max"] * (1 - REL), what)
        expect(close(r["output_tokens_per_s"], r["output_tokens"] / wall, 1e-5), f"tokens/s: {what}")
        expect(close(r["requests_per_s"], r["requests"] / wall, 1e-5), f"requests/s: {what}")
        expect(r["stream_decode_tokens_per_s"] > 0, what)
        if r["concurrency"] == 1:  # closed loop, one stream: the requests ran back to back
            expect(wall >= r["e2e_s"]["mean"] * 6 * (1 - 1e-5), f"wall < the E2E sum: {what}")

    tps = {(r["policy"], r["concurrency"]): r["output_tokens_per_s"] for r in runs}
    sp = j["speedups"]
    expect([s["concurrency"] for s in sp] == [1, 3], f"speedups: {sp}")
    for s in sp:
        c = s["concurrency"]
        expect(set(s["vs_fp16"]) == {"direct", "fp16"} and s["vs_fp16"]["fp16"] == 1, f"speedups: {sp}")
        expect(close(s["vs_fp16"]["direct"], tps[("direct", c)] / tps[("fp16", c)], 1e-5),
               f"speed-up at {c}: {s['vs_fp16']['direct']} vs {tps[('direct', c)] / tps[('fp16', c)]}")

    # the daemon's view is GetStats' (nothing else ran since)
    g = d.stats()
    dv = j["daemon"]
    expect(dv["requests"] == g.requests, f"daemon requests {dv['requests']}, GetStats {g.requests}")
    pools = {p["name"]: p for p in dv["pools"]}
    for p in g.pools:
        q = pools[p.name]
        expect(p.calibrated_tps_b1 > 0 and close(q["calibrated_tps_b1"], p.calibrated_tps_b1)
               and p.calibrated_tps_b8 > 0 and close(q["calibrated_tps_b8"], p.calibrated_tps_b8),
               f"pool {p.name}: {q} vs GetStats {p}")
        expect(q["decode_tps_b1"] >= 0 and q["precision"] in ("w4", "fp16"), f"pool {p.name}: {q}")

    sent = j["requests_sent"]
    expect(sent == 4 * (6 + 1), f"requests_sent {sent}, want 28 (4 runs of 6 + 1 warmup)")
    expect(after - before == sent, f"ballast_requests_total grew by {after - before}, the tool sent {sent}")
    print(f"#   4 runs in {took:.1f}s: " + "; ".join(
        f"{r['policy']}/c{r['concurrency']} {r['output_tokens_per_s']:.1f} tok/s" for r in runs) +
        "; speed-ups " + ", ".join(f"c{s['concurrency']} {s['vs_fp16']['direct']:.2f}x" for s in sp), flush=True)


def test_text(ctx):
    d = ctx.d
    args = ["load", "--server", d.grpc_addr, "--requests", "2", "--concurrency", "2",
            "--policy", "direct,fp16", "--max-tokens", "4", "--ignore-eos"]
    out, _ = cli_ok(ctx, *args, timeout=120)
    lines = out.splitlines()
    head = [i for i, l in enumerate(lines) if l.split()[:4] == ["policy", "conc", "ok", "fail"]]
    expect(len(head) == 1 and "TTFT ms" in lines[head[0] - 1] and "E2E s" in lines[head[0] - 1],
           f"no table header:\n{out}")
    rows = [l.split() for l in lines[head[0] + 1: head[0] + 3]]
    expect([r[:4] for r in rows] == [["direct", "2", "2", "0"], ["fp16", "2", "2", "0"]]
           and all(len(r) == 8 + 3 * 5 for r in rows), f"table rows:\n{out}")
    expect(any(l.startswith("speed-up over fp16 (output tok/s) at concurrency 2: direct ")
               and l.endswith("fp16 1.00x") for l in lines), f"no speed-up line:\n{out}")
    expect(any(l.startswith("daemon's view (GetStats") for l in lines)
           and any(l.strip().startswith("executor w4: batch 1 ") for l in lines)
           and any(l.strip().startswith("planner fp16: batch 1 ") for l in lines), f"no daemon's view:\n{out}")
    expect("requests sent: 4 (warmup included)" in out, f"no request count:\n{out}")
    print("#   " + "\n#   ".join(lines[head[0] - 1: head[0] + 3]), flush=True)


def test_failed_requests(ctx):
    """An unknown policy: every request fails INVALID_ARGUMENT, counted, not fatal."""
    d = ctx.d
    m0 = d.metrics()
    out, err = cli_ok(ctx, "load", "--server", d.grpc_addr, "--requests", "3", "--concurrency", "2",
                      "--policy", "no-such-policy,direct", "--max-tokens", "2", "--json", timeout=120)
    j = json.loads(out)
    m1 = d.metrics()
    bad, good = j["runs"]
    expect(bad["policy"] == "no-such-policy" and bad["requests"] == 3 and bad["ok"] == 0 and bad["failed"] == 3
           and bad["failed_by_status"] == {"INVALID_ARGUMENT": 3} and bad["output_tokens"] == 0
           and bad["ttft_s"] is None and bad["finish_reasons"] == {}, f"failed run: {bad}")
    expect('unknown policy "no-such-policy"' in bad["first_error"]
           and bad["first_error"].startswith("INVALID_ARGUMENT: "), f"first_error: {bad['first_error']}")
    expect(good["ok"] == 3 and good["failed"] == 0, f"the next run: {good}")
    expect(j["speedups"] == [], f"no fp16 run, no speed-ups: {j['speedups']}")
    rejected = (m1.sum("ballast_requests_rejected_total", code="INVALID_ARGUMENT")
                - m0.sum("ballast_requests_rejected_total", code="INVALID_ARGUMENT"))
    expect(rejected == 3, f"the daemon rejected {rejected} INVALID_ARGUMENT, the tool counted 3")
    expect(m1.sum("ballast_requests_total") - m0.sum("ballast_requests_total") == 3,
           "ballast_requests_total should count the 3 direct requests only")
    # the text output says why
    out, _ = cli_ok(ctx, "load", "--server", d.grpc_addr, "--requests", "2", "--concurrency", "1",
                    "--policy", "no-such-policy", timeout=60)
    expect("no-such-policy at concurrency 1: 2 failed (INVALID_ARGUMENT 2)" in out
           and 'unknown policy "no-such-policy"' in out, f"text:\n{out}")


def test_prompts_file(ctx):
    d = ctx.d
    with tempfile.TemporaryDirectory() as tmp:
        good = os.path.join(tmp, "p.jsonl")
        with open(good, "w") as f:
            f.write(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Hi"}]}) + "\n\n")
            f.write(json.dumps({"prompt": "What is 2 + 2?"}) + "\n")
            f.write(json.dumps({"question": "What is 3 + 3?", "ref": "6"}) + "\n")
        out, _ = cli_ok(ctx, "load", "--server", d.grpc_addr, "--prompts", good, "--requests", "3",
                        "--concurrency", "3", "--policy", "direct", "--max-tokens", "3", "--ignore-eos",
                        "--json", timeout=120)
        j = json.loads(out)
        r = j["runs"][0]
        expect(j["config"]["prompts"] == 3 and r["ok"] == 3 and r["output_tokens"] == 9, f"run: {j}")
        bad = os.path.join(tmp, "bad.jsonl")
        with open(bad, "w") as f:
            f.write(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"text": "no"}) + "\n")
        rc, out, err = cli(ctx, "load", "--server", d.grpc_addr, "--prompts", bad, timeout=30)
        expect(rc == 1 and f"{bad}:2: expected" in err, show(("load", "--prompts", bad), rc, out, err))
        rc, out, err = cli(ctx, "load", "--server", d.grpc_addr, "--prompts", os.path.join(tmp, "none"), timeout=30)
        expect(rc == 1 and "cannot open" in err, show(("load", "--prompts", "none"), rc, out, err))


def test_unreachable(ctx):
    addr = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    rc, out, err = cli(ctx, "load", "--server", addr, "--requests", "2", timeout=30)
    took = time.monotonic() - t0
    expect(rc == 1 and f"cannot reach ballastd at {addr}: UNAVAILABLE" in err and out == "",
           show(("load", "--server", addr), rc, out, err))
    expect(took < 10 * h.SLOW, f"against a closed port it took {took:.1f}s")
    print(f"#   closed port: exit 1 in {took:.2f}s", flush=True)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    silent = f"127.0.0.1:{s.getsockname()[1]}"
    try:
        t0 = time.monotonic()
        rc, out, err = cli(ctx, "load", "--server", silent, "--timeout", "1", timeout=30)
        took = time.monotonic() - t0
    finally:
        s.close()
    expect(rc == 1 and "DEADLINE_EXCEEDED" in err, show(("load", "--server", silent), rc, out, err))
    expect(took < 8 * h.SLOW, f"against a silent server with --timeout 1 it took {took:.1f}s")


TESTS = [test_usage, test_json_run, test_text, test_failed_requests, test_prompts_file, test_unreachable]


def main():
    ballast = h.take_exe(3, "BALLAST")  # the rest is harness.setup's argv
    ballastd, model, filters = h.setup()
    d = h.start_or_exit(ballastd, model)
    ctx = Ctx(d, ballast)
    return h.stop_shared(d, h.run_tests(TESTS, ctx, filters, daemon_of=lambda c: c.d))


if __name__ == "__main__":
    sys.exit(main())
