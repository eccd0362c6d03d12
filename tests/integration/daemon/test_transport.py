#!/usr/bin/env python3
"""ballastd's transport: TLS on the gRPC port, and a client that stops reading.

- TLS with client certificates (a CA, a server and a client certificate made
  with openssl for the test): a client with the CA and its certificate
  streams a request; one without a client certificate, one that does not
  trust the CA, and a plaintext one are refused (UNAVAILABLE), and the
  daemon serves on. A TLS file that is missing, not PEM, not the kind of
  PEM it should be, or a key that does not match the certificate fails the
  start with the file named. So does a pool over several GPUs.
- A slow client: a stream whose client reads nothing (HTTP/2 window of
  ~1 byte, so nothing can sit in the transport) while another client is
  served at full speed; once its unread output passes
  limits.stream_buffer_bytes the request is cancelled (its KV blocks
  freed, counted in ballast_slow_client_cuts_total) without the client
  reading, and the call ends RESOURCE_EXHAUSTED naming the limit.

usage: test_transport.py BALLASTD PROTO_DIR [NAME_FILTER...]
The model path comes from $BALLAST_SMOLLM2_GGUF (scripts/fetch-model.sh).
Needs an own daemon (it starts three); openssl for the TLS tests.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, request, GREEDY  # noqa: E402

SC = grpc.StatusCode


class Ctx:
    def __init__(self, ballastd, model):
        self.ballastd, self.model = ballastd, model
        self.d = None  # the daemon of the running test, for the failure report
        self.tmp = tempfile.mkdtemp(prefix="ballastd-tls-")


def short(d):
    """A greedy 4-token request on d's own stub; returns the Result."""
    return h.generate(d.stub, request(prompt="Hello", max_tokens=4, policy="direct", sampling=GREEDY),
                      timeout=120)


# ---------------------------------------------------------------- TLS

def openssl(tmp, *args):
    r = subprocess.run(["openssl", *args], cwd=tmp, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"openssl {' '.join(args)}: {r.stderr.strip()}")


def make_pki(tmp):
    """ca.pem, server.pem/-key.pem (for 127.0.0.1 and localhost),
    client.pem/-key.pem, and other-ca.pem (a CA nobody used)."""
    ext = os.path.join(tmp, "san.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for ca in ("ca", "other-ca"):
        openssl(tmp, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", f"{ca}-key.pem", "-out", f"{ca}.pem", "-days", "2",
                "-subj", f"/CN=ballast test {ca}")
    for who in ("server", "client"):
        openssl(tmp, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", f"{who}-key.pem", "-out", f"{who}.csr", "-subj", f"/CN={who}")
        extra = ["-extfile", ext] if who == "server" else []
        openssl(tmp, "x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-out", f"{who}.pem", "-days", "2", *extra)


def read(tmp, name):
    with open(os.path.join(tmp, name), "rb") as f:
        return f.read()


def tls_channel(addr, tmp, ca="ca.pem", client=True):
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(tmp, ca),
        private_key=read(tmp, "client-key.pem") if client else None,
        certificate_chain=read(tmp, "client.pem") if client else None)
    return grpc.secure_channel(addr, creds, options=[("grpc.use_local_subchannel_pool", 1)])


def refused(channel, what):
    stub = h.pbg.BallastStub(channel)
    try:
        stub.ServerInfo(h.pb.ServerInfoRequest(), timeout=10 * h.SLOW)
    except grpc.RpcError as e:
        expect(e.code() == SC.UNAVAILABLE, f"{what}: {e.code().name} {e.details()!r}, want UNAVAILABLE")
        print(f"#   {what}: {e.code().name}", flush=True)
        return
    finally:
        channel.close()
    raise h.Fail(f"{what}: the call went through")


def test_tls_client_certificates(ctx):
    if not shutil.which("openssl"):
        raise h.Skip("openssl not found (apt: openssl)")
    tmp = ctx.tmp
    make_pki(tmp)
    p = lambda n: os.path.join(tmp, n)  # noqa: E731
    cfg = h.base_config(ctx.model, **{"server.tls_cert": p("server.pem"), "server.tls_key": p("server-key.pem"),
                                      "server.tls_client_ca": p("ca.pem"), "pools.planner": None,
                                      "controls.calibrate_tokens": 0})
    d = ctx.d = h.Daemon.start(ctx.ballastd, cfg, name="ballastd-tls")
    try:
        good = tls_channel(d.grpc_addr, tmp)
        stub = h.pbg.BallastStub(good)
        r = h.generate(stub, request(prompt="Hello", max_tokens=4, policy="direct", sampling=GREEDY),
                       timeout=120)
        r.check_stream()
        expect(len(r.token_ids()) == 4, f"TLS stream: {r.describe()}")
        refused(tls_channel(d.grpc_addr, tmp, client=False), "TLS without a client certificate")
        refused(tls_channel(d.grpc_addr, tmp, ca="other-ca.pem"), "TLS not trusting the server's CA")
        refused(grpc.insecure_channel(d.grpc_addr, options=[("grpc.use_local_subchannel_pool", 1)]),
                "plaintext")
        r = h.generate(stub, request(prompt="Hi", max_tokens=2, policy="direct", sampling=GREEDY), timeout=120)
        r.check_stream()
        good.close()
        # the admin endpoint is plain HTTP on its own port, as before
        expect(d.get("/readyz")[0] == 200, "/readyz")
    finally:
        d.stop()


def test_tls_bad_files(ctx):
    tmp = ctx.tmp
    junk = os.path.join(tmp, "junk.pem")
    with open(junk, "w") as f:
        f.write("this is not a certificate\n")
    missing = os.path.join(tmp, "missing.pem")
    cases = [("a missing certificate", missing, junk, missing),
             ("a certificate that is not PEM", junk, junk, junk)]
    if os.path.exists(os.path.join(tmp, "server.pem")):  # test_tls_client_certificates made them
        p = lambda n: os.path.join(tmp, n)  # noqa: E731
        cases += [("a key file holding a certificate", p("server.pem"), p("client.pem"), p("client.pem")),
                  ("a key that is not the certificate's", p("server.pem"), p("client-key.pem"),
                   p("client-key.pem"))]
    for what, cert, key, name in cases:
        cfg = h.base_config(ctx.model, **{"server.tls_cert": cert, "server.tls_key": key,
                                          "pools.planner": None, "controls.calibrate_tokens": 0})
        try:
            d = h.Daemon.start(ctx.ballastd, cfg, name="ballastd-badtls", timeout=120)
        except h.Fail as e:
            msg = str(e)
            expect("exited with status" in msg and name in msg,
                   f"{what}: the start failed without naming {name}:\n{msg}")
            print(f"#   {what}: refused to start, naming the file", flush=True)
            continue
        d.stop(check=False)
        raise h.Fail(f"{what}: ballastd started")


def test_several_gpus_refused(ctx):
    """A replica over several GPUs (tensor parallelism, not built yet) stops
    the start with the key named, rather than running on the first GPU."""
    cfg = h.base_config(ctx.model, **{"pools.executor.device": "cuda", "pools.executor.devices": [0, 1],
                                      "pools.planner": None, "controls.calibrate_tokens": 0})
    try:
        d = h.Daemon.start(ctx.ballastd, cfg, name="ballastd-tp", timeout=120)
    except h.Fail as e:
        expect("pools.executor.devices: lists 2 GPUs for 1 replica" in str(e),
               f"the start failed otherwise:\n{e}")
        return
    d.stop(check=False)
    raise h.Fail("ballastd started with pools.executor.devices = [0, 1]")


# ---------------------------------------------------------------- slow client

BUFFER = 4096  # limits.stream_buffer_bytes: its minimum


def test_slow_client(ctx):
    cfg = h.base_config(ctx.model, **{"limits.stream_buffer_bytes": BUFFER, "limits.max_tokens": 2000,
                                      "pools.planner": None, "controls.calibrate_tokens": 0})
    d = ctx.d = h.Daemon.start(ctx.ballastd, cfg, name="ballastd-slow")
    slow_ch = None
    try:
        m0 = d.metrics()
        # a window of ~1 byte and no BDP probing: what the client does not
        # read stays in the daemon, not in the transport
        slow_ch = grpc.insecure_channel(d.grpc_addr, options=[
            ("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", 1)])
        slow = h.pbg.BallastStub(slow_ch).Generate(
            # greedy counting runs to max_tokens on the demo model
            request(request_id="slow", prompt="Count: 1, 2, 3,", max_tokens=2000, policy="direct",
                    sampling=GREEDY),
            timeout=600 * h.SLOW)
        # served alongside: the pool is not held up by the unread stream
        r = short(d)
        r.check_stream()
        expect(len(r.token_ids()) == 4, f"the other client: {r.describe()}")
        # the cut happens with the client still not reading
        cuts = h.wait_for(lambda: d.metrics().sum("ballast_slow_client_cuts_total")
                          - m0.sum("ballast_slow_client_cuts_total"), 300, "the slow client's cut")
        expect(cuts == 1, f"{cuts} cuts")
        # the request left its pool and freed its blocks; the call stays
        # open (one message in flight) until the client reads or leaves
        def pool_idle():
            m = d.metrics()
            busy = [v for n in ("ballast_kv_blocks_used", "ballast_pool_running", "ballast_pool_waiting")
                    for _, v in m.select(n) if v]
            return not busy and m
        m = h.wait_for(pool_idle, 60, "the slow request out of its pool")
        expect(m.get("ballast_active_streams") == 1, f"active streams {m.get('ballast_active_streams')}")
        n, tokens = 0, 0
        try:
            for msg in slow:
                n += 1
                if msg.WhichOneof("event") == "chunk":
                    tokens += len(msg.chunk.token_ids)
                expect(msg.WhichOneof("event") != "final", "a final after the cut")
            raise h.Fail(f"the slow stream ended OK after {n} messages")
        except grpc.RpcError as e:
            expect(e.code() == SC.RESOURCE_EXHAUSTED and "stream_buffer_bytes" in (e.details() or ""),
                   f"slow stream ended {e.code().name} {e.details()!r}")
            print(f"#   slow stream: {n} messages ({tokens} tokens) read, then {e.code().name}: "
                  f"{e.details()}", flush=True)
        short(d).check_stream()
        d.wait_idle(60)
    finally:
        if slow_ch is not None:
            slow_ch.close()
        d.stop()


TESTS = [test_tls_client_certificates, test_tls_bad_files, test_several_gpus_refused, test_slow_client]


def main():
    ballastd, model, filters = h.setup()
    if os.environ.get("BALLAST_DAEMON_ADDR"):
        print("SKIP: these tests start their own daemons (BALLAST_DAEMON_ADDR is set)")
        return h.SKIP_EXIT
    ctx = Ctx(ballastd, model)
    try:
        return h.run_tests(TESTS, ctx, filters, daemon_of=lambda c: c.d)
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
