#!/usr/bin/env python3
"""ballastd after a device error (issue 7): the replica turns unhealthy, its
requests fail with a clear status, the daemon stays up.

The daemon runs with BALLAST_INJECT_FAULT=executor:matmul:N, which wraps the
executor pool's backend in kernels/bk_fault: the N-th matmul, and every op
after it, fails with BL_EDEVICE, as a sticky CUDA error would.

- Device error: requests run until the fault fires; the one in flight ends
  with a final whose finish is ERROR and whose error names the injected
  device error; then a new Generate that needs the executor is UNAVAILABLE
  with the pool's error, /readyz is 503 with the reason, Health Check says
  NOT_SERVING (and Watch turns NOT_SERVING), /metrics has
  ballast_pool_healthy{pool="executor"} 0 (the planner's 1), ServerInfo's
  pool entries say healthy and error; a request that needs only the healthy
  planner (policy fp16) still runs; the process is alive, answers
  ServerInfo and GetStats, and SIGTERM still exits 0.
- Two executor replicas, the fault on replica 0 (executor.0:...): only its
  request fails, naming the replica; the daemon stays ready and SERVING
  with one of two replicas healthy, and new requests all finish.
- An executor split three ways (tensor_parallel = 3 on device cpu, shards
  summed through the host): ServerInfo says so, and its greedy tokens are
  those of the unsplit model; with the fault on its first shard, the
  request in flight fails naming the pool and the fault, and the daemon
  stays up.
- A malformed BALLAST_INJECT_FAULT stops the start (status 1) with a message
  naming the variable, before any model loads.

usage: test_faults.py BALLASTD PROTO_DIR [NAME_FILTER...]
The model path comes from $BALLAST_SMOLLM2_GGUF (scripts/fetch-model.sh).
Every test starts its own daemon (an external one cannot be given the
variable): with BALLAST_DAEMON_ADDR set they are skipped.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, generate, request, GREEDY  # noqa: E402

SC = grpc.StatusCode
# SmolLM2-135M has 30 layers: 7 matmuls each and the lm_head, 211 per step
# with outputs. Calibration is off, so the 10th forward pass of the executor
# (the first request's 10th step) meets the fault.
FAULT_CALL = 2000
FAULT = f"executor:matmul:{FAULT_CALL}"
CAUSE = f"injected device error in matmul (call {FAULT_CALL})"
UNHEALTHY = "executor pool is unhealthy after a device error"


class Ctx:
    def __init__(self, ballastd, model):
        self.ballastd, self.model = ballastd, model
        self.cur = None  # the daemon a test started, whose stderr goes with its failure


def FR():
    return h.pb.FinishReason


def own_only():
    if os.environ.get("BALLAST_DAEMON_ADDR"):
        raise h.Skip("external daemon: the test sets BALLAST_INJECT_FAULT on a daemon it starts")


def config(model):
    return h.base_config(model, **{"controls.calibrate_tokens": 0})


def _watch(d, seen):
    call = d.health.Watch(h.hpb.HealthCheckRequest(service=""), timeout=600 * h.SLOW)
    try:
        for x in call:
            seen.append(x.status)
    except grpc.RpcError:
        return


def test_device_error(ctx):
    own_only()
    HR = h.hpb.HealthCheckResponse
    d = ctx.cur = h.Daemon.start(ctx.ballastd, config(ctx.model), name="ballastd-fault",
                                 env={"BALLAST_INJECT_FAULT": FAULT})
    try:
        expect(any("BALLAST_INJECT_FAULT" in l and "injecting faults" in l for l in d.stderr_lines()),
               "no start-up warning that faults are injected")
        # healthy until the fault fires
        expect(d.get("/readyz")[0] == 200, "/readyz before the fault")
        m = d.metrics()
        expect(m.get("ballast_pool_healthy", pool="executor") == 1, "executor not healthy at start")
        expect(all(p.healthy and not p.error for p in d.info().pools), f"ServerInfo at start: {d.info().pools}")
        seen = []
        threading.Thread(target=_watch, args=(d, seen), daemon=True).start()
        h.wait_for(lambda: seen, 30, "the first Watch message")
        expect(seen[0] == HR.SERVING, f"Watch first {seen[0]}")

        # run requests one after another until one meets the fault
        failed = None
        for i in range(30):
            r = generate(d.stub, request(prompt="Count from one to ten:", policy="direct",
                                         max_tokens=64, ignore_eos=True, sampling=GREEDY,
                                         request_id=f"fault-{i}"), timeout=120)
            if r.final is not None and r.final.finish_reason == FR().ERROR:
                failed = r
                break
            r.check_stream()
        expect(failed is not None, f"no request met the fault at matmul call {FAULT_CALL}")
        r = failed
        r.check_stream()  # status OK, one final, last
        expect(r.token_ids(), f"the failed request streamed nothing before the fault: {r.describe()}")
        expect(UNHEALTHY in r.final.error and CAUSE in r.final.error,
               f"final error: {r.final.error!r}")
        print(f"#   {r.final.request_id}: {len(r.token_ids())} tokens, then ERROR: {r.final.error}",
              flush=True)

        # a new request that needs the executor: UNAVAILABLE with the message
        r = generate(d.stub, request(prompt="Hello", policy="direct", max_tokens=4), timeout=30)
        expect(r.code == SC.UNAVAILABLE and UNHEALTHY in r.details and CAUSE in r.details
               and not r.messages, f"new Generate: {r.describe()}")
        r = generate(d.stub, request(prompt="Hello", policy="rescue", max_tokens=4), timeout=30)
        expect(r.code == SC.UNAVAILABLE and UNHEALTHY in r.details, f"rescue: {r.describe()}")

        # readiness, health, metrics, ServerInfo
        st, body, _ = d.get("/readyz")
        expect(st == 503 and UNHEALTHY in body and CAUSE in body, f"/readyz: {st} {body!r}")
        expect(d.get("/healthz")[0] == 200, "/healthz after the fault")
        for svc in ("", "ballast.v1.Ballast"):
            resp = d.health.Check(h.hpb.HealthCheckRequest(service=svc), timeout=10 * h.SLOW)
            expect(resp.status == HR.NOT_SERVING, f"Health.Check({svc!r}): {resp.status}")
        h.wait_for(lambda: HR.NOT_SERVING in seen, 30, "Watch to report NOT_SERVING")
        m = d.metrics()
        expect(not m.errors, f"/metrics: {m.errors}")
        expect(m.get("ballast_pool_healthy", pool="executor") == 0,
               f"ballast_pool_healthy executor {m.get('ballast_pool_healthy', pool='executor')}")
        expect(m.get("ballast_pool_healthy", pool="planner") == 1, "the planner is healthy")
        expect(m.get("ballast_ready") == 0, f"ballast_ready {m.get('ballast_ready')}")
        expect(m.sum("ballast_requests_finished_total", reason="error") >= 1, "no error finish counted")
        info = d.info()
        pools = {p.name: p for p in info.pools}
        ex, pl = pools["executor"], pools["planner"]
        expect(not ex.healthy and UNHEALTHY in ex.error and CAUSE in ex.error,
               f"ServerInfo executor: healthy={ex.healthy} error={ex.error!r}")
        expect(pl.healthy and pl.error == "", f"ServerInfo planner: {pl.healthy} {pl.error!r}")
        expect(ex.running == 0 and ex.waiting == 0 and ex.kv_blocks_free == ex.kv_blocks_total,
               f"executor still holds work: {ex}")

        # the planner alone still serves what needs only it
        r = generate(d.stub, request(prompt="Hello", policy="fp16", max_tokens=4, sampling=GREEDY),
                     timeout=120)
        r.check_stream()
        expect(r.final.finish_reason in (FR().LENGTH, FR().STOP), f"fp16: {r.describe()}")

        # the process is up and answers; SIGTERM still exits 0
        expect(d.alive(), "ballastd exited after the device error")
        sp = {p.name: p for p in d.stats().pools}
        expect(not sp["executor"].healthy and sp["planner"].healthy,
               f"GetStats health: {sp['executor'].healthy} {sp['planner'].healthy}")
        expect(any(UNHEALTHY in l for l in d.stderr_lines()), "the device error is not logged")
        rc = d.stop(timeout=60, check=False)
        expect(rc == 0, f"exit status {rc} after SIGTERM; stderr:\n{d.stderr_tail()}")
    finally:
        ctx.cur = None
        d._reap()


def test_replica_fault(ctx):
    """Two executor replicas, a device error on replica 0: the request it
    holds fails, naming the replica; the daemon keeps serving on replica 1
    (ready, SERVING, ballast_pool_healthy 1 with 1 of 2 replicas healthy,
    ServerInfo saying which), and new requests all go there and finish."""
    own_only()
    HR = h.hpb.HealthCheckResponse
    cfg = h.base_config(ctx.model, **{"controls.calibrate_tokens": 0, "pools.planner": None,
                                      "pools.executor.replicas": 2, "pools.executor.threads": 1})
    d = ctx.cur = h.Daemon.start(ctx.ballastd, cfg, name="ballastd-replicas",
                                 env={"BALLAST_INJECT_FAULT": f"executor.0:matmul:{FAULT_CALL}"})
    unhealthy = "executor replica 0 (cpu) is unhealthy after a device error"
    try:
        info = d.info().pools[0]
        expect([x.device for x in info.replicas] == ["cpu", "cpu"] and info.healthy,
               f"ServerInfo at start: {info}")
        m = d.metrics()
        expect(m.get("ballast_pool_replicas", pool="executor") == 2
               and m.get("ballast_pool_replicas_healthy", pool="executor") == 2, "replica gauges at start")

        def run(tag, out, i):
            out[i] = generate(d.stub, request(prompt="Count from one to ten:", policy="direct",
                                              max_tokens=64, ignore_eos=True, sampling=GREEDY,
                                              request_id=f"{tag}-{i}"), timeout=300)

        # pairs at once: the first of each pair goes to replica 0 (ties go to
        # the lowest index), the second to replica 1; until replica 0 faults
        failed, done = None, 0
        for k in range(15):
            out = [None, None]
            ts = [threading.Thread(target=run, args=(f"pair{k}", out, i)) for i in range(2)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            for r in out:
                if r.final is not None and r.final.finish_reason == FR().ERROR:
                    failed = r
                else:
                    r.check_stream()
                    expect(r.final.finish_reason == FR().LENGTH, f"pair {k}: {r.describe()}")
                    done += 1
            if failed:
                break
        expect(failed is not None, f"no request met the fault at replica 0's matmul {FAULT_CALL}")
        failed.check_stream()
        expect(unhealthy in failed.final.error and CAUSE in failed.final.error,
               f"final error: {failed.final.error!r}")
        print(f"#   {failed.final.request_id}: ERROR: {failed.final.error}; {done} others finished",
              flush=True)

        # still serving, on one replica
        st, body, _ = d.get("/readyz")
        expect(st == 200, f"/readyz with one healthy replica: {st} {body!r}")
        resp = d.health.Check(h.hpb.HealthCheckRequest(service=""), timeout=10 * h.SLOW)
        expect(resp.status == HR.SERVING, f"Health.Check: {resp.status}")
        m = d.metrics()
        expect(m.get("ballast_pool_healthy", pool="executor") == 1
               and m.get("ballast_pool_replicas_healthy", pool="executor") == 1
               and m.get("ballast_ready") == 1,
               f"metrics: healthy {m.get('ballast_pool_healthy', pool='executor')} replicas_healthy "
               f"{m.get('ballast_pool_replicas_healthy', pool='executor')}")
        info = d.info().pools[0]
        r0, r1 = info.replicas
        expect(info.healthy and info.error == "", f"pool: {info.healthy} {info.error!r}")
        expect(not r0.healthy and unhealthy in r0.error and CAUSE in r0.error and r1.healthy
               and r1.error == "", f"replicas: {r0} {r1}")

        # new requests at once: all on replica 1, all finish
        out = [None] * 3
        ts = [threading.Thread(target=run, args=("after", out, i)) for i in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for r in out:
            r.check_stream()
            expect(r.final.finish_reason == FR().LENGTH, f"after the fault: {r.describe()}")
        expect(d.alive(), "ballastd exited")
        rc = d.stop(timeout=60, check=False)
        expect(rc == 0, f"exit status {rc} after SIGTERM; stderr:\n{d.stderr_tail()}")
    finally:
        ctx.cur = None
        d._reap()


def test_tensor_parallel(ctx):
    """SmolLM2-135M split three ways (9 heads, 3 kv heads, intermediate
    1536): ServerInfo shows the split, greedy tokens match the unsplit
    model's, and a device error on shard 0 fails the split replica's
    request with a clear status while the daemon stays up."""
    own_only()

    def cfg(tp):
        return h.base_config(ctx.model, **{"controls.calibrate_tokens": 0, "pools.planner": None,
                                          "pools.executor.tensor_parallel": tp,
                                          "pools.executor.threads": 1})

    def greedy(d, tag):
        return generate(d.stub, request(prompt="Count from one to ten:", policy="direct",
                                        max_tokens=24, ignore_eos=True, sampling=GREEDY,
                                        request_id=tag), timeout=300)

    tokens = {}
    for tp in (1, 3):
        d = ctx.cur = h.Daemon.start(ctx.ballastd, cfg(tp), name=f"ballastd-tp{tp}")
        try:
            info = d.info().pools[0]
            want = "+".join(["cpu"] * tp)
            expect(info.tensor_parallel == tp and info.replicas[0].device == want
                   and info.replicas[0].all_reduce == ("host" if tp > 1 else ""),
                   f"ServerInfo with tensor_parallel {tp}: {info}")
            r = greedy(d, f"tp{tp}")
            r.check_stream()
            expect(r.final.finish_reason == FR().LENGTH, f"tp {tp}: {r.describe()}")
            tokens[tp] = r.token_ids()
            rc = d.stop(timeout=60, check=False)
            expect(rc == 0, f"exit status {rc}; stderr:\n{d.stderr_tail()}")
        finally:
            ctx.cur = None
            d._reap()
    expect(len(tokens[1]) == 24 and tokens[3] == tokens[1],
           f"split greedy tokens {tokens[3]} != unsplit {tokens[1]}")
    print(f"#   24 greedy tokens split three ways = unsplit: {tokens[1][:8]}...", flush=True)

    d = ctx.cur = h.Daemon.start(ctx.ballastd, cfg(3), name="ballastd-tp3-fault",
                                 env={"BALLAST_INJECT_FAULT": FAULT})
    try:
        r = greedy(d, "tp3-fault")
        r.check_stream()
        expect(r.final.finish_reason == FR().ERROR and UNHEALTHY in r.final.error
               and CAUSE in r.final.error, f"split replica fault: {r.describe()}")
        after = greedy(d, "after")
        expect(after.code == SC.UNAVAILABLE and UNHEALTHY in after.details,
               f"after the fault: {after.describe()}")
        expect(d.alive(), "ballastd exited")
        rc = d.stop(timeout=60, check=False)
        expect(rc == 0, f"exit status {rc} after SIGTERM; stderr:\n{d.stderr_tail()}")
    finally:
        ctx.cur = None
        d._reap()


def test_malformed_value(ctx):
    """A malformed BALLAST_INJECT_FAULT fails the start, naming the variable."""
    own_only()
    tmp = tempfile.mkdtemp(prefix="ballastd-badfault-")
    path = os.path.join(tmp, "ballastd.cfg")
    h.write_atomic(path, h.config_text(config(ctx.model)))
    try:
        for value, says in (("executor:bogus:1", "unknown op 'bogus'"),
                            ("executor:matmul:0", "at least 1"),
                            ("gpu:matmul:5", "POOL executor or planner"),
                            ("executor.1:matmul:5", "replica 1: the pool has 1"),
                            ("executor.x:matmul:5", "replica x: the pool has 1"),
                            ("executor", "expected POOL[.R]:OP:N")):
            t0 = time.monotonic()
            run = subprocess.run([ctx.ballastd, "--config", path], capture_output=True, text=True,
                                 timeout=60 * h.SLOW, stdin=subprocess.DEVNULL,
                                 env={**os.environ, "BALLAST_INJECT_FAULT": value})
            expect(run.returncode == 1, f"{value!r}: exit {run.returncode}; stderr:\n{run.stderr}")
            expect(f"BALLAST_INJECT_FAULT={value}" in run.stderr and says in run.stderr,
                   f"{value!r}: stderr:\n{run.stderr}")
            expect("ballastd ready" not in run.stdout, f"{value!r}: it served")
            print(f"#   {value!r}: exit 1 in {time.monotonic() - t0:.2f}s: "
                  f"{run.stderr.strip().splitlines()[-1]}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


TESTS = [test_malformed_value, test_device_error, test_replica_fault, test_tensor_parallel]


def main():
    ballastd, model, filters = h.setup()
    ctx = Ctx(ballastd, model)
    return h.run_tests(TESTS, ctx, filters, daemon_of=lambda c: c.cur)


if __name__ == "__main__":
    sys.exit(main())
