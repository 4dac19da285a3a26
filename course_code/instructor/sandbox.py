"""Running a submission's code at arm's length: in bubblewrap, with limits, returning data only.

The grader starts two kinds of sandboxed process per submission, each with ``python -m
course_code.instructor.sandbox``:

- ``notebook``: runs the submitted notebook in a fresh kernel, in an empty working folder, then
  hands back how the run went and each graded function, serialised with cloudpickle (the grader
  never loads these: it only passes them on to the next kind of process);
- ``call``: a fresh process that calls each graded function of the submission in turn, loaded
  with its check's reference implementations replaced by tripwires, on the check's inputs, and
  writes one JSON line per input.
  What comes back is data (tensors as raw bytes with a dtype and a shape, numbers, tuples),
  decoded by :func:`decode` under strict limits; the verdict is computed by the grader.

Inside bubblewrap (``bwrap``) a process sees the system's programs and libraries, Python, and the
``course_code`` package, all read-only; its working folder is a small in-memory file system and
is the only place it can write; it has no network, its own process, IPC and host namespaces (every
process it started dies with it), uid 65534 and no capabilities. Limits on memory, file size, CPU
time and process count are set before it starts.
"""

import base64
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import course_code

TOOL = "bwrap"
INSTALL = ("the grader runs every submission in a sandbox made with bubblewrap, which is not installed: install it "
           "(Debian and Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap), or pass --no-sandbox "
           "to grade without one (only for notebooks you trust: every row then says 'not sandboxed')")
INBOX = "/grading"  # the read-only folder holding the submission, inside the sandbox
HOME = "/home/learner"  # the working folder, inside the sandbox
FONTS = "/grading-fonts"  # matplotlib's font cache of the grader's machine, read-only inside the sandbox
PACKAGE = Path(course_code.__file__).resolve().parent
_DTYPES = {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool"}
_MAX_ITEMS = 64  # of a returned tuple or list
_MAX_TEXT = 400  # characters of an error message


@dataclass(frozen=True)
class Limits:
    """What one sandboxed process may use; each limit applies to every process of the submission."""

    memory_mib: int = 2048  # data segment (heap and anonymous memory) of each process
    file_mib: int = 64  # largest file it may write
    disk_mib: int = 256  # size of its working folder
    processes: int = 64
    output_mib: int = 64  # what the grader reads back from it


@dataclass
class Result:
    returncode: int | None
    stdout: bytes
    timed_out: bool
    too_much: bool


def missing() -> str | None:
    """Why bubblewrap cannot be used here (with how to fix it), or None when it works."""
    if shutil.which(TOOL) is None:
        return INSTALL
    probe = subprocess.run([TOOL, *_namespaces(), "--ro-bind", "/", "/", "--", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return (f"bubblewrap is installed but cannot make a sandbox here ({probe.stderr.strip() or probe.returncode}): "
                "it needs user namespaces (sysctl kernel.unprivileged_userns_clone=1), or pass --no-sandbox")
    return None


def _namespaces() -> list[str]:
    return ["--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL",
            "--die-with-parent", "--new-session"]


def _bwrap(inbox: Path, limits: Limits) -> list[str]:
    """The bubblewrap command line: a read-only view of the system, Python and the package, one writable folder."""
    args = [TOOL, *_namespaces(), "--clearenv", "--proc", "/proc", "--dev", "/dev"]
    for top in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / top
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for path in ("/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts",
                 "/sys/devices/system/cpu"):
        args += ["--ro-bind-try", path, path]
    for prefix in dict.fromkeys((sys.base_prefix, sys.prefix, str(PACKAGE))):
        args += ["--ro-bind", prefix, prefix]
    for folder in _data_folders():
        args += ["--ro-bind-try", str(folder), str(folder)]
    args += ["--ro-bind-try", _font_cache(), FONTS]
    args += ["--ro-bind", str(inbox), INBOX, "--size", str(limits.disk_mib << 20), "--tmpfs", HOME,
             "--remount-ro", "/", "--chdir", HOME]
    for key, value in {**_environment(HOME), "COURSE_GRADING_INBOX": INBOX, "COURSE_GRADING_FONTS": FONTS}.items():
        args += ["--setenv", key, value]
    return args + ["--"]


def _environment(home: str) -> dict[str, str]:
    """A submission's environment: nothing of the grader's but the dataset choice (see course_code.data)."""
    env = {"HOME": home, "TMPDIR": home, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           "PYTHONPATH": str(PACKAGE.parent), "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8",
           "MPLBACKEND": "agg", "MPLCONFIGDIR": f"{home}/.matplotlib", "OMP_NUM_THREADS": "1",
           "COURSE_PROGRESS": "0", "COURSE_DATA_HOME": str(_data_folders()[0])}
    env.update({key: os.environ[key] for key in ("COURSE_DATASET", "COURSE_MNIST") if key in os.environ})
    return env


def _font_cache() -> str:
    """The folder of matplotlib's font list on this machine, built here if it is missing.

    A sandbox starts with an empty home, so without a copy of this list matplotlib would rebuild it
    (about half a second) in every sandboxed process that plots.
    """
    import matplotlib
    from matplotlib import font_manager  # noqa: F401  (importing it writes the list when it is missing)

    return matplotlib.get_cachedir()


def _seed_font_cache() -> None:
    """Inside the sandbox, before anything plots: copy the grader's font list into the writable MPLCONFIGDIR."""
    source, target = os.environ.get("COURSE_GRADING_FONTS"), os.environ.get("MPLCONFIGDIR")
    if not source or not target or not os.path.isdir(source):
        return
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(source):
        if name.startswith("fontlist") and name.endswith(".json"):
            shutil.copyfile(os.path.join(source, name), os.path.join(target, name))


def _data_folders() -> list[Path]:
    """The folders a chapter may read data from (MNIST's cache and COURSE_MNIST), visible read-only in the sandbox."""
    from course_code import data

    folders = [data.MNIST_DOWNLOAD_ROOT.expanduser().resolve()]
    if os.environ.get("COURSE_MNIST", "download") != "download":
        folders.append(Path(os.environ["COURSE_MNIST"]).expanduser().resolve())
    return folders


class _Cgroup:
    """A pids cgroup for one run, when the grader may make one (as root): a process limit that holds for root too."""

    def __init__(self, limit: int):
        self.path = None
        for base in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
            candidate = base / f"course-grading-{os.getpid()}-{time.monotonic_ns()}"
            try:
                candidate.mkdir()
            except OSError:
                continue
            try:
                (candidate / "pids.max").write_text(str(limit))
                self.path = candidate
                return
            except OSError:
                candidate.rmdir()

    def join(self) -> None:
        if self.path is not None:
            (self.path / "cgroup.procs").write_text("0")

    def close(self) -> None:
        """Kill whatever is still in the cgroup and remove it."""
        if self.path is None:
            return
        for _ in range(50):
            pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                self.path.rmdir()
                return
            time.sleep(0.05)


def run(command: list[str], stdin: bytes, inbox: Path, seconds: float, limits: Limits, sandboxed: bool) -> Result:
    """Run ``python -m course_code.instructor.sandbox <command>`` on ``stdin`` for at most ``seconds``; read its stdout.

    ``inbox`` (the submission's folder) is read-only in the sandbox. Without the sandbox, the same
    process runs with the same limits in a scratch folder, in a process group killed at the end.
    """
    cgroup = _Cgroup(limits.processes) if os.geteuid() == 0 else None
    processes = limits.processes if os.geteuid() == 0 else limits.processes + _processes_of_this_user()
    cpu = math.ceil(seconds) + 10

    def limit() -> None:  # in the child, before it starts the sandbox
        for which, value in ((resource.RLIMIT_DATA, limits.memory_mib << 20), (resource.RLIMIT_FSIZE, limits.file_mib << 20),
                             (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_NPROC, processes), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(which, (value, value))
        if cgroup is not None:
            cgroup.join()

    python = [sys.executable, "-m", "course_code.instructor.sandbox", *command]
    with contextlib.ExitStack() as stack:
        if sandboxed:
            argv, cwd, env = _bwrap(inbox, limits) + python, None, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            request_inbox = INBOX
        else:
            cwd = stack.enter_context(_scratch())
            argv, env, request_inbox = python, {**_environment(cwd), "COURSE_GRADING_FONTS": _font_cache()}, str(inbox)
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   cwd=cwd, env={**env, "COURSE_GRADING_INBOX": request_inbox}, preexec_fn=limit,
                                   start_new_session=True)
        chunks: list[bytes] = []
        cap = limits.output_mib << 20
        reader = threading.Thread(target=_read, args=(process.stdout, chunks, cap), daemon=True)
        writer = threading.Thread(target=_write, args=(process.stdin, stdin), daemon=True)
        reader.start(), writer.start()
        timed_out = False
        deadline = time.monotonic() + seconds
        while process.poll() is None and reader.is_alive():
            if time.monotonic() > deadline:
                timed_out = True
                break
            reader.join(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if cgroup is not None:
            cgroup.close()
        reader.join(5)
        output = b"".join(chunks)
    return Result(process.returncode, output[:cap], timed_out, len(output) > cap)


@contextlib.contextmanager
def _scratch():
    import tempfile

    with tempfile.TemporaryDirectory(prefix="grading-work-") as folder:
        yield folder


def _processes_of_this_user() -> int:
    uid = os.getuid()
    count = 0
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            count += entry.name.isdigit() and entry.stat().st_uid == uid
    return count


def _read(stream, chunks: list[bytes], cap: int) -> None:
    total = 0
    while total <= cap:
        chunk = stream.read1(1 << 16)
        if not chunk:
            return
        chunks.append(chunk)
        total += len(chunk)


def _write(stream, data: bytes) -> None:
    with contextlib.suppress(OSError):
        stream.write(data)
        stream.close()


# --- data that may come back from a sandbox ------------------------------------------------------

def encode(value, depth: int = 0):
    """A returned value as JSON-ready data: tensors as bytes, numbers, None, tuples and lists; anything else by kind."""
    import torch

    from course_code import checks

    if isinstance(value, torch.Tensor) and value.layout == torch.strided and str(value.dtype)[6:] in _DTYPES:
        array = value.detach().cpu().contiguous().numpy()
        return {"tensor": base64.b64encode(array.tobytes()).decode(), "dtype": str(value.dtype)[6:], "shape": list(value.shape)}
    if isinstance(value, bool) or value is None:
        return {"constant": value}
    if isinstance(value, int) and abs(value) < 2**63:
        return {"int": value}
    if isinstance(value, float):
        return {"float": value}
    if isinstance(value, (tuple, list)) and len(value) <= _MAX_ITEMS and depth < 4:
        return {type(value).__name__: [encode(v, depth + 1) for v in value]}
    return {"foreign": checks._kind(value)}


def decode(data):
    """The value :func:`encode` described, checked field by field; ValueError when it does not describe one."""
    import torch

    from course_code import checks

    if not isinstance(data, dict) or len(data) not in (1, 3):
        raise ValueError("not an encoded value")
    if "tensor" in data:
        dtype, shape = data.get("dtype"), data.get("shape")
        if dtype not in _DTYPES or not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError("a tensor without a valid dtype and shape")
        raw = base64.b64decode(data["tensor"], validate=True)
        dtype = getattr(torch, dtype)
        if len(raw) != math.prod(shape) * torch.empty(0, dtype=dtype).element_size():
            raise ValueError("a tensor whose bytes do not match its shape")
        return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape) if raw else torch.empty(shape, dtype=dtype)
    (kind, value), = data.items()
    if kind == "constant" and value in (None, True, False):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in ("tuple", "list") and isinstance(value, list) and len(value) <= _MAX_ITEMS:
        items = [decode(v) for v in value]
        return tuple(items) if kind == "tuple" else items
    if kind == "foreign" and isinstance(value, str):
        return checks.Foreign(value[:80])
    raise ValueError(f"not an encoded value: {kind!r}")


def encode_outcome(outcome: tuple) -> dict:
    kind, *details = outcome
    if kind == "returned":
        return {"returned": encode(details[0])}
    if kind == "raised":
        return {"raised": [details[0][:80], details[1][:_MAX_TEXT]]}
    if kind == "not attempted":
        return {"not attempted": str(details[0])[:_MAX_TEXT]}
    if kind == "reference":
        return {"reference": details[0][:200]}
    return {"did not finish": True}


def decode_job_outcome(line: bytes) -> tuple[int, tuple]:
    """The job number and one outcome of :func:`course_code.checks.run_case` from a line a ``call`` process wrote."""
    data = json.loads(line)
    if not isinstance(data, list) or len(data) != 2 or not isinstance(data[0], int) or isinstance(data[0], bool):
        raise ValueError("not a job's outcome")
    return data[0], decode_outcome(data[1])


def decode_outcome(data) -> tuple:
    """One outcome of :func:`course_code.checks.run_case`, as :func:`encode_outcome` described it."""
    if not isinstance(data, dict) or len(data) != 1:
        raise ValueError("not an outcome")
    (kind, value), = data.items()
    if kind == "returned":
        return ("returned", decode(value))
    if kind == "raised" and isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return ("raised", value[0][:80], value[1][:_MAX_TEXT])
    if kind == "not attempted" and isinstance(value, str):
        return ("not attempted", NotImplementedError(value[:_MAX_TEXT]))
    if kind == "reference" and isinstance(value, str):
        return ("reference", value[:200])
    if kind == "did not finish":
        return ("did not finish",)
    raise ValueError(f"not an outcome: {kind!r}")


# --- inside the sandbox --------------------------------------------------------------------------

_EXTRACT = """\
import base64 as _b64, cloudpickle as _cp, json as _json
_found = {}
for _name in %r:
    try:
        _found[_name] = _b64.b64encode(_cp.dumps(globals()[_name])).decode()
    except Exception:
        pass
print(%r + _json.dumps(_found))
"""
_MARK = "course-grading-functions:"


def _notebook(request: dict, out) -> None:
    """Run the submission (a copy in the working folder) and report its status and its graded functions."""
    import nbformat

    from course_code.instructor import grading

    source = Path(os.environ["COURSE_GRADING_INBOX"]) / request["notebook"]
    copy = Path.cwd() / request["notebook"]
    shutil.copyfile(source, copy)
    nb = nbformat.read(copy, as_version=4)
    extract = _EXTRACT % (list(request["functions"]), _MARK)
    status, message, printed = grading.execute(nb, Path.cwd(), request["timeout"], extract)
    functions = {}
    for line in printed.splitlines():
        if line.startswith(_MARK):
            functions = json.loads(line[len(_MARK):])
    out.write(json.dumps({"status": status, "message": message, "functions": functions}))


def _call(request: dict, out) -> None:
    """Call each job's function on its inputs, one job after the other; one JSON line per input: [job, outcome].

    A job's function is loaded, and called, with its own check's references replaced by tripwires,
    each input under its own time limit (:func:`course_code.checks.run_case`), exactly as it would be
    in a process of its own; a job stops at its first outcome that is not a returned value.
    """
    import cloudpickle
    import torch

    from course_code import checks

    torch.set_num_threads(1)
    torch.set_default_dtype(getattr(torch, request["dtype"]))
    for number, job in enumerate(request["jobs"]):
        references = job["references"]
        with checks.tripwire(references):
            try:
                fn = cloudpickle.loads(job["function"])
            except BaseException as error:  # the learner's code runs when its function is loaded
                _report(out, number, ("raised", type(error).__name__, f"while loading the function: {error}"))
                continue
        for case in job["cases"]:
            outcome = checks.run_case(fn, case, references, job["adapt"], job["seconds"])
            _report(out, number, outcome)
            if outcome[0] != "returned":
                break


def _report(out, number: int, outcome: tuple) -> None:
    try:
        line = json.dumps([number, encode_outcome(outcome)])
    except Exception:  # a value that looks like data but cannot be read as such (a tensor on another device, …)
        line = json.dumps([number, {"returned": {"foreign": "a value that cannot be read back"}}])
    out.write(line + "\n")
    out.flush()


def main() -> None:
    """Entry point inside the sandbox: ``notebook`` or ``call``; the request arrives on stdin, the report leaves on stdout."""
    command = sys.argv[1]
    _seed_font_cache()
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # what the learner's code prints does not reach the report
    sys.stdout = open(1, "w", closefd=False)
    data = sys.stdin.buffer.read()
    if command == "notebook":
        _notebook(json.loads(data), out)
    else:
        import cloudpickle

        _call(cloudpickle.loads(data), out)
    out.flush()


if __name__ == "__main__":
    main()
