#!/usr/bin/env python3
"""ballastd's lifecycle: cancellation, deadlines, reload, drain.

- Cancellation: clients cancel after the first chunk (and one right after
  the call starts); finished{reason="cancelled"} counts them, the log line
  says finish=cancelled, and every pool's KV blocks come back (kv_blocks_used
  0, no stream active) once idle.
- Deadline: a short gRPC timeout on a long request is DEADLINE_EXCEEDED at
  the client, counted as finish deadline (or cancelled), blocks freed.
- Reload under load: 16 threads stream short requests while SIGHUP and
  POST /v1/reload are sent three times each, every time with a new named
  policy (visible in /v1/config and ServerInfo, and used by the workers
  from then on) and, once, a new default_max_tokens; no request fails and
  each ends with exactly one final.
- Invalid reloads (a syntax error, an out-of-range value, an unknown default
  policy) by HTTP, RPC and SIGHUP: 400 / FAILED_PRECONDITION with
  "FILE:LINE: ...", reloads_total{result="failed"} counts them, the
  generation is unchanged and the old config keeps serving.
- Restart-required keys (pools.executor.kv_budget_mb, server.grpc_threads)
  are listed by the reload and do not change the running pools.
- SIGTERM drain: /readyz 503, Health NOT_SERVING (Check and Watch), new
  Generate UNAVAILABLE, every running stream still gets its final with a
  normal finish, exit 0. With a short drain_timeout_s the running streams
  are cancelled instead, and the exit is still 0.

usage: test_lifecycle.py BALLASTD PROTO_DIR [NAME_FILTER...]
The model path comes from $BALLAST_SMOLLM2_GGUF (scripts/fetch-model.sh);
BALLAST_DAEMON_ADDR=GRPC,ADMIN runs the tests that need no signal or config
file against a running daemon.
"""
import copy
import json
import os
import signal
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, generate, request, GREEDY  # noqa: E402

SC = grpc.StatusCode
COUNT_PROMPT = "Count from one to ten:"  # with long_req: no stop (ignore_eos), no loop (direct)


class Ctx:
    def __init__(self, d, ballastd, model):
        self.d, self.ballastd, self.model = d, ballastd, model
        self.cur = None  # a second daemon a test started, whose stderr goes with its failure


def FR():
    return h.pb.FinishReason


def long_req(max_tokens=256, **kw):
    """A request that runs its max_tokens: ignore_eos, and no stop strings."""
    kw.setdefault("ignore_eos", True)
    return request(prompt=kw.pop("prompt", COUNT_PROMPT), policy="direct", max_tokens=max_tokens,
                   sampling=GREEDY, **kw)


def tiny(d, stub=None, **kw):
    kw.setdefault("prompt", "Hello")
    kw.setdefault("policy", "direct")
    r = generate(stub or d.stub, request(max_tokens=2, sampling=GREEDY, **kw), timeout=120)
    r.check_stream()
    return r


def finished(m, *reasons):
    return sum(m.sum("ballast_requests_finished_total", reason=r) for r in reasons)


def log_finish(d, rid):
    """The finish= of request rid's log line (None while it is not there)."""
    for line in d.stderr_lines():
        if f"id={rid} " in line and "finish=" in line:
            return line.split("finish=", 1)[1].split()[0]
    return None


class Streamer(threading.Thread):
    """One Generate call on its own thread; .first is set at the first message."""

    def __init__(self, stub, req, timeout=600):
        super().__init__(daemon=True)
        self.stub, self.req, self.timeout = stub, req, timeout
        self.first = threading.Event()
        self.result = None

    def run(self):
        r = h.Result()
        t0 = time.monotonic()
        try:
            for msg in self.stub.Generate(self.req, timeout=self.timeout * h.SLOW):
                r.messages.append(msg)
                self.first.set()
        except grpc.RpcError as e:
            r.code, r.details = e.code(), e.details() or ""
        r.elapsed = time.monotonic() - t0
        self.result = r
        self.first.set()


# ---------------------------------------------------------------- cancel, deadline

def test_cancel_mid_stream(ctx):
    d = ctx.d
    d.wait_idle()
    c0 = finished(d.metrics(), "cancelled")
    # four concurrent streams cancelled after their first chunk, then one alone
    reqs = [long_req(request_id=f"cancel-{i}-{time.time_ns()}") for i in range(5)]
    out = [None] * 4
    ths = [threading.Thread(target=lambda i=i: out.__setitem__(
        i, generate(d.stub, reqs[i], timeout=300, cancel_after=1))) for i in range(4)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    out.append(generate(d.stub, reqs[4], timeout=300, cancel_after=1))
    for i, r in enumerate(out):
        expect(r.code == SC.CANCELLED, f"stream {i}: {r.describe()}")
        expect(r.messages and r.messages[0].WhichOneof("event") in ("chunk", "control"),
               f"stream {i}: first message {r.messages[:1]}")
    # one cancelled at once, before any output
    call = d.stub.Generate(long_req(), timeout=60 * h.SLOW)
    call.cancel()
    h.wait_for(lambda: finished(d.metrics(), "cancelled") >= c0 + 5, 30,
               "ballast_requests_finished_total{reason=\"cancelled\"} to count 5 cancelled streams")
    d.wait_idle()
    if d.own:
        for r in reqs:
            got = h.wait_for(lambda: log_finish(d, r.request_id), 10, f"log line of {r.request_id}")
            expect(got == "cancelled", f"{r.request_id}: logged finish={got}")
    tiny(d)


def test_deadline(ctx):
    d = ctx.d
    d.wait_idle()
    m0 = d.metrics()
    c0 = finished(m0, "deadline", "cancelled")
    rid = f"deadline-{time.time_ns()}"
    # 256 tokens in 0.5 s would take over 500 tokens/s at batch 1
    r = generate(d.stub, long_req(request_id=rid), timeout=0.5)
    expect(r.code == SC.DEADLINE_EXCEEDED, f"0.5 s deadline on a 256-token request: {r.describe()}")
    expect(not r.finals or r.final.finish_reason == FR().DEADLINE, f"final before the deadline: {r.describe()}")
    h.wait_for(lambda: finished(d.metrics(), "deadline", "cancelled") >= c0 + 1, 30,
               "finished{reason=deadline|cancelled} to count the expired request")
    d.wait_idle()
    if d.own:
        got = h.wait_for(lambda: log_finish(d, rid), 10, f"log line of {rid}")
        expect(got in ("deadline", "cancelled"), f"{rid}: logged finish={got}")
    # a deadline that is long enough is no problem
    r = generate(d.stub, long_req(max_tokens=4), timeout=60)
    r.check_stream()
    expect(r.final.finish_reason == FR().LENGTH, f"finish {FR().Name(r.final.finish_reason)}")


# ---------------------------------------------------------------- reload

def with_policy(cfg, name, **kw):
    c = copy.deepcopy(cfg)
    pol = {"name": name, "base": "rescue", "loop_window": 128, "loop_ngram": 6, "loop_min_count": 3,
           "fallback": "resume", "allow_overrides": False}
    pol.update(kw)
    c["controls"]["policies"] = list(c["controls"]["policies"]) + [pol]
    return c


def test_reload_under_load(ctx):
    d = ctx.d
    d.require_own()
    token = d.require_token()
    base = copy.deepcopy(d.cfg)
    m0 = d.metrics()
    ok0 = m0.sum("ballast_reloads_total", result="ok")
    gen = d.info().config_generation
    stop = threading.Event()
    newest = ["small"]  # the policy the workers use, updated once a reload shows it
    lock = threading.Lock()
    results, errors = [], []

    def worker(i):
        ch = d.channel(own_connection=(i % 4 == 0))
        stub = h.pbg.BallastStub(ch)
        n = 0
        while not stop.is_set():
            pol = "" if n % 2 else newest[0]
            req = request(request_id=f"load-{i}-{n}", prompt=f"Item {i}.{n}: the", max_tokens=6,
                          sampling=GREEDY, policy=pol)
            r = generate(stub, req, timeout=300)
            with lock:
                results.append(r)
                if r.code != SC.OK or len(r.finals) != 1 or r.messages[-1].WhichOneof("event") != "final":
                    errors.append(f"{req.request_id} (policy {pol!r}): {r.describe()}")
            n += 1
        ch.close()

    def ran(policy):
        """Wait until a request under the policy just added has finished."""
        n0 = len(results)
        h.wait_for(lambda: any(r.final is not None and r.final.policy == policy for r in results[n0:]),
                   120, f"a request under the reloaded policy {policy}")

    ths = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(16)]
    for t in ths:
        t.start()
    try:
        h.wait_for(lambda: len(results) >= 16, 120, "the first 16 requests under load")
        cfg = base
        for i in range(3):
            # SIGHUP with a new named policy
            cfg = with_policy(cfg, f"hup{i}")
            d.rewrite(cfg)
            d.signal(signal.SIGHUP)
            gen += 1
            h.wait_for(lambda: d.info().config_generation == gen, 30, f"generation {gen} after SIGHUP {i}")
            expect(f"hup{i}" in json.dumps(d.config_json()["controls"]), f"hup{i} not in /v1/config")
            expect(f"hup{i}" in d.info().policies, f"hup{i} not in ServerInfo.policies")
            newest[0] = f"hup{i}"
            ran(f"hup{i}")
            # POST /v1/reload with another (and, the last time, a new default_max_tokens)
            cfg = with_policy(cfg, f"post{i}")
            if i == 2:
                cfg["limits"]["default_max_tokens"] = 7
            d.rewrite(cfg)
            st, body = d.reload_http(token)
            gen += 1
            expect(st == 200 and body.get("ok") is True and body.get("generation") == gen,
                   f"POST /v1/reload {i}: {st} {body!r}, want generation {gen}")
            expect(body.get("restart_required") == [], f"restart_required {body.get('restart_required')}")
            expect(f"post{i}" in json.dumps(d.config_json()["controls"]), f"post{i} not in /v1/config")
            newest[0] = f"post{i}"
            ran(f"post{i}")
        expect(d.info().limits.default_max_tokens == 7, "default_max_tokens did not change on reload")
        expect(d.config_json()["limits"]["default_max_tokens"] == 7, "/v1/config default_max_tokens")
    finally:
        stop.set()
        for t in ths:
            t.join(timeout=300 * h.SLOW)
        d.rewrite(base)  # back to the tests' config for what follows
        st, body = d.reload_http(token)
        expect(st == 200, f"reload back: {st} {body}")
    n = len(results)
    print(f"#   {n} requests under load, {len(errors)} failed", flush=True)
    expect(not errors, f"{len(errors)} of {n} requests failed during reloads:\n  " + "\n  ".join(errors[:10]))
    used = {r.final.policy for r in results}
    expect({"hup0", "post2"} <= used, f"workers never ran the reloaded policies: {sorted(used)}")
    m1 = d.metrics()
    expect(m1.sum("ballast_reloads_total", result="ok") == ok0 + 7,
           f"reloads_total{{ok}} {ok0} -> {m1.sum('ballast_reloads_total', result='ok')}, want +7")
    expect(m1.get("ballast_config_generation") == gen + 1, "generation gauge")
    d.wait_idle()


def bad_configs(d):
    """(what, config text, line of the error, word the message must name)."""
    text = h.config_text(d.cfg)
    lines = text.splitlines()
    k = h.line_of(text, "max_prompt_tokens")
    syntax = "\n".join(lines[:k] + ["  bogus = = 1;"] + lines[k:])
    c = copy.deepcopy(d.cfg)
    c["limits"]["max_tokens"] = -5
    rng = h.config_text(c)
    c = copy.deepcopy(d.cfg)
    c["controls"]["default_policy"] = "no-such-policy"
    pol = h.config_text(c)
    return [("syntax error", syntax, k + 1, ""),
            ("max_tokens -5", rng, h.line_of(rng, "max_tokens = -5"), "max_tokens"),
            ("unknown default_policy", pol, h.line_of(pol, "no-such-policy"), "default_policy")]


def test_invalid_reload(ctx):
    d = ctx.d
    d.require_own()
    token = d.require_token()
    good = h.config_text(d.cfg)
    info0 = d.info()
    m0 = d.metrics()
    failed0 = m0.sum("ballast_reloads_total", result="failed")
    fails = []
    try:
        for what, text, line, word in bad_configs(d):
            d.rewrite(text=text)
            want = f"{d.config_path}:{line}:"
            st, body = d.reload_http(token)
            err = body.get("error", "") if isinstance(body, dict) else str(body)
            if not (st == 400 and isinstance(body, dict) and body.get("ok") is False
                    and err.startswith(want) and word in err):
                fails.append(f"{what}: POST /v1/reload -> {st} {body!r}, want 400 with {want!r}...{word}")
            else:
                print(f"#   {what}: {err}", flush=True)
            try:
                resp = d.stub.Reload(h.pb.ReloadRequest(), metadata=(("authorization", f"Bearer {token}"),),
                                     timeout=30 * h.SLOW)
                fails.append(f"{what}: Reload RPC succeeded: {resp}")
            except grpc.RpcError as e:
                if e.code() != SC.FAILED_PRECONDITION or want not in (e.details() or ""):
                    fails.append(f"{what}: Reload RPC -> {e.code().name} {e.details()!r}")
            n = d.metrics().sum("ballast_reloads_total", result="failed")
            d.signal(signal.SIGHUP)
            h.wait_for(lambda: d.metrics().sum("ballast_reloads_total", result="failed") >= n + 1, 30,
                       f"{what}: SIGHUP counted as a failed reload")
            info = d.info()
            if info.config_generation != info0.config_generation:
                fails.append(f"{what}: generation {info0.config_generation} -> {info.config_generation}")
            if (list(info.policies) != list(info0.policies) or info.limits != info0.limits
                    or info.default_policy != info0.default_policy):
                fails.append(f"{what}: the served config changed: {info.limits} {list(info.policies)}")
            tiny(d, policy="small")
        st, body, _ = d.get("/readyz")
        expect(st == 200, f"/readyz {st} after failed reloads")
        expect(d.metrics().sum("ballast_reloads_total", result="failed") == failed0 + 9,
               "reloads_total{result=failed} should count 3 x (HTTP, RPC, SIGHUP)")
    finally:
        d.rewrite(text=good)
    st, body = d.reload_http(token)
    expect(st == 200 and body.get("generation") == info0.config_generation + 1,
           f"the good file again: {st} {body!r}")
    expect(not fails, "\n  ".join([f"{len(fails)} problems:"] + fails))


def test_restart_required(ctx):
    d = ctx.d
    d.require_own()
    token = d.require_token()
    base = copy.deepcopy(d.cfg)
    info0 = d.info()
    c = copy.deepcopy(base)
    c["pools"]["executor"]["kv_budget_mb"] = base["pools"]["executor"]["kv_budget_mb"] * 2
    c["server"]["grpc_threads"] = base["server"]["grpc_threads"] + 1
    c["limits"]["max_tokens"] = base["limits"]["max_tokens"] - 1  # a live key, for contrast
    try:
        d.rewrite(c)
        st, body = d.reload_http(token)
        expect(st == 200 and body.get("ok") is True, f"reload: {st} {body!r}")
        rr = body.get("restart_required")
        expect(isinstance(rr, list) and sorted(rr) == ["pools.executor.kv_budget_mb", "server.grpc_threads"],
               f"restart_required {rr!r}")
        info = d.info()
        ex0 = next(p for p in info0.pools if p.name == "executor")
        ex = next(p for p in info.pools if p.name == "executor")
        expect(ex.kv_blocks_total == ex0.kv_blocks_total, f"kv blocks {ex0.kv_blocks_total} -> {ex.kv_blocks_total}")
        expect(info.limits.max_tokens == base["limits"]["max_tokens"] - 1, "the live key did not apply")
        # the effective config shows what runs: the old budget until a restart
        shown = d.config_json()["pools"]["executor"]["kv_budget_mb"]
        expect(shown == base["pools"]["executor"]["kv_budget_mb"],
               f"/v1/config shows pools.executor.kv_budget_mb {shown}, but the pool runs "
               f"{base['pools']['executor']['kv_budget_mb']} until a restart")
        # reloading the same file again: the keys still differ from what runs
        resp = d.stub.Reload(h.pb.ReloadRequest(), metadata=(("authorization", f"Bearer {token}"),),
                             timeout=30 * h.SLOW)
        expect(sorted(resp.restart_required) == ["pools.executor.kv_budget_mb", "server.grpc_threads"],
               f"a second reload of the same file (Reload RPC) gives restart_required "
               f"{list(resp.restart_required)}: the running pools still differ from the file")
        tiny(d)
    finally:
        d.rewrite(base)
    st, body = d.reload_http(token)
    expect(st == 200, f"reload back: {st} {body!r}")
    expect(d.info().limits.max_tokens == base["limits"]["max_tokens"], "max_tokens back")


# ---------------------------------------------------------------- drain

def test_sigterm_drain(ctx):
    """Drain with time enough: every running stream finishes normally."""
    if os.environ.get("BALLAST_DAEMON_ADDR"):
        raise h.Skip("external daemon: the test sends SIGTERM")
    HR = h.hpb.HealthCheckResponse
    cfg = h.base_config(ctx.model, **{"server.drain_timeout_s": 300.0})
    d = ctx.cur = h.Daemon.start(ctx.ballastd, cfg, name="ballastd-drain")
    try:
        n_tok = 96 if h.SLOW > 1 else 160
        streams = [Streamer(d.stub, long_req(max_tokens=n_tok, request_id=f"drain-{i}")) for i in range(4)]
        for s in streams:
            s.start()
        for s in streams:
            expect(s.first.wait(120 * h.SLOW), "a stream had no first message in 120s")
        watch = d.health.Watch(h.hpb.HealthCheckRequest(service=""), timeout=600 * h.SLOW)
        seen = []
        wt = threading.Thread(target=lambda: [seen.append(x.status) for x in _safe(watch)], daemon=True)
        wt.start()
        h.wait_for(lambda: seen, 30, "the first Watch message")
        expect(seen[0] == HR.SERVING, f"Watch first {seen[0]}")
        t_term = time.monotonic()
        d.signal(signal.SIGTERM)
        h.wait_for(lambda: d.get("/readyz")[0] == 503, 30, "/readyz to turn 503 after SIGTERM")
        running = sum(1 for s in streams if s.is_alive())
        expect(running > 0, "every stream ended before /readyz said 503: make them longer")
        st, body, _ = d.get("/healthz")
        expect(st == 200, f"/healthz while draining: {st}")
        r = generate(d.stub, request(prompt="Hello", max_tokens=2), timeout=30)
        expect(r.code == SC.UNAVAILABLE and r.details.strip() and not r.messages,
               f"new Generate while draining: {r.describe()}")
        resp = d.health.Check(h.hpb.HealthCheckRequest(service=""), timeout=10 * h.SLOW)
        expect(resp.status == HR.NOT_SERVING, f"Health.Check while draining: {resp.status}")
        resp = d.health.Check(h.hpb.HealthCheckRequest(service="ballast.v1.Ballast"), timeout=10 * h.SLOW)
        expect(resp.status == HR.NOT_SERVING, f"Health.Check(ballast.v1.Ballast) while draining: {resp.status}")
        expect(d.info().draining, "ServerInfo.draining false while draining")
        m = d.metrics()
        expect(m.get("ballast_draining") == 1 and m.get("ballast_ready") == 0,
               f"draining {m.get('ballast_draining')} ready {m.get('ballast_ready')}")
        h.wait_for(lambda: HR.NOT_SERVING in seen, 30, "Watch to report NOT_SERVING")
        for s in streams:
            s.join(timeout=600 * h.SLOW)
            r = s.result
            expect(r is not None, "a stream never ended")
            r.check_stream()
            expect(r.final.finish_reason in (FR().LENGTH, FR().STOP),
                   f"{s.req.request_id}: finish {FR().Name(r.final.finish_reason)} during drain")
        rc = d.wait_exit(120)
        print(f"#   {running} streams were running at 503; exit {rc} "
              f"{time.monotonic() - t_term:.1f}s after SIGTERM", flush=True)
        expect(rc == 0, f"exit status {rc}; stderr:\n{d.stderr_tail()}")
    finally:
        ctx.cur = None
        d._reap()


def test_sigterm_drain_timeout(ctx):
    """Drain with drain_timeout_s 1: the streams still running then are
    cancelled (a final with CANCELLED, or the status), exit 0."""
    if os.environ.get("BALLAST_DAEMON_ADDR"):
        raise h.Skip("external daemon: the test sends SIGTERM")
    cfg = h.base_config(ctx.model, **{"server.drain_timeout_s": 1.0})
    d = ctx.cur = h.Daemon.start(ctx.ballastd, cfg, name="ballastd-drain-timeout")
    try:
        streams = [Streamer(d.stub, long_req(max_tokens=256, request_id=f"cut-{i}")) for i in range(3)]
        for s in streams:
            s.start()
        for s in streams:
            expect(s.first.wait(120 * h.SLOW), "a stream had no first message in 120s")
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        rc = d.wait_exit(60)
        took = time.monotonic() - t0
        expect(rc == 0, f"exit status {rc}; stderr:\n{d.stderr_tail()}")
        for s in streams:
            s.join(timeout=60 * h.SLOW)
            r = s.result
            expect(r is not None, "a stream never ended")
            if r.code == SC.OK:
                r.check_stream()
                expect(r.final.finish_reason in (FR().CANCELLED, FR().LENGTH, FR().STOP),
                       f"{s.req.request_id}: finish {FR().Name(r.final.finish_reason)}")
            else:
                expect(r.code in (SC.CANCELLED, SC.UNAVAILABLE) and len(r.finals) == 0,
                       f"{s.req.request_id}: {r.describe()}")
        print(f"#   exit {rc} {took:.1f}s after SIGTERM; streams: "
              + ", ".join(f"{s.result.code.name}/{FR().Name(s.result.final.finish_reason) if s.result.finals else '-'}"
                          for s in streams), flush=True)
        expect(took < 30 * h.SLOW, f"exit took {took:.1f}s with drain_timeout_s 1")
    finally:
        ctx.cur = None
        d._reap()


def _safe(it):
    try:
        yield from it
    except grpc.RpcError:
        return


TESTS = [test_cancel_mid_stream, test_deadline, test_reload_under_load, test_invalid_reload,
         test_restart_required, test_sigterm_drain, test_sigterm_drain_timeout]


def main():
    ballastd, model, filters = h.setup()
    d = h.start_or_exit(ballastd, model)
    ctx = Ctx(d, ballastd, model)
    return h.stop_shared(d, h.run_tests(TESTS, ctx, filters, daemon_of=lambda c: c.cur or c.d))


if __name__ == "__main__":
    sys.exit(main())
