#!/usr/bin/env python3
"""The `ballast` gRPC client commands (tools/cmd_client.c) against the real
daemon: the binary runs as a subprocess, its stdout, stderr and exit status
are checked against what the API itself answers.

- --help of chat, stats, health and reload: exit 0 and the usage; a bad
  flag or a missing message: exit 2.
- chat: greedy and short, the text on stdout (redirected: once, at the end)
  equals a direct Generate of the same request, the summary line on stderr
  ends it with the finish reason, the tokens and the policy that ran; the
  message from stdin and --json say the same; --show-controls prints one
  line per control event, as the stream of the same request has them (a
  plan policy: [plan ready]; the small loop detector: loop, fallback).
  An unknown policy exits non-zero with INVALID_ARGUMENT naming it; a
  closed port fails at once with UNAVAILABLE, a server that never answers
  fails at --timeout with DEADLINE_EXCEEDED (no command hangs).
- stats: the pool table (executor and planner rows, kv free/total as
  GetStats has them), --json parses and its figures are GetStats'; the
  address may come from $BALLAST_SERVER.
- health: SERVING, exit 0; an unknown service is NOT_FOUND, exit 1.
- reload: with the token (--token, --token-file, $BALLAST_ADMIN_TOKEN) exit
  0 and ServerInfo's config_generation goes up by one each time, as printed;
  a wrong token or none: UNAUTHENTICATED, a line saying which, exit 1, the
  generation unchanged; a token file that is missing or empty: exit 1 with
  a message (the token read from a file was once used after its free).
- After a device error (a second daemon with
  BALLAST_INJECT_FAULT=executor:matmul:N, as test_faults.py): the chat that
  meets it exits 1 with [error: ...unhealthy after a device error...], the
  next one exits 1 with UNAVAILABLE; health prints NOT_SERVING, then
  "executor: <the pool's error>", exit 1; stats says the executor is
  UNHEALTHY (and --json has healthy false).

usage: test_cli.py BALLASTD PROTO_DIR BALLAST [NAME_FILTER...]
The model path comes from $BALLAST_SMOLLM2_GGUF (scripts/fetch-model.sh);
BALLAST_DAEMON_ADDR=GRPC,ADMIN runs against a running daemon instead (the
device-error test is then skipped).
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, generate, request, GREEDY  # noqa: E402

REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "smollm2_greedy.json")
PROMPT = "What is 7 times 8?"
UNHEALTHY = "executor pool is unhealthy after a device error"
FAULT_CALL = 2000  # test_faults.py's: the executor's 10th forward pass meets it
CAUSE = f"injected device error in matmul (call {FAULT_CALL})"
# the summary chat ends with on stderr: [finish | answer ... | tokens ... | ... | ran POLICY]
SUMMARY_RE = re.compile(r"^\[(\w+)(: .*)? \| answer .* \| tokens .* \| (ttft|speed-up).*\]$")


class Ctx:
    def __init__(self, d, ballastd, model, ballast):
        self.d, self.ballastd, self.model, self.ballast = d, ballastd, model, ballast
        self.cur = d  # the daemon whose stderr goes with a failure


def FR():
    return h.pb.FinishReason


def cli(ctx, *args, env=None, stdin=None, timeout=60):
    """Run `ballast ARGS...` to its end: (exit status, stdout, stderr). The
    environment has no BALLAST_SERVER or BALLAST_ADMIN_TOKEN unless env gives
    them; a command still running after timeout * SLOW seconds fails the test."""
    e = {k: v for k, v in os.environ.items() if k not in ("BALLAST_SERVER", "BALLAST_ADMIN_TOKEN")}
    e.update(env or {})
    try:
        run = subprocess.run([ctx.ballast, *args], input=stdin, capture_output=True, text=True,
                             env=e, timeout=timeout * h.SLOW,
                             stdin=subprocess.DEVNULL if stdin is None else None)
    except subprocess.TimeoutExpired:
        raise h.Fail(f"ballast {' '.join(args)}: still running after {timeout * h.SLOW:.0f}s") from None
    return run.returncode, run.stdout, run.stderr


def show(args, rc, out, err):
    return f"ballast {' '.join(args)}: exit {rc}\nstdout:\n{out}\nstderr:\n{err}"


def cli_ok(ctx, *args, **kw):
    rc, out, err = cli(ctx, *args, **kw)
    expect(rc == 0, show(args, rc, out, err))
    return out, err


def text_out(text):
    """What chat writes on a redirected stdout for this output: the text, ending with a newline."""
    return text if text.endswith("\n") else text + "\n"


def summary(err):
    """The last stderr line, chat's summary, matched."""
    lines = err.strip().splitlines()
    m = SUMMARY_RE.match(lines[-1]) if lines else None
    expect(m, f"no summary line at the end of stderr:\n{err}")
    return m


def control_lines(r):
    """The lines --show-controls prints for the control events of r, in order."""
    C = h.pb.Control
    lines = []
    for c in r.controls:
        if c.kind == C.PLAN_READY:
            lines.append("[plan ready]")
        elif c.kind == C.LOOP_DETECTED:
            lines.append(f"[loop detected at {c.loop_fire_at}, onset {c.loop_onset}]")
        elif c.kind == C.COMMIT:
            lines.append("[commit]")
        elif c.kind == C.FALLBACK:
            lines.append(f"[fallback: {c.fallback_mode or 'restart'}]")
    return lines


def question_of(prompt):
    """The user message inside a reference prompt rendered with the chat template."""
    start = prompt.index("<|im_start|>user\n") + len("<|im_start|>user\n")
    return prompt[start: prompt.index("<|im_end|>", start)]


def free_port():
    """A port nothing listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------- usage

def test_help(ctx):
    for cmd, flag in (("chat", "--max-tokens"), ("stats", "--json"), ("health", "--service"),
                      ("reload", "--token-file")):
        out, err = cli_ok(ctx, cmd, "--help", timeout=10)
        expect(out.startswith(f"usage: ballast {cmd}") and "--server" in out and flag in out,
               f"ballast {cmd} --help:\n{out}")
        rc, out, err = cli(ctx, cmd, "--bogus-flag", timeout=10)
        expect(rc == 2 and "unknown argument '--bogus-flag'" in err, show((cmd, "--bogus-flag"), rc, out, err))
    rc, out, err = cli(ctx, "chat", "--server", ctx.d.grpc_addr, "--max-tokens", "many", "hi", timeout=10)
    expect(rc == 2 and "--max-tokens many" in err, show(("chat", "--max-tokens many"), rc, out, err))
    rc, out, err = cli(ctx, "chat", "--server", ctx.d.grpc_addr, stdin="", timeout=10)
    expect(rc == 2 and "no message" in err, show(("chat", "(empty stdin)"), rc, out, err))


# ---------------------------------------------------------------- chat

def test_chat_greedy(ctx):
    """Greedy, short, past the end token: the same text as a direct Generate."""
    d = ctx.d
    flags = ["--server", d.grpc_addr, "--policy", "direct", "--max-tokens", "16", "--temperature", "0",
             "--ignore-eos", "--show-controls"]
    t0 = time.monotonic()
    out, err = cli_ok(ctx, "chat", *flags, PROMPT)
    took = time.monotonic() - t0
    r = generate(d.stub, request(messages=[("user", PROMPT)], policy="direct", max_tokens=16,
                                 ignore_eos=True, sampling=GREEDY), timeout=120)
    r.check_stream()
    expect(r.final.finish_reason == FR().LENGTH and len(r.token_ids()) == 16, f"Generate: {r.describe()}")
    expect(out == text_out(r.output()), f"chat printed {out!r}, Generate streamed {r.output()!r}")
    m = summary(err)
    expect(m.group(1) == "length" and "tokens executor/w4 exec 16" in err and err.rstrip().endswith("ran direct]"),
           f"summary: {err.strip().splitlines()[-1]!r}")
    expect(len(err.strip().splitlines()) == 1, f"stderr has more than the summary:\n{err}")
    print(f"#   chat ({took:.2f}s): {out.strip()!r}; {err.strip()}", flush=True)

    # the message from stdin (trailing newline dropped) and as --json
    out2, err2 = cli_ok(ctx, "chat", *flags, stdin=PROMPT + "\n")
    expect(out2 == out, f"chat from stdin printed {out2!r}, from argv {out!r}")
    out3, _ = cli_ok(ctx, "chat", *flags, "--json", *PROMPT.split())
    j = json.loads(out3)
    expect(j["text"] == r.output() and j["finish_reason"] == "LENGTH" and j["ran"] == "direct"
           and j["policy"] == "direct", f"--json: {out3}")
    expect([(u["pool"], u["phase"], u["completion_tokens"]) for u in j["usage"]] == [("executor", "exec", 16)],
           f"--json usage: {j['usage']}")


def test_chat_controls(ctx):
    """--show-controls prints a line per control event, as the stream has them;
    the text after a fallback is the restarted one."""
    d = ctx.d
    question = question_of(json.load(open(REF))["cases"][1]["prompt"])  # the small detector sees it loop
    for policy, max_tokens, task, want in (("plan-small", 16, None, "[plan ready]"),
                                           ("small", 128, "math", None)):
        flags = ["--server", d.grpc_addr, "--policy", policy, "--max-tokens", str(max_tokens),
                 "--temperature", "0", "--show-controls"] + (["--task", task] if task else [])
        t0 = time.monotonic()
        out, err = cli_ok(ctx, "chat", *flags, question)
        took = time.monotonic() - t0
        kw = {"task": h.pb.TASK_TYPE_MATH} if task else {}
        r = generate(d.stub, request(messages=[("user", question)], policy=policy, max_tokens=max_tokens,
                                     sampling=GREEDY, **kw), timeout=300)
        r.check_stream()
        lines = err.strip().splitlines()
        got = [l for l in lines[:-1] if l.startswith("[")]
        expect(got == control_lines(r), f"{policy}: --show-controls printed {got}, the stream had {control_lines(r)}")
        expect(want is None or want in got, f"{policy}: no {want} in {got}")
        expect(out == text_out(r.output()), f"{policy}: chat printed {out!r}, Generate's output {r.output()!r}")
        fin = FR().Name(r.final.finish_reason).lower()
        expect(summary(err).group(1) == fin and f"ran {r.final.ran}" in lines[-1],
               f"{policy}: summary {lines[-1]!r}, Generate finished {fin}, ran {r.final.ran}")
        print(f"#   {policy} ({took:.2f}s): {got}, {fin}", flush=True)


def test_chat_errors(ctx):
    d = ctx.d
    rc, out, err = cli(ctx, "chat", "--server", d.grpc_addr, "--policy", "no-such-policy", "--max-tokens", "4", "hi")
    expect(rc != 0 and "INVALID_ARGUMENT" in err and '"no-such-policy"' in err and out.strip() == "",
           show(("chat", "--policy no-such-policy"), rc, out, err))
    print(f"#   unknown policy: exit {rc}: {err.strip()}", flush=True)

    # nothing listens: UNAVAILABLE at once, for every command
    addr = f"127.0.0.1:{free_port()}"
    for args in (("chat", "--server", addr, "--max-tokens", "4", "hi"), ("stats", "--server", addr),
                 ("health", "--server", addr), ("reload", "--server", addr, "--token", "x")):
        t0 = time.monotonic()
        rc, out, err = cli(ctx, *args, timeout=30)
        took = time.monotonic() - t0
        expect(rc == 1 and f"ballast {args[0]}: UNAVAILABLE" in err and addr.split(":")[1] in err,
               show(args, rc, out, err))
        expect(took < 10 * h.SLOW, f"ballast {args[0]} against a closed port took {took:.1f}s")
    print(f"#   closed port: exit 1 in {took:.2f}s: {err.strip()}", flush=True)

    # a server that takes the connection and never answers: DEADLINE_EXCEEDED at --timeout
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    silent = f"127.0.0.1:{s.getsockname()[1]}"
    try:
        for args in (("chat", "--server", silent, "--timeout", "1", "hi"),
                     ("stats", "--server", silent, "--timeout", "1")):
            t0 = time.monotonic()
            rc, out, err = cli(ctx, *args, timeout=30)
            took = time.monotonic() - t0
            expect(rc == 1 and "DEADLINE_EXCEEDED" in err, show(args, rc, out, err))
            expect(took < 8 * h.SLOW, f"ballast {args[0]} --timeout 1 took {took:.1f}s")
    finally:
        s.close()
    print(f"#   silent server, --timeout 1: exit 1 in {took:.2f}s", flush=True)


# ---------------------------------------------------------------- stats, health

def test_stats(ctx):
    d = ctx.d
    d.wait_idle()
    out, _ = cli_ok(ctx, "stats", "--server", d.grpc_addr, timeout=30)
    g = d.stats()
    rows = {}
    for line in out.splitlines():
        f = line.split()
        if f and f[0] in ("executor", "planner") and len(f) >= 9:
            rows[f[0]] = f
    expect(set(rows) == {"executor", "planner"} and "pool" in out and "kv free/total" in out,
           f"no pool table with executor and planner rows:\n{out}")
    for p in g.pools:
        expect(f"{p.kv_blocks_free}/{p.kv_blocks_total}" in rows[p.name],
               f"{p.name}: row {rows[p.name]}, GetStats kv {p.kv_blocks_free}/{p.kv_blocks_total}")
        expect(rows[p.name][3] == str(p.generated_tokens),
               f"{p.name}: generated {rows[p.name][3]}, GetStats {p.generated_tokens}")
    expect("UNHEALTHY" not in out and "finished:" in out, f"stats:\n{out}")

    # --json, the address from $BALLAST_SERVER
    out, _ = cli_ok(ctx, "stats", "--json", env={"BALLAST_SERVER": d.grpc_addr}, timeout=30)
    j = json.loads(out)
    g = d.stats()
    expect([p["name"] for p in j["pools"]] == [p.name for p in g.pools], f"--json pools {j['pools']}")
    for jp, p in zip(j["pools"], g.pools):
        for k in ("kv_blocks_total", "kv_blocks_free", "steps", "generated_tokens", "prefill_tokens"):
            expect(jp[k] == getattr(p, k), f"{p.name}.{k}: --json {jp[k]}, GetStats {getattr(p, k)}")
        expect(jp["healthy"] is True and abs(jp["calibrated_tps_b1"] - p.calibrated_tps_b1) < 1e-6,
               f"{p.name}: --json {jp}")
    expect(j["requests"] == g.requests and j["rejected"] == g.rejected, f"requests {j['requests']} vs {g.requests}")
    expect({f["reason"]: f["count"] for f in j["finished"]}
           == {FR().Name(f.reason): f.count for f in g.finished}, f"--json finished {j['finished']}")
    expect(sorted((p["policy"], p["requests"]) for p in j.get("policies", []))
           == sorted((p.policy, p.requests) for p in g.policies), f"--json policies {j.get('policies')}")


def test_health(ctx):
    d = ctx.d
    for extra in ((), ("--service", "ballast.v1.Ballast")):
        out, err = cli_ok(ctx, "health", "--server", d.grpc_addr, *extra, timeout=30)
        expect(out == "SERVING\n" and err == "", f"health {extra}: {out!r} {err!r}")
    rc, out, err = cli(ctx, "health", "--server", d.grpc_addr, "--service", "nope", timeout=30)
    expect(rc == 1 and "NOT_FOUND" in err, show(("health", "--service nope"), rc, out, err))


# ---------------------------------------------------------------- reload

def test_reload(ctx):
    d = ctx.d
    token = d.require_token()
    srv = ["--server", d.grpc_addr]
    gen = d.info().config_generation

    def reloaded(args, env=None):
        nonlocal gen
        out, err = cli_ok(ctx, "reload", *srv, *args, env=env, timeout=60)
        now = d.info().config_generation
        expect(now == gen + 1, f"reload {args}: generation {gen} -> {now}")
        expect(f"reloaded: config generation {now}\n" in out and "restart required: none" in out,
               f"reload {args}:\n{out}")
        gen = now

    def refused(args, env=None, says=None):
        rc, out, err = cli(ctx, "reload", *srv, *args, env=env, timeout=60)
        expect(rc == 1 and "ballast reload: UNAUTHENTICATED" in err and (says is None or says in err),
               show(("reload", *args), rc, out, err))
        expect(d.info().config_generation == gen, f"reload {args} refused, yet the generation moved")
        return err

    reloaded(["--token", token])
    err = refused(["--token", token + "-wrong"], says="the token from --token is not the server's")
    print(f"#   wrong token: {err.strip()}", flush=True)
    refused([], says="no token given")
    refused([], env={"BALLAST_ADMIN_TOKEN": "wrong"}, says="$BALLAST_ADMIN_TOKEN is not the server's")
    reloaded([], env={"BALLAST_ADMIN_TOKEN": token})
    with tempfile.NamedTemporaryFile("w", prefix="ballast-token-", delete=False) as f:
        f.write(token + "\n")
    try:
        reloaded(["--token-file", f.name])
        rc, out, err = cli(ctx, "reload", *srv, "--token-file", f.name, "--token", token, timeout=10)
        expect(rc == 2 and "not both" in err, show(("reload", "--token-file", "--token"), rc, out, err))
    finally:
        os.unlink(f.name)
    rc, out, err = cli(ctx, "reload", *srv, "--token-file", f.name, timeout=10)
    expect(rc == 1 and "cannot open" in err, show(("reload", "--token-file (gone)"), rc, out, err))
    with tempfile.NamedTemporaryFile("w", prefix="ballast-token-") as f:
        f.write("\n")
        f.flush()
        rc, out, err = cli(ctx, "reload", *srv, "--token-file", f.name, timeout=10)
        expect(rc == 1 and "empty" in err, show(("reload", "--token-file (empty)"), rc, out, err))
    expect(d.info().config_generation == gen, "a reload without a usable token file moved the generation")
    out, _ = cli_ok(ctx, "reload", *srv, "--json", "--token", token, timeout=60)
    j = json.loads(out)
    gen += 1
    expect(j["config_generation"] == gen == d.info().config_generation and j["message"] == "reloaded",
           f"reload --json: {out}")


# ---------------------------------------------------------------- device error

def test_device_error(ctx):
    if os.environ.get("BALLAST_DAEMON_ADDR"):
        raise h.Skip("external daemon: the test sets BALLAST_INJECT_FAULT on a daemon it starts")
    cfg = h.base_config(ctx.model, **{"controls.calibrate_tokens": 0})
    d = ctx.cur = h.Daemon.start(ctx.ballastd, cfg, name="ballastd-cli-fault",
                                 env={"BALLAST_INJECT_FAULT": f"executor:matmul:{FAULT_CALL}"})
    srv = ["--server", d.grpc_addr]
    try:
        out, _ = cli_ok(ctx, "health", *srv, timeout=30)
        expect(out == "SERVING\n", f"health before the fault: {out!r}")
        # chats one after another until one meets the fault (the first, at the 10th step)
        for i in range(10):
            rc, out, err = cli(ctx, "chat", *srv, "--policy", "direct", "--max-tokens", "64", "--ignore-eos",
                               "--temperature", "0", "Count from one to ten:", timeout=120)
            if rc != 0:
                break
            expect(summary(err).group(1) == "length", show(("chat",), rc, out, err))
        m = summary(err)
        why = m.group(2) or ""
        expect(rc == 1 and m.group(1) == "error" and UNHEALTHY in why and CAUSE in why,
               show(("chat", f"(request {i})"), rc, out, err))
        expect(out.strip(), "nothing was printed of what streamed before the fault")
        print(f"#   chat {i} met the fault: exit 1, {err.strip()[:120]}...", flush=True)

        rc, out, err = cli(ctx, "chat", *srv, "--max-tokens", "4", "hi", timeout=60)
        expect(rc == 1 and "ballast chat: UNAVAILABLE" in err and UNHEALTHY in err,
               show(("chat", "(after the fault)"), rc, out, err))

        rc, out, err = cli(ctx, "health", *srv, timeout=30)
        lines = out.splitlines()
        expect(rc == 1 and lines and lines[0] == "NOT_SERVING", show(("health",), rc, out, err))
        ex = [l for l in lines[1:] if l.startswith("executor: ")]
        expect(len(ex) == 1 and UNHEALTHY in ex[0] and CAUSE in ex[0]
               and not any(l.startswith("planner") for l in lines), f"health after the fault:\n{out}")
        info = {p.name: p for p in d.info().pools}
        expect(ex[0] == f"executor: {info['executor'].error}", f"{ex[0]!r} vs ServerInfo {info['executor'].error!r}")
        print(f"#   health: exit 1: {out.strip()!r}", flush=True)

        out, _ = cli_ok(ctx, "stats", *srv, timeout=30)
        expect(re.search(r"^executor: UNHEALTHY after a device error", out, re.M)
               and not re.search(r"^planner: UNHEALTHY", out, re.M), f"stats after the fault:\n{out}")
        out, _ = cli_ok(ctx, "stats", *srv, "--json", timeout=30)
        health = {p["name"]: p["healthy"] for p in json.loads(out)["pools"]}
        expect(health == {"executor": False, "planner": True}, f"stats --json health {health}")
        d.stop(timeout=60)
    finally:
        ctx.cur = ctx.d
        d._reap()


TESTS = [test_help, test_chat_greedy, test_chat_controls, test_chat_errors, test_stats, test_health,
         test_reload, test_device_error]


def main():
    ballast = h.take_exe(3, "BALLAST")  # the rest is harness.setup's argv
    ballastd, model, filters = h.setup()
    d = h.start_or_exit(ballastd, model)
    ctx = Ctx(d, ballastd, model, ballast)
    return h.stop_shared(d, h.run_tests(TESTS, ctx, filters, daemon_of=lambda c: c.cur))


if __name__ == "__main__":
    sys.exit(main())
