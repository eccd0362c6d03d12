"""Shared pieces of the ballastd integration tests: stubs, config, process.

The tests start the real daemon (`ballastd --config FILE`) on free ports
(port 0; the ports are read from its ready line) over the demo model,
SmolLM2-135M-Instruct: a w4 executor (the GGUF's own Q4_1 blocks: coherent
enough to loop under greedy decoding, which exercises rescue) and an fp16
planner. Or, memcached's habit, BALLAST_DAEMON_ADDR=GRPC_ADDR,ADMIN_ADDR
points them at a daemon that is already running: the tests that must signal
it, rewrite its config or restart it are skipped (BALLAST_ADMIN_TOKEN gives
the admin token, when the tests should use it).

Python stubs are generated at test time with protoc and grpc_python_plugin
into a temporary folder, each proto from its own folder, so that no
generated package named `grpc` shadows the real grpc module.

Every wait is a poll with a deadline (wait_for), never a bare sleep; every
deadline is multiplied by SLOW in the sanitizer build (BALLAST_SKIP_SLOW_MODEL
or ASAN_OPTIONS set), which runs 3-5x slower.

A test file is a list of functions `test_x(ctx)`; run_tests() runs them in
order, each failure caught and reported (the daemon's stderr tail with it),
and the script exits 0 (all passed), 1 (a failure) or 77 (nothing ran).

usage of every test file: test_*.py BALLASTD PROTO_DIR [NAME_FILTER...]
BALLAST_KEEP_TMP=1 keeps each started daemon's folder (config, stdout, stderr).
The model path comes from $BALLAST_SMOLLM2_GGUF (scripts/fetch-model.sh).
"""
import atexit
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

try:
    import grpc
except ImportError:  # the pyenv python3, or no python3-grpcio
    print(f"SKIP: no grpc module in {sys.executable} (Debian: apt install python3-grpcio)")
    sys.exit(77)

SKIP_EXIT = 77
TOKEN = "test-admin-token-7f3e"  # the admin token the tests configure
SLOW = 4.0 if (os.environ.get("BALLAST_SKIP_SLOW_MODEL") or os.environ.get("ASAN_OPTIONS")) else 1.0
READY_RE = re.compile(r"^ballastd ready grpc=(\S+) admin=(\S+)\s*$", re.M)

# The generated modules (ballast_pb2 as pb, ballast_pb2_grpc as pbg,
# health_pb2 as hpb, health_pb2_grpc as hpbg), set by load_stubs().
pb = pbg = hpb = hpbg = None


class Skip(Exception):
    """The test cannot run here (external daemon, missing setting)."""


class Fail(AssertionError):
    pass


def expect(cond, what):
    if not cond:
        raise Fail(what)


def wait_for(pred, timeout, what, interval=0.02):
    """Poll pred() until it returns something truthy (returned), or fail
    after timeout * SLOW seconds naming what was awaited (and the last
    value pred returned, or the last exception it raised)."""
    end = time.monotonic() + timeout * SLOW
    last = None
    while True:
        try:
            v = pred()
            if v:
                return v
            last = v
        except Fail:
            raise
        except Exception as e:  # noqa: BLE001 - a poll may race a closing server
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > end:
            raise Fail(f"timed out after {timeout * SLOW:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.25)


# ---------------------------------------------------------------- stubs

def load_stubs(proto_dir):
    """protoc each proto from its own folder into a temporary folder and import
    the four modules into this module's globals (pb, pbg, hpb, hpbg)."""
    global pb, pbg, hpb, hpbg
    if pb is not None:
        return
    out = tempfile.mkdtemp(prefix="ballastd-stubs-")
    atexit.register(shutil.rmtree, out, True)
    plugin = shutil.which("grpc_python_plugin")
    if not plugin or not shutil.which("protoc"):
        raise Skip("protoc or grpc_python_plugin not found (apt: protobuf-compiler, protobuf-compiler-grpc)")
    for sub, name in (("ballast/v1", "ballast.proto"), ("grpc/health/v1", "health.proto")):
        folder = os.path.join(os.path.abspath(proto_dir), sub)
        run = subprocess.run(["protoc", f"--python_out={out}", f"--grpc_out={out}",
                              f"--plugin=protoc-gen-grpc={plugin}", "-I", folder, name],
                             capture_output=True, text=True, cwd=folder)
        if run.returncode != 0:
            raise RuntimeError(f"protoc {name} failed: {run.stderr}")
    sys.path.insert(0, out)
    pb = importlib.import_module("ballast_pb2")
    pbg = importlib.import_module("ballast_pb2_grpc")
    hpb = importlib.import_module("health_pb2")
    hpbg = importlib.import_module("health_pb2_grpc")


# ---------------------------------------------------------------- config

def base_config(model, **over):
    """The tests' config as nested dicts (rendered by config_text). Small
    budgets and limits so that the limits can be reached; keyword arguments
    replace whole groups or, as "group.key" in a dict, single keys."""
    cfg = {
        "server": {"grpc_listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0",
                   "admin_token": TOKEN, "drain_timeout_s": 60.0, "grpc_threads": 2},
        "pools": {
            "executor": {"model": model, "precision": "w4", "device": "cpu",
                         "kv_budget_mb": 48, "block_size": 16, "max_num_seqs": 64,
                         "max_batched_tokens": 512, "prefix_cache": True},
            "planner": {"model": model, "precision": "fp16", "device": "cpu",
                        "kv_budget_mb": 24, "block_size": 16, "max_num_seqs": 32,
                        "max_batched_tokens": 512, "prefix_cache": True},
        },
        "controls": {
            "default_policy": "rescue", "calibrate_tokens": 4,
            # small detector for 64-256 token budgets (the eval test's)
            "policies": [{"name": "small", "base": "rescue", "loop_window": 64, "loop_ngram": 4,
                          "loop_min_count": 3, "fallback": "restart", "allow_overrides": True},
                         {"name": "plan-small", "base": "plan", "plan_max_tokens": 24}],
        },
        "limits": {"max_message_bytes": 65536, "max_prompt_tokens": 512, "max_tokens": 256,
                   "default_max_tokens": 32, "max_streams": 1024, "stream_buffer_bytes": 1048576},
        "logging": {"level": "info"},
    }
    for k, v in over.items():
        if "." in k:
            path = k.split(".")
            g = cfg
            for p in path[:-1]:
                g = g.setdefault(p, {})
            if v is None:
                g.pop(path[-1], None)
            else:
                g[path[-1]] = v
        elif v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return cfg


def _scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if ("." in repr(v) or "e" in repr(v)) else repr(v) + ".0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    raise TypeError(v)


def config_text(cfg, indent=""):
    """libconfig text, one setting per line (so a line number names a key);
    a list of dicts is a list of groups, a list of scalars an array."""
    lines = []
    for k, v in cfg.items():
        if isinstance(v, dict):
            lines.append(f"{indent}{k}: {{")
            lines.append(config_text(v, indent + "  "))
            lines.append(f"{indent}}};")
        elif isinstance(v, (list, tuple)) and v and isinstance(v[0], dict):
            lines.append(f"{indent}{k} = (")
            for i, g in enumerate(v):
                lines.append(f"{indent}  {{")
                lines.append(config_text(g, indent + "    "))
                lines.append(f"{indent}  }}" + ("," if i + 1 < len(v) else ""))
            lines.append(f"{indent});")
        elif isinstance(v, (list, tuple)) and not v and k == "policies":
            lines.append(f"{indent}{k} = ( );")
        else:
            lines.append(f"{indent}{k} = {_scalar(v)};")
    return "\n".join(lines)


def line_of(text, needle):
    """1-based number of the first line of text containing needle."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise ValueError(needle)


def write_atomic(path, text):
    """Replace the file whole, so a reload never reads half of it."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- metrics

_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$')
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


class Metrics:
    """Prometheus text format 0.0.4, parsed strictly: a line that does not
    parse is an error (kept in .errors), as is a sample whose family has no
    TYPE line."""

    def __init__(self, text):
        self.samples = {}  # (name, ((label, value), ...)) -> float
        self.types = {}    # family -> counter, gauge, histogram, summary, untyped
        self.errors = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 4 and parts[1] == "TYPE":
                    self.types[parts[2]] = parts[3].strip()
                continue
            m = _SAMPLE_RE.match(line)
            if not m:
                self.errors.append(f"line {n}: cannot parse {line!r}")
                continue
            name, labels = m.group(1), {}
            if m.group(3):
                rest = m.group(3)
                while rest.strip():
                    lm = _LABEL_RE.match(rest)
                    if not lm:
                        self.errors.append(f"line {n}: bad labels {m.group(3)!r}")
                        break
                    labels[lm.group(1)] = re.sub(r'\\(.)', lambda e: "\n" if e.group(1) == "n" else e.group(1),
                                                 lm.group(2))
                    rest = rest[lm.end():]
            try:
                value = float(m.group(4))
            except ValueError:
                self.errors.append(f"line {n}: bad value {m.group(4)!r}")
                continue
            key = (name, tuple(sorted(labels.items())))
            if key in self.samples:
                self.errors.append(f"line {n}: duplicate sample {line!r}")
            self.samples[key] = value
        for (name, _), _v in self.samples.items():
            if self.family(name) is None:
                self.errors.append(f"{name}: no TYPE line")

    def family(self, name):
        if name in self.types:
            return name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in self.types:
                return name[: -len(suffix)]
        return None

    def select(self, name, **labels):
        """[(labels dict, value)] of the samples of name whose labels include these."""
        out = []
        for (n, lab), v in self.samples.items():
            d = dict(lab)
            if n == name and all(d.get(k) == str(val) for k, val in labels.items()):
                out.append((d, v))
        return out

    def sum(self, name, **labels):
        """Sum over the matching samples; 0 when there are none (a labelled
        counter may appear only once it moves)."""
        return sum(v for _, v in self.select(name, **labels))

    def get(self, name, **labels):
        """The one sample with exactly these labels, or None."""
        return self.samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))))

    def has(self, name):
        return any(n == name for n, _ in self.samples) or name in self.types


# ---------------------------------------------------------------- generate

class Result:
    """One Generate call: every message, then the status."""

    def __init__(self):
        self.messages = []  # GenerateResponse, in order
        self.code = grpc.StatusCode.OK
        self.details = ""
        self.first_at = None  # seconds from the call to the first message
        self.elapsed = 0.0

    @property
    def chunks(self):
        return [m.chunk for m in self.messages if m.WhichOneof("event") == "chunk"]

    @property
    def controls(self):
        return [m.control for m in self.messages if m.WhichOneof("event") == "control"]

    @property
    def finals(self):
        return [m.final for m in self.messages if m.WhichOneof("event") == "final"]

    @property
    def final(self):
        f = self.finals
        return f[-1] if f else None

    def token_ids(self):
        return [t for c in self.chunks for t in c.token_ids]

    def output(self):
        """The text the client ends with: chunks appended, a COMMIT control's
        text appended, a FALLBACK control keeps the first keep_bytes bytes."""
        out = b""
        for m in self.messages:
            kind = m.WhichOneof("event")
            if kind == "chunk":
                out += m.chunk.text.encode()
            elif kind == "control":
                if m.control.kind == pb.Control.COMMIT:
                    out += m.control.text.encode()
                elif m.control.kind == pb.Control.FALLBACK:
                    out = out[: m.control.keep_bytes]
        return out.decode("utf-8", "replace")

    def describe(self):
        f = self.final
        fin = pb.FinishReason.Name(f.finish_reason) if f else "no final"
        return (f"status {self.code.name} {self.details!r}, {len(self.chunks)} chunks, "
                f"{len(self.controls)} controls, {len(self.finals)} finals, finish {fin}")

    def check_stream(self):
        """The stream shape every successful call must have: status OK,
        exactly one final, and it is the last message."""
        expect(self.code == grpc.StatusCode.OK, f"stream failed: {self.describe()}")
        expect(len(self.finals) == 1, f"want exactly one final: {self.describe()}")
        expect(self.messages[-1].WhichOneof("event") == "final", "the final is not the last message")


def generate(stub, req, timeout=None, metadata=None, cancel_after=None):
    """Run one Generate call to its end. cancel_after=N cancels the call once N
    messages have arrived (the result then has status CANCELLED)."""
    r = Result()
    t0 = time.monotonic()
    call = stub.Generate(req, timeout=None if timeout is None else timeout * SLOW, metadata=metadata)
    try:
        for msg in call:
            if r.first_at is None:
                r.first_at = time.monotonic() - t0
            r.messages.append(msg)
            if cancel_after is not None and len(r.messages) >= cancel_after:
                call.cancel()
    except grpc.RpcError as e:
        r.code, r.details = e.code(), e.details() or ""
    r.elapsed = time.monotonic() - t0
    return r


def request(**kw):
    """A GenerateRequest; sampling=dict(...) and overrides=dict(...) are
    built from dicts, messages from (role, content) pairs."""
    if "sampling" in kw and isinstance(kw["sampling"], dict):
        kw["sampling"] = pb.Sampling(**kw["sampling"])
    if "overrides" in kw and isinstance(kw["overrides"], dict):
        kw["overrides"] = pb.PolicyOverrides(**kw["overrides"])
    if "messages" in kw:
        kw["messages"] = [m if isinstance(m, pb.ChatMessage) else pb.ChatMessage(role=m[0], content=m[1])
                          for m in kw["messages"]]
    return pb.GenerateRequest(**kw)


GREEDY = {"temperature": 0.0}


# ---------------------------------------------------------------- the daemon

class Daemon:
    """A ballastd the tests talk to: one they started (own), or an external
    one named by BALLAST_DAEMON_ADDR (no process, no config file)."""

    def __init__(self):
        self.proc = None
        self.grpc_addr = self.admin_addr = None
        self.config_path = None
        self.cfg = None
        self.tmp = None
        self.stderr_path = self.stdout_path = None
        self.token = TOKEN
        self._channel = None
        self.stub = self.health = None
        self.returncode = None

    # -- starting

    @classmethod
    def external(cls):
        addr = os.environ.get("BALLAST_DAEMON_ADDR", "")
        if not addr:
            return None
        d = cls()
        d.grpc_addr, d.admin_addr = [a.strip() for a in addr.split(",")]
        d.token = os.environ.get("BALLAST_ADMIN_TOKEN")
        d._connect()
        return d

    @classmethod
    def start(cls, ballastd, cfg, name="ballastd", timeout=180, env=None):
        """Write cfg to a temporary config file, start the daemon (env: extra
        environment variables) and wait for its ready line."""
        d = cls()
        d.tmp = tempfile.mkdtemp(prefix=f"{name}-")
        d.config_path = os.path.join(d.tmp, "ballastd.cfg")
        d.cfg = cfg
        write_atomic(d.config_path, config_text(cfg))
        d.stdout_path = os.path.join(d.tmp, "stdout")
        d.stderr_path = os.path.join(d.tmp, "stderr")
        # files, not pipes: the daemon logs a line per request, and a full
        # pipe nobody reads would stall it
        with open(d.stdout_path, "wb") as out, open(d.stderr_path, "wb") as err:
            d.proc = subprocess.Popen([ballastd, "--config", d.config_path], stdout=out,
                                      stderr=err, stdin=subprocess.DEVNULL,
                                      env={**os.environ, **env} if env else None)
        atexit.register(d._reap)

        def ready():
            m = READY_RE.search(open(d.stdout_path).read())
            if m:
                return m
            if d.proc.poll() is not None:
                raise Fail(f"ballastd exited with status {d.proc.returncode} before it was ready")
            return None

        t0 = time.monotonic()
        try:
            m = _wait_ready(ready, timeout)
        except Fail as e:
            tail = d.stderr_tail()
            d._reap()
            raise Fail(f"{e}\nstderr:\n{tail}") from None
        d.grpc_addr, d.admin_addr = m.group(1), m.group(2)
        print(f"# {name}: ready in {time.monotonic() - t0:.1f}s, pid {d.proc.pid}, "
              f"grpc={d.grpc_addr} admin={d.admin_addr}", flush=True)
        d._connect()
        return d

    def _connect(self):
        self._channel = self.channel()
        self.stub = pbg.BallastStub(self._channel)
        self.health = hpbg.HealthStub(self._channel)

    def channel(self, own_connection=False):
        opts = [("grpc.max_receive_message_length", 64 << 20)]
        if own_connection:
            opts.append(("grpc.use_local_subchannel_pool", 1))
        return grpc.insecure_channel(self.grpc_addr, options=opts)

    @property
    def own(self):
        return self.proc is not None

    def require_own(self, why="signals or rewrites its config"):
        if not self.own:
            raise Skip(f"external daemon (BALLAST_DAEMON_ADDR): the test {why}")

    def require_token(self):
        if not self.token:
            raise Skip("no admin token (set BALLAST_ADMIN_TOKEN for an external daemon)")
        return self.token

    # -- config

    def rewrite(self, cfg=None, text=None):
        """Replace the config file (cfg dicts, or raw text)."""
        self.require_own()
        if cfg is not None:
            self.cfg = cfg
            text = config_text(cfg)
        write_atomic(self.config_path, text)
        return text

    # -- admin HTTP

    def http(self, method, path, token=None, body=None, timeout=10):
        """(status, body text, headers) of an admin request; HTTP errors are
        answers too."""
        req = urllib.request.Request(f"http://{self.admin_addr}{path}", method=method,
                                     data=body if body is not None or method != "POST" else b"")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout * SLOW) as resp:
                return resp.status, resp.read().decode(), resp.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), e.headers

    def get(self, path):
        return self.http("GET", path)

    def reload_http(self, token=None):
        """POST /v1/reload: (status, parsed JSON or the raw text)."""
        status, body, _ = self.http("POST", "/v1/reload", token=token)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def metrics(self):
        status, body, _ = self.get("/metrics")
        expect(status == 200, f"/metrics: HTTP {status}")
        return Metrics(body)

    def config_json(self):
        status, body, _ = self.get("/v1/config")
        expect(status == 200, f"/v1/config: HTTP {status}")
        return json.loads(body)

    # -- state

    def info(self):
        return self.stub.ServerInfo(pb.ServerInfoRequest(), timeout=10 * SLOW)

    def stats(self):
        return self.stub.GetStats(pb.GetStatsRequest(), timeout=10 * SLOW)

    def idle(self):
        """True when no stream is active and every pool's KV blocks are free
        (ballast_active_streams 0, every ballast_kv_blocks_used 0)."""
        m = self.metrics()
        used = m.select("ballast_kv_blocks_used")
        return (m.get("ballast_active_streams") == 0 and used and all(v == 0 for _, v in used)
                and all(v == 0 for _, v in m.select("ballast_pool_running"))
                and all(v == 0 for _, v in m.select("ballast_pool_waiting")))

    def wait_idle(self, timeout=30):
        try:
            wait_for(self.idle, timeout, "the daemon to go idle")
        except Fail:
            m = self.metrics()
            raise Fail(f"not idle after {timeout * SLOW:.0f}s: active_streams="
                       f"{m.get('ballast_active_streams')} kv_blocks_used="
                       f"{m.select('ballast_kv_blocks_used')} running={m.select('ballast_pool_running')} "
                       f"waiting={m.select('ballast_pool_waiting')}") from None

    def rss_kib(self):
        self.require_own("reads the daemon's memory")
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise Fail("no VmRSS")

    def alive(self):
        return self.proc is None or self.proc.poll() is None

    def signal(self, sig):
        self.require_own()
        self.proc.send_signal(sig)

    def stderr_tail(self, n=40):
        if not self.stderr_path or not os.path.exists(self.stderr_path):
            return "(no stderr)"
        with open(self.stderr_path, errors="replace") as f:
            lines = f.read().splitlines()
        return "\n".join(lines[-n:])

    def stderr_lines(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read().splitlines()

    # -- stopping

    def stop(self, timeout=60, check=True):
        """SIGTERM, wait for the exit (SIGKILL after timeout * SLOW), and
        return the status; check: fail unless it is 0."""
        if self.proc is None:
            return 0
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        if check:
            expect(rc == 0, f"ballastd exited with status {rc}; stderr:\n{self.stderr_tail()}")
        return rc

    def wait_exit(self, timeout=60):
        try:
            rc = self.proc.wait(timeout=timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Fail(f"ballastd did not exit {timeout * SLOW:.0f}s after SIGTERM (killed); "
                       f"stderr:\n{self.stderr_tail()}") from None
        self.returncode = rc
        return rc

    def _reap(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.tmp and os.environ.get("BALLAST_KEEP_TMP") is None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _wait_ready(ready, timeout):
    return wait_for(ready, timeout, "the 'ballastd ready grpc=... admin=...' line", interval=0.05)


# ---------------------------------------------------------------- running

def setup():
    """Parse argv, load the stubs; returns (ballastd path, model path or None,
    name filters). Exits 77 when the model is not available for an own daemon."""
    if len(sys.argv) < 3:
        print(f"usage: {sys.argv[0]} BALLASTD PROTO_DIR [NAME_FILTER...]")
        sys.exit(2)
    ballastd, proto_dir, filters = sys.argv[1], sys.argv[2], sys.argv[3:]
    try:
        load_stubs(proto_dir)
    except Skip as e:
        print(f"SKIP: {e}")
        sys.exit(SKIP_EXIT)
    model = os.environ.get("BALLAST_SMOLLM2_GGUF", "")
    if not os.environ.get("BALLAST_DAEMON_ADDR"):
        if not model:
            print("SKIP: BALLAST_SMOLLM2_GGUF is not set (scripts/fetch-model.sh prints the path)")
            sys.exit(SKIP_EXIT)
        if not os.path.isfile(model):
            print(f"BALLAST_SMOLLM2_GGUF={model!r} is not a file: run scripts/fetch-model.sh")
            sys.exit(1)
        if not os.access(ballastd, os.X_OK):
            print(f"{ballastd!r} is not an executable")
            sys.exit(1)
    return ballastd, model or None, filters


def take_exe(i, name):
    """Remove argv[i], an executable the test runs besides ballastd (before
    setup() reads the rest), and return its absolute path; exit 2 when it
    is missing, 1 when it is not executable."""
    if len(sys.argv) <= i:
        print(f"usage: {sys.argv[0]} BALLASTD PROTO_DIR {name} [NAME_FILTER...]")
        sys.exit(2)
    path = os.path.abspath(sys.argv.pop(i))
    if not os.access(path, os.X_OK):
        print(f"{path!r} is not an executable")
        sys.exit(1)
    return path


def stop_shared(d, rc):
    """After the tests: stop the shared daemon when the script started it;
    a stop that is not clean (exit status, leaks) fails the script."""
    if d.own:
        try:
            d.stop()
        except Fail as e:
            print(f"FAIL clean stop: {e}")
            return 1
    return rc


def start_or_exit(ballastd, model):
    """The daemon the tests share: the external one, or one started on the
    tests' config; a daemon that does not start fails the script (status 1)."""
    try:
        return Daemon.external() or Daemon.start(ballastd, base_config(model))
    except Fail as e:
        print(f"FAIL start: {e}", flush=True)
        sys.exit(1)


def run_tests(tests, ctx, filters=(), daemon_of=None):
    """Run each test(ctx) in order; print one line each. daemon_of(ctx) names
    the daemon whose stderr tail goes with a failure. Returns the exit code."""
    passed = failed = skipped = 0
    for t in tests:
        name = t.__name__
        if filters and not any(f in name for f in filters):
            continue
        t0 = time.monotonic()
        try:
            t(ctx)
        except Skip as e:
            skipped += 1
            print(f"skip {name}: {e}", flush=True)
            continue
        except Exception as e:  # noqa: BLE001 - every failure is reported, the rest still run
            failed += 1
            print(f"FAIL {name} ({time.monotonic() - t0:.1f}s): {type(e).__name__}: {e}", flush=True)
            if not isinstance(e, Fail):
                traceback.print_exc()
            d = daemon_of(ctx) if daemon_of else None
            if d is not None and d.own:
                state = "running" if d.alive() else f"exited {d.proc.returncode}"
                print(f"  ballastd ({state}) stderr tail:\n" +
                      "\n".join("    " + l for l in d.stderr_tail(15).splitlines()), flush=True)
            continue
        passed += 1
        print(f"ok   {name} ({time.monotonic() - t0:.1f}s)", flush=True)
    print(f"{passed} passed, {failed} failed, {skipped} skipped", flush=True)
    if failed:
        return 1
    return 0 if passed else SKIP_EXIT
