#!/usr/bin/env python3
"""ballastd's API, call by call, on the demo model (w4 executor, fp16 planner).

- Generate streams chunks (each naming its pool and precision), then exactly
  one final (finish reason, usage per pool and phase, trace, timings,
  accounting, the policy asked for and the one that ran, the request id),
  then status OK. Greedy `direct` on the committed reference prompts
  (tests/data/smollm2_greedy.json, transformers on the same GGUF) streams
  the reference tokens; the streamed token ids add up to the usage.
- Rescue under a small loop detector (the eval test's: window 64, 4-grams,
  3 times) on the reference GSM8K prompts: a loop is detected, and what
  follows it (commit or fallback to the fp16 planner) is consistent in the
  controls, the chunks, the final and the metrics; the client's output
  (chunks, COMMIT appended, FALLBACK cut to keep_bytes) is rebuilt.
- Tokenize (text and chat messages) equals the reference ids; ServerInfo
  and GetStats describe the config and move with the requests; Health Check
  and Watch say SERVING.
- Every bad input of the contract's status list gets its code and a
  message, is counted as rejected, and the daemon serves the next request.
- Admin HTTP: /healthz, /readyz, /metrics (parsed strictly, the contract's
  names present, histograms consistent), /v1/config (the token redacted),
  /v1/reload (401 without or with a wrong token, 200 with it), and the
  Reload RPC (UNAUTHENTICATED / OK).
- A second daemon without a planner pool and without an admin token:
  plan and fp16 policies are FAILED_PRECONDITION, reloads 403 and
  PERMISSION_DENIED; with limits.max_streams 2, a third concurrent stream
  is RESOURCE_EXHAUSTED.

usage: test_api.py BALLASTD PROTO_DIR [NAME_FILTER...]
The model path comes from $BALLAST_SMOLLM2_GGUF (scripts/fetch-model.sh);
BALLAST_DAEMON_ADDR=GRPC,ADMIN runs against a running daemon instead.
"""
import json
import os
import sys

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, generate, request, GREEDY  # noqa: E402

REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "smollm2_greedy.json")
MIN_MATCH = 32  # reference tokens that must match (test_smollm2_greedy's bar)
COUNT_PROMPT = "Count from one to ten:"
SC = grpc.StatusCode
FR = None  # pb.FinishReason, set in main


class Ctx:
    def __init__(self, d, ballastd, model):
        self.d, self.ballastd, self.model = d, ballastd, model
        self.ref = json.load(open(REF))


def pb():
    return h.pb


def tiny(ctx, **kw):
    """A short request that must succeed: the daemon still serves."""
    req = request(prompt=kw.pop("prompt", "Hello"), max_tokens=kw.pop("max_tokens", 2),
                  policy=kw.pop("policy", "direct"), sampling=GREEDY, **kw)
    r = generate(ctx.d.stub, req, timeout=120)
    r.check_stream()
    return r


def question_of(prompt):
    """The user message inside a reference prompt rendered with the chat template."""
    start = prompt.index("<|im_start|>user\n") + len("<|im_start|>user\n")
    return prompt[start: prompt.index("<|im_end|>", start)]


def check_final_fields(r, req_id=None, policy=None):
    f = r.final
    expect(f.finish_reason != FR.FINISH_REASON_UNSPECIFIED, "finish reason unset")
    expect(len(f.usage) >= 1, "final has no usage")
    for u in f.usage:
        expect(u.pool in ("executor", "planner"), f"usage pool {u.pool!r}")
        expect(u.precision in ("w4", "fp16"), f"usage precision {u.precision!r}")
        expect(u.phase in ("exec", "plan", "fallback", "fp16"), f"usage phase {u.phase!r}")
        expect(u.prompt_tokens >= 0 and u.completion_tokens >= 0, f"usage negative: {u}")
    expect(f.HasField("trace"), "final has no trace")
    expect(f.trace.failure in ("none", "path_finding", "commitment"), f"trace.failure {f.trace.failure!r}")
    expect(f.HasField("timings"), "final has no timings")
    expect(f.timings.total_s > 0 and 0 <= f.timings.ttft_s <= f.timings.total_s + 1e-9,
           f"timings ttft {f.timings.ttft_s} total {f.timings.total_s}")
    expect(f.timings.queue_s >= 0, f"queue_s {f.timings.queue_s}")
    expect(f.HasField("accounting"), "final has no accounting")
    a = f.accounting
    expect(a.est_s_b1 > 0 and a.est_s_b8 > 0 and a.fp16_s_b1 > 0 and a.fp16_s_b8 > 0,
           f"accounting estimates (calibrated rates should make them > 0): {a}")
    expect(a.speedup_b1 > 0 and a.speedup_b8 > 0, f"accounting speed-ups: {a}")
    if policy is not None:
        expect(f.policy == policy, f"final.policy {f.policy!r}, asked {policy!r}")
    expect(f.ran in ("direct", "rescue", "plan", "plan+rescue", "fp16"), f"final.ran {f.ran!r}")
    if req_id is not None:
        expect(f.request_id == req_id, f"request_id {f.request_id!r}, sent {req_id!r}")
    else:
        expect(f.request_id != "", "the server made no request id")


def check_chunks(r):
    for c in r.chunks:
        expect((c.pool, c.precision) in (("executor", "w4"), ("planner", "fp16")),
               f"chunk from pool {c.pool!r} precision {c.precision!r}")


# ---------------------------------------------------------------- Generate

def test_generate_stream(ctx):
    """Greedy direct on the reference prompt ids: the stream's shape, every
    final field, the reference tokens, and usage = what was streamed."""
    case = ctx.ref["cases"][0]
    req = request(request_id="api-stream-1", prompt_token_ids=case["prompt_ids"], policy="direct",
                  sampling=GREEDY, max_tokens=MIN_MATCH)
    r = generate(ctx.d.stub, req, timeout=300)
    r.check_stream()
    check_chunks(r)
    expect(len(r.chunks) >= 2, f"only {len(r.chunks)} chunks: the output is not streamed")
    check_final_fields(r, "api-stream-1", "direct")
    f = r.final
    ids = r.token_ids()
    want = case["output_ids"][:MIN_MATCH]
    expect(ids == want[: len(ids)] and (len(ids) == MIN_MATCH or f.finish_reason == FR.STOP),
           f"streamed ids differ from transformers': got {ids}, want {want}")
    expect(f.finish_reason == (FR.LENGTH if len(ids) == MIN_MATCH else FR.STOP),
           f"finish {FR.Name(f.finish_reason)} after {len(ids)} of max_tokens {MIN_MATCH}")
    expect(f.ran == "direct" and all(c.pool == "executor" for c in r.chunks), "direct ran elsewhere")
    exec_use = [u for u in f.usage if u.phase == "exec"]
    expect(len(exec_use) == 1 and exec_use[0].pool == "executor" and exec_use[0].precision == "w4",
           f"usage {list(f.usage)}")
    expect(exec_use[0].prompt_tokens == len(case["prompt_ids"]),
           f"usage prompt_tokens {exec_use[0].prompt_tokens}, sent {len(case['prompt_ids'])}")
    expect(exec_use[0].completion_tokens == len(ids),
           f"usage completion_tokens {exec_use[0].completion_tokens}, streamed {len(ids)} ids")
    out = r.output()
    expect(out.strip() != "", "empty output text")
    # the text streamed is the reference's text (transformers decoded the same ids)
    ref_text = case.get("output_text", "")
    if len(ids) == len(case["output_ids"]) and ref_text:
        expect(out == ref_text, f"output {out!r} != reference text {ref_text!r}")
    else:
        # the common prefix of 32 of 48 tokens: the text is a prefix, up to a split character
        expect(ref_text.startswith(out[: max(0, len(out) - 4)]),
               f"output {out!r} is not a prefix of the reference text {ref_text!r}")
    expect(not f.trace.loop and not f.trace.fell_back, f"trace {f.trace}")


def test_generate_chat_default_policy(ctx):
    """Chat messages, server-made request id, default policy (rescue), the
    default max_tokens, and the per-request log line."""
    info = ctx.d.info()
    req = request(messages=[("user", "What is 2+3? Answer briefly.")], sampling=GREEDY)
    r = generate(ctx.d.stub, req, timeout=300)
    r.check_stream()
    check_chunks(r)
    check_final_fields(r, None, None)
    f = r.final
    expect(f.policy in ("", info.default_policy), f"policy {f.policy!r}, default {info.default_policy!r}")
    expect(f.ran in ("rescue", "direct"), f"ran {f.ran!r} for default policy {info.default_policy}")
    n = sum(u.completion_tokens for u in f.usage if u.phase == "exec")
    expect(n <= info.limits.default_max_tokens, f"{n} tokens over default_max_tokens "
           f"{info.limits.default_max_tokens}")
    if f.finish_reason == FR.LENGTH:
        expect(n == info.limits.default_max_tokens, f"LENGTH after {n} tokens")
    if ctx.d.own:
        rid = f.request_id
        h.wait_for(lambda: any(f"id={rid}" in l and "finish=" in l for l in ctx.d.stderr_lines()),
                   10, f"the log line of request {rid}")
        line = next(l for l in ctx.d.stderr_lines() if f"id={rid}" in l and "finish=" in l)
        for key in ("policy=", "ran=", "path=", "prompt=", "tokens=", "ttft=", "total="):
            expect(key in line, f"log line lacks {key}: {line}")


def test_generate_stop_and_sampling(ctx):
    """Seeded sampling is accepted and repeatable; a stop string ends with STOP
    and is not in the output."""
    req = request(prompt=COUNT_PROMPT, policy="direct", max_tokens=24,
                  sampling={"temperature": 0.8, "top_p": 0.9, "top_k": 40, "seed": 1234})
    a = generate(ctx.d.stub, req, timeout=120)
    b = generate(ctx.d.stub, req, timeout=120)
    a.check_stream()
    b.check_stream()
    expect(a.token_ids() == b.token_ids(), "the same seed gave different tokens")
    g = generate(ctx.d.stub, request(prompt=COUNT_PROMPT, policy="direct", max_tokens=32,
                                     sampling=GREEDY), timeout=120)
    g.check_stream()
    text = g.output()
    # a stop string that greedy decoding reaches a few tokens in
    stop = text.strip()[4:8] if len(text.strip()) >= 8 else None
    expect(stop, f"greedy output too short for a stop string: {text!r}")
    s = generate(ctx.d.stub, request(prompt=COUNT_PROMPT, policy="direct", max_tokens=32,
                                     sampling=GREEDY, stop=[stop]), timeout=120)
    s.check_stream()
    expect(s.final.finish_reason == FR.STOP, f"stop {stop!r}: finish {FR.Name(s.final.finish_reason)}")
    expect(stop not in s.output() and text.startswith(s.output()),
           f"stop {stop!r}: output {s.output()!r} vs unstopped {text!r}")


def test_generate_ignore_eos(ctx):
    """ignore_eos runs a request that would stop at EOS on to max_tokens,
    through the same tokens up to that point."""
    msgs = [("user", "Say hello.")]
    n = 48
    a = generate(ctx.d.stub, request(messages=msgs, policy="direct", max_tokens=n, sampling=GREEDY),
                 timeout=120)
    a.check_stream()
    expect(a.final.finish_reason == FR.STOP and len(a.token_ids()) < n,
           f"the greedy answer no longer stops before {n} tokens (pick another prompt): "
           f"finish {FR.Name(a.final.finish_reason)}, {len(a.token_ids())} tokens")
    b = generate(ctx.d.stub, request(messages=msgs, policy="direct", max_tokens=n, sampling=GREEDY,
                                     ignore_eos=True), timeout=120)
    b.check_stream()
    expect(b.final.finish_reason == FR.LENGTH, f"ignore_eos: finish {FR.Name(b.final.finish_reason)}")
    got = b.token_ids()
    expect(len(got) == n, f"ignore_eos: {len(got)} tokens, want {n}")
    k = len(a.token_ids())
    expect(got[:k] == a.token_ids(), f"ignore_eos changed the first {k} tokens")


def test_generate_rescue(ctx):
    """The reference GSM8K prompts as chat under the small detector: some
    loop, and every loop is acted on consistently."""
    pbm = pb()
    loops = acted = 0
    for i, case in enumerate(ctx.ref["cases"]):
        req = request(request_id=f"rescue-{i}", messages=[("user", question_of(case["prompt"]))],
                      policy="small", sampling=GREEDY, max_tokens=128, task=pbm.TASK_TYPE_MATH)
        r = generate(ctx.d.stub, req, timeout=600)
        r.check_stream()
        check_chunks(r)
        check_final_fields(r, f"rescue-{i}", "small")
        f, kinds = r.final, [c.kind for c in r.controls]
        tag = f"case {i} ({FR.Name(f.finish_reason)}, controls {[pbm.Control.Kind.Name(k) for k in kinds]})"
        expect(f.ran == "rescue", f"{tag}: ran {f.ran}")
        expect(kinds.count(pbm.Control.LOOP_DETECTED) <= 2, f"{tag}: more than two loops")
        if f.trace.loop:
            loops += 1
            expect(pbm.Control.LOOP_DETECTED in kinds, f"{tag}: trace.loop but no LOOP_DETECTED control")
            ld = next(c for c in r.controls if c.kind == pbm.Control.LOOP_DETECTED)
            expect(0 <= ld.loop_onset <= ld.loop_fire_at, f"{tag}: onset {ld.loop_onset} fire {ld.loop_fire_at}")
            expect(f.trace.loop_fire_at == ld.loop_fire_at and f.trace.loop_onset == ld.loop_onset,
                   f"{tag}: trace loop {f.trace.loop_fire_at}/{f.trace.loop_onset} vs control "
                   f"{ld.loop_fire_at}/{ld.loop_onset}")
        else:
            expect(pbm.Control.LOOP_DETECTED not in kinds, f"{tag}: LOOP_DETECTED but trace.loop false")
            expect(f.finish_reason in (FR.STOP, FR.LENGTH), f"{tag}: no loop yet finish")
        if pbm.Control.COMMIT in kinds:
            acted += 1
            expect(f.finish_reason == FR.LOOP_COMMIT and f.answer != "", f"{tag}: commit without answer")
            com = next(c for c in r.controls if c.kind == pbm.Control.COMMIT)
            expect(r.output().endswith(com.text) and f.answer in com.text,
                   f"{tag}: commit text {com.text!r}, answer {f.answer!r}")
            expect(f.trace.failure == "commitment", f"{tag}: failure {f.trace.failure}")
        if pbm.Control.FALLBACK in kinds:
            acted += 1
            fb = next(c for c in r.controls if c.kind == pbm.Control.FALLBACK)
            expect(f.trace.fell_back and f.trace.fallback_mode == fb.fallback_mode == "restart"
                   and fb.keep_bytes == 0, f"{tag}: fallback {fb} trace {f.trace}")
            j = next(j for j, m in enumerate(r.messages) if m.WhichOneof("event") == "control"
                     and m.control.kind == pbm.Control.FALLBACK)
            after = r.messages[j + 1:]
            expect(all(m.chunk.pool == "planner" and m.chunk.precision == "fp16"
                       for m in after if m.WhichOneof("event") == "chunk"), f"{tag}: fallback chunks not fp16")
            expect(any(u.phase == "fallback" and u.pool == "planner" and u.completion_tokens > 0
                       for u in f.usage), f"{tag}: no fallback usage {list(f.usage)}")
            expect(f.finish_reason in (FR.LOOP_FALLBACK_DONE, FR.LOOP, FR.LOOP_COMMIT),
                   f"{tag}: finish after a fallback")
            expect(f.trace.failure == "path_finding", f"{tag}: failure {f.trace.failure}")
        else:
            expect(not f.trace.fell_back, f"{tag}: fell_back without a FALLBACK control")
        # the output the client rebuilt is the one that stands: its token
        # count is the exec (or, after a fallback, the fallback) usage
        phase = "fallback" if f.trace.fell_back else "exec"
        n = sum(u.completion_tokens for u in f.usage if u.phase == phase)
        streamed = sum(len(m.chunk.token_ids) for m in r.messages[
            (max((j for j, m in enumerate(r.messages) if m.WhichOneof("event") == "control"
                  and m.control.kind == pbm.Control.FALLBACK), default=-1) + 1):]
            if m.WhichOneof("event") == "chunk")
        expect(streamed == n, f"{tag}: {streamed} ids streamed after the last restart, usage says {n}")
        print(f"#   rescue case {i} ({r.elapsed:.1f}s): {FR.Name(f.finish_reason)}, loop={f.trace.loop} "
              f"at {f.trace.loop_fire_at} (onset {f.trace.loop_onset}), usage "
              f"{[(u.phase, u.completion_tokens) for u in f.usage]}, "
              f"fell_back={f.trace.fell_back}, answer={f.answer!r}, {len(r.output())} chars", flush=True)
    expect(loops >= 1, "no reference prompt looped under the small detector: rescue not exercised")
    expect(acted == loops, f"{loops} loops but rescue acted on {acted}")
    m = ctx.d.metrics()
    expect(m.sum("ballast_policy_loops_total", policy="small") >= loops,
           f"ballast_policy_loops_total{{policy=small}} {m.sum('ballast_policy_loops_total', policy='small')}")


def test_generate_plan_and_fp16(ctx):
    """A plan policy (plan-small: 24 plan tokens) on chat messages: the plan
    comes first (PLAN_READY, planner fp16 usage), then the executor; the
    fp16 policy runs on the planner pool alone and prices at 1.00x."""
    pbm = pb()
    if "plan-small" not in ctx.d.info().policies:
        raise h.Skip("no plan-small policy in this daemon's config")
    msgs = [("user", question_of(ctx.ref["cases"][0]["prompt"]))]
    r = generate(ctx.d.stub, request(messages=msgs, policy="plan-small", sampling=GREEDY, max_tokens=16),
                 timeout=300)
    r.check_stream()
    check_chunks(r)
    check_final_fields(r, None, "plan-small")
    f = r.final
    expect(f.ran == "plan", f"ran {f.ran!r}")
    kinds = [m.WhichOneof("event") if m.WhichOneof("event") != "control" else
             pbm.Control.Kind.Name(m.control.kind) for m in r.messages]
    expect("PLAN_READY" in kinds, f"no PLAN_READY control: {kinds}")
    first_exec = next((j for j, m in enumerate(r.messages) if m.WhichOneof("event") == "chunk"
                       and m.chunk.pool == "executor"), None)
    expect(first_exec is not None and kinds.index("PLAN_READY") < first_exec,
           f"the executor streamed before the plan was ready: {kinds}")
    plan = next(m.control.text for m in r.messages if m.WhichOneof("event") == "control"
                and m.control.kind == pbm.Control.PLAN_READY)
    expect("\\boxed" not in plan, f"plan keeps a boxed answer: {plan!r}")
    pu = [u for u in f.usage if u.phase == "plan"]
    expect(len(pu) == 1 and pu[0].pool == "planner" and pu[0].precision == "fp16"
           and 0 < pu[0].completion_tokens <= 24, f"plan usage {list(f.usage)}")
    eu = [u for u in f.usage if u.phase == "exec"]
    expect(len(eu) == 1 and eu[0].pool == "executor" and eu[0].completion_tokens == len(r.token_ids()),
           f"exec usage {list(f.usage)} vs {len(r.token_ids())} streamed ids")
    r = generate(ctx.d.stub, request(prompt=COUNT_PROMPT, policy="fp16", sampling=GREEDY, max_tokens=8),
                 timeout=300)
    r.check_stream()
    check_chunks(r)
    check_final_fields(r, None, "fp16")
    f = r.final
    expect(f.ran == "fp16" and all(c.pool == "planner" and c.precision == "fp16" for c in r.chunks),
           f"fp16 ran {f.ran!r} on {[(c.pool, c.precision) for c in r.chunks]}")
    expect([u.phase for u in f.usage] == ["fp16"] and f.usage[0].completion_tokens == len(r.token_ids()),
           f"fp16 usage {list(f.usage)}")
    expect(abs(f.accounting.speedup_b1 - 1) < 1e-6 and abs(f.accounting.speedup_b8 - 1) < 1e-6,
           f"fp16 prices at {f.accounting.speedup_b1}x / {f.accounting.speedup_b8}x, want 1.00x")


# ---------------------------------------------------------------- other RPCs

def test_tokenize(ctx):
    for i, case in enumerate(ctx.ref["cases"]):
        got = list(ctx.d.stub.Tokenize(pb().TokenizeRequest(text=case["prompt"]), timeout=30 * h.SLOW).ids)
        expect(got == case["prompt_ids"], f"case {i}: Tokenize(text) {got[:12]}... != reference")
        msgs = [pb().ChatMessage(role="user", content=question_of(case["prompt"]))]
        got = list(ctx.d.stub.Tokenize(pb().TokenizeRequest(messages=msgs), timeout=30 * h.SLOW).ids)
        expect(got == case["prompt_ids"], f"case {i}: Tokenize(messages) differs from the template render: "
               f"{len(got)} vs {len(case['prompt_ids'])} ids")
    # no input (an empty text is no text in proto3), or both inputs
    for what, req in (("nothing", pb().TokenizeRequest()),
                      ("text and messages", pb().TokenizeRequest(text="a", messages=msgs))):
        try:
            resp = ctx.d.stub.Tokenize(req, timeout=30 * h.SLOW)
            raise h.Fail(f"Tokenize({what}) = {list(resp.ids)}, want INVALID_ARGUMENT")
        except grpc.RpcError as e:
            expect(e.code() == SC.INVALID_ARGUMENT and e.details(), f"Tokenize({what}): {e.code()} {e.details()!r}")


def test_server_info(ctx):
    info = ctx.d.info()
    expect(info.version != "", "no version")
    expect(not info.draining, "draining at start")
    names = {p.name: p for p in info.pools}
    expect(set(names) == {"executor", "planner"}, f"pools {sorted(names)}")
    for p in info.pools:
        expect(p.kv_blocks_total > 0 and 0 <= p.kv_blocks_free <= p.kv_blocks_total,
               f"{p.name}: blocks {p.kv_blocks_free}/{p.kv_blocks_total}")
        expect(p.block_size > 0 and p.max_num_seqs > 0 and p.model != "", f"{p.name}: {p}")
        expect(p.device == "cpu", f"{p.name}: device {p.device!r}")
        expect(p.kv_format in ("fp16", "fp8", "nvfp4"),
               f"{p.name}: kv_format {p.kv_format!r}, not one of the config's names fp16|fp8|nvfp4")
    expect(names["planner"].precision == "fp16", f"planner precision {names['planner'].precision}")
    for builtin in ("direct", "rescue", "plan", "plan+rescue", "fp16", "auto"):
        expect(builtin in info.policies, f"built-in policy {builtin} not listed: {list(info.policies)}")
    expect(info.default_policy in info.policies, f"default {info.default_policy!r} not listed")
    expect(info.config_generation >= 1, f"generation {info.config_generation}")
    lim = info.limits
    expect(lim.max_prompt_tokens > 0 and lim.max_tokens > 0 and lim.max_streams > 0
           and lim.max_message_bytes > 0 and 0 < lim.default_max_tokens <= lim.max_tokens, f"limits {lim}")
    if ctx.d.own:
        c = ctx.d.cfg
        expect(names["executor"].precision == c["pools"]["executor"]["precision"], "executor precision")
        expect(names["executor"].block_size == c["pools"]["executor"]["block_size"], "block size")
        expect(names["executor"].max_num_seqs == c["pools"]["executor"]["max_num_seqs"], "max_num_seqs")
        expect("small" in info.policies, f"named policy not listed: {list(info.policies)}")
        L = c["limits"]
        got = (lim.max_message_bytes, lim.max_prompt_tokens, lim.max_tokens, lim.max_streams,
               lim.default_max_tokens)
        want = (L["max_message_bytes"], L["max_prompt_tokens"], L["max_tokens"], L["max_streams"],
                L["default_max_tokens"])
        expect(got == want, f"limits {got}, config {want}")
        expect(info.config_path == ctx.d.config_path, f"config_path {info.config_path!r}")
        expect(info.default_policy == c["controls"]["default_policy"], "default policy")


def test_get_stats(ctx):
    before = ctx.d.stats()
    expect(before.uptime_s > 0, f"uptime {before.uptime_s}")
    for p in before.pools:
        expect(p.calibrated_tps_b1 > 0 and p.calibrated_tps_b8 > 0,
               f"{p.name}: calibrated rates {p.calibrated_tps_b1}/{p.calibrated_tps_b8} (calibrate_tokens > 0)")
        expect(0 <= p.kv_blocks_free <= p.kv_blocks_total, f"{p.name}: blocks")
    expect({p.name for p in before.pools} == {p.name for p in ctx.d.info().pools}, "pools differ from ServerInfo")
    r = tiny(ctx, max_tokens=4)
    after = ctx.d.stats()
    expect(after.requests >= before.requests + 1, f"requests {before.requests} -> {after.requests}")
    fin = lambda s: sum(f.count for f in s.finished)  # noqa: E731
    expect(fin(after) >= fin(before) + 1, f"finished {fin(before)} -> {fin(after)}")
    ex_b = next(p for p in before.pools if p.name == "executor")
    ex_a = next(p for p in after.pools if p.name == "executor")
    n = len(r.token_ids())
    expect(ex_a.generated_tokens >= ex_b.generated_tokens + n and ex_a.steps > ex_b.steps,
           f"executor generated {ex_b.generated_tokens} -> {ex_a.generated_tokens} (+{n} expected)")
    expect(after.uptime_s >= before.uptime_s, "uptime went back")
    ctx.d.wait_idle()
    expect(ctx.d.stats().active_streams == 0, "active streams while idle")
    pol = [p for p in after.policies if p.policy == "direct"]
    expect(pol and sum(p.requests for p in pol) >= 1, f"no direct policy stats: {list(after.policies)}")


def test_health(ctx):
    H = h.hpb.HealthCheckResponse
    for svc in ("", "ballast.v1.Ballast"):
        resp = ctx.d.health.Check(h.hpb.HealthCheckRequest(service=svc), timeout=10 * h.SLOW)
        expect(resp.status == H.SERVING, f"Check({svc!r}) = {H.ServingStatus.Name(resp.status)}")
        call = ctx.d.health.Watch(h.hpb.HealthCheckRequest(service=svc), timeout=30 * h.SLOW)
        first = next(call)
        call.cancel()
        expect(first.status == H.SERVING, f"Watch({svc!r}) first = {H.ServingStatus.Name(first.status)}")
    # the standard health protocol: an unknown service is NOT_FOUND (Check)
    # and SERVICE_UNKNOWN (Watch)
    try:
        resp = ctx.d.health.Check(h.hpb.HealthCheckRequest(service="no.such.Service"), timeout=10 * h.SLOW)
        raise h.Fail(f"Check(unknown service) = {H.ServingStatus.Name(resp.status)}, want NOT_FOUND")
    except grpc.RpcError as e:
        expect(e.code() == SC.NOT_FOUND, f"Check(unknown service): {e.code()}")
    call = ctx.d.health.Watch(h.hpb.HealthCheckRequest(service="no.such.Service"), timeout=30 * h.SLOW)
    first = next(call)
    call.cancel()
    expect(first.status == H.SERVICE_UNKNOWN, f"Watch(unknown) first = {H.ServingStatus.Name(first.status)}")


# ---------------------------------------------------------------- bad input

def bad_inputs(ctx, info):
    """(name, request, status code) for each bad input of the contract."""
    lim = info.limits
    vocab_hi = 49152  # SmolLM2's vocabulary size: the first id out of range
    cases = [
        ("no input", request(), SC.INVALID_ARGUMENT),
        ("only an empty prompt", request(prompt=""), SC.INVALID_ARGUMENT),
        ("prompt and messages", request(prompt="a", messages=[("user", "b")]), SC.INVALID_ARGUMENT),
        ("prompt and token ids", request(prompt="a", prompt_token_ids=[1, 2]), SC.INVALID_ARGUMENT),
        ("messages and token ids", request(messages=[("user", "b")], prompt_token_ids=[1]), SC.INVALID_ARGUMENT),
        ("unknown role", request(messages=[("wizard", "hi")]), SC.INVALID_ARGUMENT),
        ("empty role", request(messages=[("", "hi")]), SC.INVALID_ARGUMENT),
        ("temperature < 0", request(prompt="a", sampling={"temperature": -0.5}), SC.INVALID_ARGUMENT),
        ("temperature NaN", request(prompt="a", sampling={"temperature": float("nan")}), SC.INVALID_ARGUMENT),
        ("top_p > 1", request(prompt="a", sampling={"top_p": 1.5}), SC.INVALID_ARGUMENT),
        ("top_p < 0", request(prompt="a", sampling={"top_p": -0.1}), SC.INVALID_ARGUMENT),
        # -2: the daemon reads top_k -1 as "off"
        ("top_k < -1", request(prompt="a", sampling={"top_k": -2}), SC.INVALID_ARGUMENT),
        ("min_p > 1", request(prompt="a", sampling={"min_p": 1.5}), SC.INVALID_ARGUMENT),
        ("unknown policy", request(prompt="a", policy="no-such-policy"), SC.INVALID_ARGUMENT),
        ("override loop_window < 0", request(prompt="a", policy="small", overrides={"loop_window": -1}),
         SC.INVALID_ARGUMENT),
        ("override loop_window over the limit", request(prompt="a", policy="small",
                                                         overrides={"loop_window": 10 ** 7}), SC.RESOURCE_EXHAUSTED),
        ("override loop_ngram 0", request(prompt="a", policy="small", overrides={"loop_ngram": 0}),
         SC.INVALID_ARGUMENT),
        ("unknown fallback", request(prompt="a", policy="small", overrides={"fallback": "sideways"}),
         SC.INVALID_ARGUMENT),
        ("token id out of vocab", request(prompt_token_ids=[1, 10 ** 7]), SC.INVALID_ARGUMENT),
        ("token id = vocab size", request(prompt_token_ids=[1, vocab_hi]), SC.INVALID_ARGUMENT),
        ("negative token id", request(prompt_token_ids=[1, -3]), SC.INVALID_ARGUMENT),
        ("priority > 100", request(prompt="a", priority=101), SC.INVALID_ARGUMENT),
        ("priority < 0", request(prompt="a", priority=-1), SC.INVALID_ARGUMENT),
        ("negative max_tokens", request(prompt="a", max_tokens=-1), SC.INVALID_ARGUMENT),
        ("prompt over max_prompt_tokens", request(prompt="hello " * (lim.max_prompt_tokens + 50)),
         SC.RESOURCE_EXHAUSTED),
        ("token ids over max_prompt_tokens", request(prompt_token_ids=[28] * (lim.max_prompt_tokens + 1)),
         SC.RESOURCE_EXHAUSTED),
        ("chat over max_prompt_tokens", request(messages=[("user", "hello " * (lim.max_prompt_tokens + 50))]),
         SC.RESOURCE_EXHAUSTED),
        ("max_tokens over the limit", request(prompt="a", max_tokens=lim.max_tokens + 1), SC.RESOURCE_EXHAUSTED),
        ("plan policy with a raw prompt", request(prompt="What is 2+2?", policy="plan"), SC.FAILED_PRECONDITION),
        ("plan+rescue with token ids", request(prompt_token_ids=[1, 2, 3], policy="plan+rescue"),
         SC.FAILED_PRECONDITION),
    ]
    if "small" not in info.policies:
        cases = [c for c in cases if c[1].policy != "small"]
    return cases


def test_bad_inputs(ctx):
    info = ctx.d.info()
    cases = bad_inputs(ctx, info)
    m0, s0 = ctx.d.metrics(), ctx.d.stats()
    fails = []
    for name, req, code in cases:
        r = generate(ctx.d.stub, req, timeout=60)
        if r.code != code or not r.details.strip() or r.messages:
            fails.append(f"{name}: got {r.code.name} {r.details!r} with {len(r.messages)} messages, want {code.name}")
        else:
            print(f"#   {name}: {r.code.name}: {r.details}", flush=True)
        try:
            tiny(ctx)
        except Exception as e:  # noqa: BLE001
            raise h.Fail(f"after '{name}' the daemon no longer serves: {e}") from None
    m1, s1 = ctx.d.metrics(), ctx.d.stats()
    for code in (SC.INVALID_ARGUMENT, SC.RESOURCE_EXHAUSTED, SC.FAILED_PRECONDITION):
        sent = sum(1 for _, _, c in cases if c == code)
        delta = (m1.sum("ballast_requests_rejected_total", code=code.name)
                 - m0.sum("ballast_requests_rejected_total", code=code.name))
        if delta != sent:
            fails.append(f"ballast_requests_rejected_total{{code={code.name}}} moved by {delta}, {sent} sent")
    if s1.rejected - s0.rejected != len(cases):
        fails.append(f"GetStats.rejected moved by {s1.rejected - s0.rejected}, {len(cases)} sent")
    expect(not fails, f"{len(fails)} of {len(cases)} bad inputs wrong:\n  " + "\n  ".join(fails))


def test_message_too_large(ctx):
    """A request over limits.max_message_bytes (under max_prompt_tokens'
    worth of tokens would not matter: it is refused by size)."""
    lim = ctx.d.info().limits
    r = generate(ctx.d.stub, request(prompt="x" * (lim.max_message_bytes + 1024)), timeout=60)
    expect(r.code == SC.RESOURCE_EXHAUSTED and r.details.strip() and not r.messages,
           f"message of {lim.max_message_bytes + 1024} bytes: {r.describe()}")
    tiny(ctx)


def test_limits_edges(ctx):
    """Exactly at the limits is allowed: max_tokens = limits.max_tokens, a
    prompt of max_prompt_tokens ids."""
    lim = ctx.d.info().limits
    r = generate(ctx.d.stub, request(prompt_token_ids=[28] * lim.max_prompt_tokens, max_tokens=1,
                                     policy="direct", sampling=GREEDY), timeout=300)
    r.check_stream()
    use = [u for u in r.final.usage if u.phase == "exec"]
    expect(use and use[0].prompt_tokens == lim.max_prompt_tokens, f"usage {list(r.final.usage)}")
    # max_tokens at the limit is accepted (cancelled after the first token: only acceptance is checked)
    r = generate(ctx.d.stub, request(prompt=COUNT_PROMPT, max_tokens=lim.max_tokens, policy="direct",
                                     sampling=GREEDY), timeout=300, cancel_after=1)
    expect(r.code == SC.CANCELLED and len(r.messages) >= 1, f"max_tokens at the limit: {r.describe()}")
    ctx.d.wait_idle()


# ---------------------------------------------------------------- admin

def test_admin_health(ctx):
    st, body, _ = ctx.d.get("/healthz")
    expect((st, body) == (200, "ok\n"), f"/healthz: {st} {body!r}")
    st, body, _ = ctx.d.get("/readyz")
    expect((st, body) == (200, "ready\n"), f"/readyz: {st} {body!r}")


def test_admin_metrics(ctx):
    tiny(ctx)
    st, body, hdr = ctx.d.get("/metrics")
    expect(st == 200, f"/metrics: {st}")
    ctype = hdr.get("Content-Type", "")
    expect(ctype.startswith("text/plain") and "0.0.4" in ctype, f"Content-Type {ctype!r}")
    m = h.Metrics(body)
    expect(not m.errors, "metrics do not parse:\n  " + "\n  ".join(m.errors[:20]))
    try:  # Debian's python3-prometheus-client, when installed, must read the same samples
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        text_string_to_metric_families = None
    if text_string_to_metric_families:
        n = sum(len(f.samples) for f in text_string_to_metric_families(body))
        expect(n == len(m.samples), f"prometheus_client reads {n} samples, the test's parser {len(m.samples)}")
    want = {
        "counter": ["ballast_requests_total", "ballast_requests_rejected_total", "ballast_requests_finished_total",
                    "ballast_streamed_tokens_total", "ballast_slow_client_cuts_total", "ballast_reloads_total",
                    "ballast_pool_steps_total", "ballast_pool_prefill_tokens_total",
                    "ballast_pool_generated_tokens_total", "ballast_pool_preemptions_total",
                    "ballast_pool_prefix_hit_tokens_total", "ballast_pool_loops_total",
                    "ballast_policy_requests_total", "ballast_policy_finished_total"],
        "gauge": ["ballast_active_streams", "ballast_ready", "ballast_draining", "ballast_config_generation",
                  "ballast_uptime_seconds", "ballast_pool_running", "ballast_pool_waiting",
                  "ballast_kv_blocks_used", "ballast_kv_blocks_total", "ballast_kv_usage_ratio",
                  "ballast_decode_tokens_per_second"],
        "histogram": ["ballast_ttft_seconds", "ballast_itl_seconds", "ballast_e2e_seconds", "ballast_queue_seconds"],
    }
    bad = [f"{n}: TYPE {m.types.get(n)!r}, want {t}" for t, names in want.items() for n in names
           if m.types.get(n) != t]
    expect(not bad, "metric families:\n  " + "\n  ".join(bad))
    expect(m.get("ballast_ready") == 1 and m.get("ballast_draining") == 0, "ready/draining gauges")
    expect(m.get("ballast_config_generation") == ctx.d.info().config_generation, "config generation gauge")
    for pool in ("executor", "planner"):
        expect((m.get("ballast_kv_blocks_total", pool=pool) or 0) > 0, f"kv_blocks_total{{pool={pool}}}")
        cal = m.select("ballast_decode_tokens_per_second", pool=pool, source="calibrated")
        expect({d.get("batch") for d, v in cal if v > 0} == {"1", "8"},
               f"calibrated decode rates for {pool}: {cal}")
    for hist in want["histogram"]:
        buckets = sorted(((float(d["le"]), v) for d, v in m.select(hist + "_bucket")), key=lambda x: x[0])
        expect(buckets and buckets[-1][0] == float("inf"), f"{hist}: no +Inf bucket")
        expect(all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), f"{hist}: buckets not cumulative")
        expect(buckets[-1][1] == m.get(hist + "_count"), f"{hist}: +Inf bucket != _count")
        expect(m.get(hist + "_sum") is not None, f"{hist}: no _sum")
    expect(m.get("ballast_e2e_seconds_count") >= 1, "e2e histogram empty after a request")
    expect(m.sum("ballast_requests_total") >= 1 and m.sum("ballast_streamed_tokens_total") >= 1, "counters")


def test_admin_config(ctx):
    st, body, hdr = ctx.d.get("/v1/config")
    expect(st == 200, f"/v1/config: {st}")
    expect("json" in hdr.get("Content-Type", ""), f"Content-Type {hdr.get('Content-Type')!r}")
    cfg = json.loads(body)
    token = ctx.d.token
    if token:
        expect(token not in body, "the admin token appears in /v1/config")
    expect(cfg.get("server", {}).get("admin_token") == "<redacted>",
           f"server.admin_token shown as {cfg.get('server', {}).get('admin_token')!r}")
    if ctx.d.own:
        c = ctx.d.cfg
        expect(cfg["limits"]["max_tokens"] == c["limits"]["max_tokens"], "limits.max_tokens")
        expect(cfg["pools"]["executor"]["precision"] == "w4", "pools.executor.precision")
        expect(cfg["pools"]["executor"]["model"] == c["pools"]["executor"]["model"], "pools.executor.model")
        expect("small" in json.dumps(cfg["controls"]), "named policy missing from controls")


def test_admin_reload(ctx):
    gen0 = ctx.d.info().config_generation
    st, body = ctx.d.reload_http(None)
    expect(st == 401, f"reload without a token: {st} {body!r}")
    st, body = ctx.d.reload_http("wrong-" + (ctx.d.token or "x"))
    expect(st == 401, f"reload with a wrong token: {st} {body!r}")
    expect(ctx.d.info().config_generation == gen0, "a refused reload changed the generation")
    for bad in (None, "wrong"):
        md = None if bad is None else (("authorization", "Bearer wrong"),)
        try:
            ctx.d.stub.Reload(pb().ReloadRequest(), metadata=md, timeout=30 * h.SLOW)
            raise h.Fail(f"Reload RPC with {bad or 'no'} token succeeded")
        except grpc.RpcError as e:
            expect(e.code() == SC.UNAUTHENTICATED, f"Reload RPC with {bad or 'no'} token: {e.code()}")
            says = "needs metadata authorization" if bad is None else "is not server.admin_token"
            expect(says in e.details(), f"Reload RPC with {bad or 'no'} token: {e.details()!r}")
    token = ctx.d.require_token()
    st, body = ctx.d.reload_http(token)
    expect(st == 200 and isinstance(body, dict) and body.get("ok") is True, f"reload: {st} {body!r}")
    expect(body.get("generation") == gen0 + 1, f"generation {body.get('generation')}, was {gen0}")
    expect(body.get("restart_required") == [], f"unchanged file: restart_required {body.get('restart_required')}")
    resp = ctx.d.stub.Reload(pb().ReloadRequest(), metadata=(("authorization", f"Bearer {token}"),),
                             timeout=30 * h.SLOW)
    expect(resp.config_generation == gen0 + 2 and list(resp.restart_required) == [],
           f"Reload RPC: {resp}")
    expect(ctx.d.info().config_generation == gen0 + 2, "ServerInfo generation")
    m = ctx.d.metrics()
    expect(m.get("ballast_config_generation") == gen0 + 2, "generation gauge")
    expect(m.sum("ballast_reloads_total", result="ok") >= 2, "reloads_total{result=ok}")
    tiny(ctx)


def test_no_planner_no_token(ctx):
    """A daemon without a planner pool or an admin token, and with
    limits.max_streams 2."""
    ctx.d.require_own("starts a second daemon")
    cfg = h.base_config(ctx.model, **{"pools.planner": None, "server.admin_token": None,
                                      "limits.max_streams": 2})
    d2 = h.Daemon.start(ctx.ballastd, cfg, name="ballastd-noplanner")
    try:
        info = d2.info()
        expect([p.name for p in info.pools] == ["executor"], f"pools {[p.name for p in info.pools]}")
        for pol, req in (("plan", request(messages=[("user", "What is 2+2?")], policy="plan")),
                         ("plan+rescue", request(messages=[("user", "What is 2+2?")], policy="plan+rescue")),
                         ("fp16", request(prompt="What is 2+2?", policy="fp16"))):
            r = generate(d2.stub, req, timeout=60)
            expect(r.code == SC.FAILED_PRECONDITION and r.details.strip(),
                   f"{pol} without a planner: {r.describe()}")
        r = generate(d2.stub, request(prompt="Hello", policy="direct", max_tokens=2, sampling=GREEDY), timeout=120)
        r.check_stream()
        st, body = d2.reload_http(TOKEN_ANY)
        expect(st == 403, f"reload with no token configured: {st} {body!r}")
        try:
            d2.stub.Reload(pb().ReloadRequest(), metadata=(("authorization", f"Bearer {TOKEN_ANY}"),),
                           timeout=30 * h.SLOW)
            raise h.Fail("Reload RPC succeeded with no token configured")
        except grpc.RpcError as e:
            expect(e.code() == SC.PERMISSION_DENIED, f"Reload RPC with no token configured: {e.code()}")
        # limits.max_streams 2: a third concurrent stream is refused
        calls = [d2.stub.Generate(request(prompt=COUNT_PROMPT, policy="direct", max_tokens=256, sampling=GREEDY),
                                  timeout=300 * h.SLOW) for _ in range(2)]
        try:
            for c in calls:
                next(c)  # running: its first message is here
            r = generate(d2.stub, request(prompt="Hello", policy="direct", max_tokens=2), timeout=60)
            expect(r.code == SC.RESOURCE_EXHAUSTED and "max_streams" in r.details and not r.messages,
                   f"a third stream over max_streams 2: {r.describe()}")
        finally:
            for c in calls:
                c.cancel()
        d2.wait_idle()
        r = generate(d2.stub, request(prompt="Hello", policy="direct", max_tokens=2, sampling=GREEDY), timeout=120)
        r.check_stream()
        cfgj = d2.config_json()
        expect(cfgj.get("server", {}).get("admin_token") in (None, "", "<redacted>"), "admin_token in /v1/config")
    finally:
        d2.stop()


TOKEN_ANY = "anything"

TESTS = [test_admin_health, test_server_info, test_health, test_tokenize, test_generate_stream,
         test_generate_ignore_eos, test_generate_chat_default_policy, test_generate_stop_and_sampling, test_generate_plan_and_fp16,
         test_get_stats,
         test_bad_inputs, test_message_too_large, test_limits_edges, test_admin_metrics, test_admin_config,
         test_admin_reload, test_generate_rescue, test_no_planner_no_token]


def main():
    global FR
    ballastd, model, filters = h.setup()
    FR = h.pb.FinishReason
    d = h.start_or_exit(ballastd, model)
    ctx = Ctx(d, ballastd, model)
    return h.stop_shared(d, h.run_tests(TESTS, ctx, filters, daemon_of=lambda c: c.d))


if __name__ == "__main__":
    sys.exit(main())
