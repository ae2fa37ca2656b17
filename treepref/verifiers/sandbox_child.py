"""The two programs of a sandboxed run. Standard library only: both run under ``python -I -S``.

``worker`` (untrusted, in the sandbox): receives the solution as the first line on its request pipe, loads
it, then answers calls to its functions, one JSON line per call, over two pipes and nothing else.

``harness`` (trusted, outside the sandbox): runs the tests. Inside the tests the solution's functions are
proxies: calling one sends the arguments to the worker and turns its answer back into a plain value (None,
bool, int, float, complex, str, bytes, list, tuple, set, frozenset, dict), built here by ``decode``.
The verdict is what the harness saw: one line on its own stdout (a pipe that exists only between it and
the parent, never in the sandbox), authenticated with the run's secret, which only the harness holds.

So nothing the solution can do is read as a verdict: it can only answer calls, and any answer is a value
like one a correct function returns. An object with a rigged ``__eq__`` cannot cross (it is not a plain
value); exiting early, crashing, hanging, patching builtins or the test helpers, or writing fake records to
every descriptor it owns happen in the worker and leave the harness's tests failing; the tests (with their
expected values) never enter the worker. See ``treepref.verifiers.sandbox`` for the isolation around the
worker.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import select
import sys
import time

MAX_DEPTH = 100
MAX_LINE = 1024 * 1024  # bytes of one answer, unless the job says otherwise
# Exceptions that must not leave a function: ``next``/``map``/``all`` would read StopIteration as "no more
# items" and a test written as ``all(map(candidate, cases))`` would pass; the others end programs. When
# the solution raises one, the test it happened in fails, whatever the test does with it (PEP 479's rule).
ESCAPING = {"StopIteration", "StopAsyncIteration", "GeneratorExit", "SystemExit", "KeyboardInterrupt"}


# --------------------------------------------------------------------------------------------- values
def encode(value, depth: int = 0):
    """A plain value as JSON-ready data. Exact types only: a subclass (with its own ``__eq__``) is refused."""
    t = type(value)
    if value is None or t is bool or t is str or t is int:
        return value
    if t is float:
        return ["float", repr(value)]  # repr round-trips exactly, nan and inf included
    if t is complex:
        return ["complex", [repr(value.real), repr(value.imag)]]
    if t is bytes:
        return ["bytes", value.hex()]
    if depth >= MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if t in (list, tuple, set, frozenset):
        return [t.__name__, [encode(v, depth + 1) for v in value]]
    if t is dict:
        return ["dict", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    raise TypeError(f"a {t.__name__} is not a plain value")


_CONTAINERS = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def decode(data, depth: int = 0):
    """The value ``encode`` wrote, built from builtin types only; anything else raises ``ValueError``."""
    t = type(data)
    if data is None or t is bool or t is str or t is int:
        return data
    if t is not list or len(data) != 2 or type(data[0]) is not str or depth >= MAX_DEPTH:
        raise ValueError("not an encoded value")
    tag, body = data
    if tag == "float" and type(body) is str:
        return float(body)
    if tag == "complex" and type(body) is list and len(body) == 2 and all(type(b) is str for b in body):
        return complex(float(body[0]), float(body[1]))
    if tag == "bytes" and type(body) is str:
        return bytes.fromhex(body)
    if tag in _CONTAINERS and type(body) is list:
        try:
            return _CONTAINERS[tag](decode(v, depth + 1) for v in body)
        except TypeError as exc:  # an unhashable member of a set
            raise ValueError(str(exc)) from None
    if tag == "dict" and type(body) is list:
        out = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("not an encoded dict")
            try:
                out[decode(pair[0], depth + 1)] = decode(pair[1], depth + 1)
            except TypeError as exc:
                raise ValueError(str(exc)) from None
        return out
    raise ValueError(f"not an encoded value (tag {tag!r})")


def _reject_constant(name):
    raise ValueError(f"{name} outside a float tag")


def loads(line: str):
    """JSON with bare floats and NaN/Infinity refused (floats travel tagged)."""
    return json.loads(line, parse_float=_reject_constant, parse_constant=_reject_constant)


def describe(exc: BaseException) -> str:
    return ("%s: %s" % (type(exc).__name__, exc))[:500]


# --------------------------------------------------------------------------------------------- worker
class SandboxError(PermissionError):
    pass


def install_fence(root: str, no_fork: bool) -> None:
    """An audit hook (PEP 578): files only inside ``root`` (reads: and the standard library), no sockets, no
    programs, no ctypes. A Python-level fence; the OS-level limits are set by the parent."""
    import sysconfig

    root = os.path.realpath(root)
    read = [root] + sorted({os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")})
    devices = {"/dev/null", "/dev/urandom", "/dev/zero", "/dev/random"}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    write_events = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
                    "os.symlink", "os.truncate", "os.utime", "os.chflags", "os.setxattr", "os.removexattr",
                    "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.move",
                    "shutil.rmtree", "shutil.make_archive", "shutil.unpack_archive"}
    read_events = {"os.listdir", "os.scandir", "os.chdir", "glob.glob", "os.getxattr", "os.listxattr"}
    deny = ("socket.", "ctypes.", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.startfile",
            "subprocess.", "urllib.", "http.", "ftplib.", "smtplib.", "imaplib.", "poplib.", "nntplib.",
            "telnetlib.", "webbrowser.", "os.fork" if no_fork else "\0")
    deny_imports = {"ctypes", "_ctypes", "_posixsubprocess"}

    def inside(path, roots):
        if isinstance(path, int):
            return True
        try:
            p = os.path.realpath(os.fsdecode(path))
        except Exception:
            return False
        return p in devices or any(p == r or p.startswith(r + os.sep) for r in roots)

    busy = [False]

    def hook(event, args):
        if busy[0]:
            return
        busy[0] = True
        try:
            if event == "open":
                path, mode, flags = (tuple(args) + (None, None, None))[:3]
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & write_flags)
                if not inside(path, [root] if writing else read):
                    raise SandboxError("sandbox: %s of %r is not allowed" % ("write" if writing else "read", path))
            elif event in write_events:
                for a in args[:2]:
                    if isinstance(a, (str, bytes, os.PathLike)) and not inside(a, [root]):
                        raise SandboxError("sandbox: %s on %r is not allowed" % (event, a))
            elif event in read_events:
                if args and isinstance(args[0], (str, bytes, os.PathLike)) and not inside(args[0], read):
                    raise SandboxError("sandbox: %s of %r is not allowed" % (event, args[0]))
            elif event == "import":
                if args and args[0] in deny_imports:
                    raise SandboxError("sandbox: import of %s is not allowed" % args[0])
            elif event.startswith(deny):
                raise SandboxError("sandbox: %s is not allowed" % event)
        finally:
            busy[0] = False

    sys.addaudithook(hook)


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, SandboxError):
        return "forbidden"
    if isinstance(exc, BlockingIOError):
        return "process_limit"
    return "runtime"


def worker_main(spec: dict) -> None:
    """Read the solution (the first request line), load it, say so, then answer one call per request line."""
    main = os.getpid()
    answers = os.fdopen(spec["answers_fd"], "w")
    requests = os.fdopen(spec["requests_fd"], "r")

    def answer(**message) -> None:
        if os.getpid() != main:  # a process the solution forked never speaks for it
            os._exit(0)
        for stream in (sys.stdout, sys.stderr):  # what it printed so far reaches the parent's capture
            try:
                stream.flush()
            except Exception:
                pass
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    try:
        source = json.loads(requests.readline())["code"]
    except (ValueError, KeyError, TypeError):
        os._exit(0)
    if spec["fence"]:
        install_fence(spec["root"], spec["no_fork"])
    try:
        code = compile(source, "<solution>", "exec")
    except (SyntaxError, ValueError) as exc:
        answer(event="error", kind="syntax", message=describe(exc))
        os._exit(0)
    namespace = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(code, namespace)
    except BaseException as exc:  # SystemExit too: a solution that exits while loading is not loaded
        answer(event="error", kind=error_kind(exc), message=describe(exc))
        os._exit(0)
    answer(event="loaded")
    for line in requests:
        request = json.loads(line)
        try:
            fn = namespace.get(request["name"])
            if fn is None:
                raise NameError(f"name {request['name']!r} is not defined by the solution")
            value = encode(fn(*decode(request["args"]), **decode(request["kwargs"])))
            message = {"id": request["id"], "ok": True, "value": value}
            json.dumps(message)  # huge ints and the like fail here, as the call's error
        except BaseException as exc:
            message = {"id": request["id"], "ok": False, "error": type(exc).__name__, "kind": error_kind(exc),
                       "message": describe(exc)}
        answer(**message)
    os._exit(0)


# --------------------------------------------------------------------------------------------- harness
class WorkerGone(Exception):
    """The solution's process ended, stopped answering in time, or broke the protocol."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.treepref_kind = kind


class Connection:
    """The harness's end of the two pipes, with one deadline for the whole run."""

    def __init__(self, requests_fd: int, answers_fd: int, deadline: float, max_line: int = MAX_LINE):
        self.requests_fd, self.answers_fd, self.deadline, self.max_line = requests_fd, answers_fd, deadline, max_line
        self.buffer = b""
        self.gone: WorkerGone | None = None
        self.escaped: list[str] = []  # ESCAPING exceptions the solution raised, in order

    def receive(self) -> dict:
        if self.gone:
            raise self.gone
        while b"\n" not in self.buffer:
            left = self.deadline - time.monotonic()
            ready = select.select([self.answers_fd], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                raise self.fail("timeout", "the solution did not answer within the time limit")
            chunk = os.read(self.answers_fd, 1 << 16)
            if not chunk:
                raise self.fail("killed", "the solution's process ended")
            self.buffer += chunk
            if len(self.buffer) > self.max_line:
                raise self.fail("answer_size", f"an answer over the size limit of {self.max_line} bytes")
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            message = loads(line.decode("utf-8"))
        except ValueError:
            raise self.fail("protocol", "an answer that is not JSON") from None
        if type(message) is not dict:
            raise self.fail("protocol", "an answer that is not an object")
        return message

    def fail(self, kind: str, message: str) -> WorkerGone:
        self.gone = WorkerGone(kind, message)
        return self.gone

    def send(self, message: dict) -> None:
        try:
            data = memoryview(json.dumps(message).encode() + b"\n")
            while data:
                data = data[os.write(self.requests_fd, data):]
        except OSError:
            raise self.fail("killed", "the solution's process ended") from None

    def call(self, name: str, args: tuple, kwargs: dict):
        if self.gone:
            raise self.gone
        nonce = os.urandom(8).hex()
        self.send({"id": nonce, "name": name, "args": encode(list(args)), "kwargs": encode(kwargs)})
        message = self.receive()
        if message.get("id") != nonce:
            raise self.fail("protocol", "an answer to a call that was not made")
        if message.get("ok") is True:
            try:
                return decode(message.get("value"))
            except ValueError as exc:
                raise self.fail("protocol", f"an answer that is not a plain value ({exc})") from None
        if str(message.get("error")) in ESCAPING:
            self.escaped.append(str(message["error"]))
            raise RuntimeError(f"{message['error']} escaped the solution's {name} (that fails the test)")
        raise candidate_error(message)


def candidate_error(message: dict) -> Exception:
    """The solution's exception as one the test can catch: the builtin class of that name if it is an
    ``Exception`` (not ``SystemExit``/``KeyboardInterrupt``, which must not stop the harness), else
    ``RuntimeError``; the worker's kind of error travels on it."""
    name = str(message.get("error", "Exception"))
    cls = getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = RuntimeError
    try:
        exc = cls(f"{name}: {message.get('message', '')}")
    except Exception:  # a builtin exception with required arguments
        exc = RuntimeError(f"{name}: {message.get('message', '')}")
    exc.treepref_kind = message.get("kind") if message.get("kind") in ("memory", "forbidden", "process_limit") else None
    return exc


class Candidate:
    """A solution function as the tests see it."""

    def __init__(self, connection: Connection, name: str):
        self._connection, self.__name__ = connection, name

    def __call__(self, *args, **kwargs):
        return self._connection.call(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<solution function {self.__name__}>"


def mentions(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))


def free_names(statements: list[ast.AST], bound: set) -> list[str]:
    """Names the tests read that neither they, the setup nor the builtins define: the solution's."""
    loaded, stored = [], set()
    for stmt in statements:
        for n in ast.walk(stmt):
            if isinstance(n, ast.Name):
                (loaded.append(n.id) if isinstance(n.ctx, ast.Load) else stored.add(n.id))
            elif isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                stored.add(n.name)
            elif isinstance(n, ast.alias):
                stored.add((n.asname or n.name).split(".")[0])
            elif isinstance(n, ast.arg):
                stored.add(n.arg)
    out = []
    for name in loaded:
        if name not in stored and name not in bound and not hasattr(builtins, name) and name not in out:
            out.append(name)
    return out


def plan(spec: dict, namespace: dict, connection: Connection) -> list[tuple[ast.Module, bool]]:
    """The units to run, in order, each (code, counts as a test).

    ``check`` (HumanEval's layout: a module defining ``check(candidate)``): the module runs as setup, then
    each top-level statement of ``check``'s body is a unit, a test when it holds an ``assert`` that uses the
    candidate (HumanEval's ``assert True`` lines count for nothing); ``check``'s parameter, and the name
    ``entry_point``, are the proxy of the solution's function. Else ``tests``: each statement is a test, and every name they read that nothing else
    defines is a proxy of the solution's function of that name (never a builtin: a solution cannot redefine
    ``sorted`` for the tests)."""
    if spec.get("check"):
        module = ast.parse(spec["check"], "<check>")
        exec(compile(module, "<check>", "exec"), namespace)
        fn = next((s for s in module.body if isinstance(s, ast.FunctionDef) and s.name == "check"), None)
        if fn is None or not fn.args.args:
            raise ValueError("the test module defines no check(candidate)")
        param = fn.args.args[0].arg
        # the tests may name the entry point itself (HumanEval/33 does), meaning the solution's, as when
        # HumanEval runs prompt + completion + tests as one program; the prompt's other helpers stay ours
        namespace[param] = namespace[spec["entry_point"]] = Candidate(connection, spec["entry_point"])
        units = []
        for stmt in fn.body:
            unit = ast.Module([stmt], type_ignores=[])
            counts = (mentions(stmt, param) or mentions(stmt, spec["entry_point"])) and any(
                isinstance(n, ast.Assert) for n in ast.walk(stmt))
            units.append((unit, counts))
        try:
            for unit, _ in units:
                compile(unit, "<check>", "exec")
        except SyntaxError:  # a body that only works as a function (``return``): one test, the whole call
            call = ast.parse(f"check({param})")
            return [(call, True)]
        if not any(counts for _, counts in units):
            units = [(u, True) for u, _ in units]
        return units
    statements = [ast.parse(t, f"<test {i}>") for i, t in enumerate(spec["tests"])]
    for name in free_names(statements, set(namespace)) + ([spec["entry_point"]] if spec.get("entry_point") else []):
        if name in sys.stdlib_module_names and name != spec.get("entry_point"):
            # MBPP's tests use modules the solution imported (math.isclose): ours, not the solution's
            namespace[name] = __import__(name)
        else:
            namespace[name] = Candidate(connection, name)
    return [(s, True) for s in statements]


def undumpable() -> None:
    """A second layer: the worker cannot see this process at all (its own PID namespace), and were it to
    (a worker of our own uid, as a non-root user), a process that is not dumpable cannot be ptraced or have
    its /proc descriptors opened by an unprivileged one."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except Exception:
        pass


def hmac_sha256(key: bytes, message: bytes) -> str:
    """RFC 2104 HMAC-SHA256 (hex) with the builtin SHA-256: importing ``hmac`` loads OpenSSL through
    ``hashlib``, which cost more than the rest of the harness's start-up."""
    try:
        from _sha2 import sha256  # Python 3.12+
    except ImportError:
        try:
            from _sha256 import sha256
        except ImportError:  # an interpreter built without the builtin hashes
            from hashlib import sha256
    if len(key) > 64:
        key = sha256(key).digest()
    key = key.ljust(64, b"\0")
    inner = sha256(bytes(k ^ 0x36 for k in key) + message).digest()
    return sha256(bytes(k ^ 0x5C for k in key) + inner).hexdigest()


def verdict_line(verdict: dict, secret: bytes) -> bytes:
    """The one record the parent accepts: HMAC-SHA256 of the verdict's JSON under the run's secret, a
    space, that JSON, a newline."""
    body = json.dumps(verdict, separators=(",", ":")).encode()
    return hmac_sha256(secret, body).encode() + b" " + body + b"\n"


def harness_main() -> None:
    undumpable()
    spec = json.loads(sys.stdin.read())
    secret = bytes.fromhex(spec.pop("secret"))
    verdict_fd = os.dup(1)
    os.dup2(2, 1)  # what the tests print goes to stderr, never into the verdict
    connection = Connection(spec["requests_fd"], spec["answers_fd"], time.monotonic() + spec["wall_s"],
                            spec.get("answer_bytes") or MAX_LINE)
    n_expected = spec["n_tests"]
    out = {"load": None, "tests": [], "done": False}

    def finish() -> None:
        data = memoryview(verdict_line(out, secret))
        while data:
            data = data[os.write(verdict_fd, data):]
        os._exit(0)

    try:
        connection.send({"code": spec["code"]})
        first = connection.receive()
        if first.get("event") == "loaded":
            out["load"] = {"ok": True}
        elif first.get("event") == "error":
            out["load"] = {"ok": False, "kind": str(first.get("kind", "runtime")), "message": str(first.get("message", ""))[:500]}
        else:
            out["load"] = {"ok": False, "kind": "protocol", "message": "the solution's first message was not a load report"}
    except WorkerGone as exc:
        out["load"] = {"ok": False, "kind": exc.treepref_kind, "message": str(exc)}
    if not out["load"]["ok"]:
        finish()
    namespace = {"__name__": "__tests__", "__builtins__": builtins}
    try:
        if spec.get("setup"):
            exec(compile(spec["setup"], "<setup>", "exec"), namespace)
        units = plan(spec, namespace, connection)
    except Exception as exc:
        out["setup_error"] = describe(exc)
        finish()
    index, broken = 0, None
    for unit, counts in units:
        ok, message, kind = False, "", None
        if broken is not None:
            message = f"not run: {broken}"
        else:
            escaped = len(connection.escaped)
            try:
                exec(compile(unit, "<test>", "exec"), namespace)
                ok = True
            except BaseException as exc:
                message, kind = describe(exc), getattr(exc, "treepref_kind", None)
            if len(connection.escaped) > escaped:  # caught or not, it fails the test
                ok, message = False, f"{connection.escaped[escaped]} escaped the solution"
            if not ok and not counts:
                broken = f"setup failed ({message})"
        if counts:
            out["tests"].append({"index": index, "ok": ok, "message": message[:500], "kind": kind})
            index += 1
    out["n_tests"] = index if spec.get("check") else n_expected
    out["done"] = True
    finish()


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker_main(json.loads(sys.argv[2]))
    else:
        harness_main()
