"""Runs a Cortex-style PythonPredictor for a batchmill worker.

The worker starts `python -u harness.py` in the pipeline's directory and
speaks over stdin/stdout in frames: a 4-byte big-endian length, then that
many bytes of UTF-8 JSON. Requests:

  {"op": "init", "path": ..., "config": {...}, "job_spec": {...}}
  {"op": "predict", "payload": [...], "batch_id": "..."}
  {"op": "on_job_complete", "metrics": {...}}

Each gets {"ok": true, ...} or {"ok": false, "error": "<traceback>",
"out_of_memory": <whether it was a MemoryError>}. The
predictor's own prints go to stderr (file descriptor 1 is redirected), which
the worker forwards to the job's log. The process exits at end of input.
"""

import importlib.util
import inspect
import json
import os
import struct
import sys
import threading
import time
import traceback


def open_protocol():
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    return requests, replies


def read_exact(stream, n):
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(stream):
    header = read_exact(stream, 4)
    if header is None:
        return None
    (length,) = struct.unpack(">I", header)
    body = read_exact(stream, length)
    if body is None:
        return None
    return json.loads(body.decode("utf-8"))


def write_frame(stream, message):
    body = json.dumps(message, allow_nan=False).encode("utf-8")
    stream.write(struct.pack(">I", len(body)) + body)
    stream.flush()


def call(fn, available):
    """Calls fn with the keyword arguments its signature names, as Cortex does."""
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return fn(**available)
    return fn(**{name: value for name, value in available.items() if name in params})


def load_class(path):
    spec = importlib.util.spec_from_file_location("predictor", os.path.abspath(path))
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["predictor"] = module
    spec.loader.exec_module(module)
    cls = getattr(module, "PythonPredictor", None)
    if not inspect.isclass(cls):
        raise RuntimeError(f"{path} defines no class PythonPredictor")
    if not callable(getattr(cls, "predict", None)):
        raise RuntimeError(f"PythonPredictor in {path} has no predict method")
    return cls


def exit_with_parent():
    """Exits when the worker that started this process dies, even while the
    predictor is busy, so no orphan finishes work nobody will record."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="batchmill-parent-watch", daemon=True).start()


# Written to stderr after everything a call printed and before its reply, with
# the count of replies so far: the worker tags the lines before it with the
# call's batch.
END_MARK = "\x1ebatchmill-end "


def main():
    exit_with_parent()
    requests, replies = open_protocol()
    predictor = None
    answered = 0
    while True:
        message = read_frame(requests)
        if message is None:
            return
        op = message.get("op")
        try:
            if op == "init":
                cls = load_class(message["path"])
                predictor = call(cls, {"config": message["config"], "job_spec": message["job_spec"]})
                hook = getattr(predictor, "on_job_complete", None)
                reply = {"ok": True, "has_on_job_complete": callable(hook)}
            elif op == "predict":
                result = call(predictor.predict, {"payload": message["payload"], "batch_id": message["batch_id"]})
                try:
                    json.dumps(result, allow_nan=False)
                except (TypeError, ValueError) as e:
                    raise TypeError(f"predict returned a value that is not JSON: {e}") from None
                reply = {"ok": True, "result": result}
            elif op == "on_job_complete":
                hook = getattr(predictor, "on_job_complete", None)
                if callable(hook):
                    call(hook, {"metrics": message.get("metrics", {})})
                reply = {"ok": True}
            else:
                reply = {"ok": False, "error": f"unknown request {op!r}"}
        except Exception as e:
            reply = {"ok": False, "error": traceback.format_exc(), "out_of_memory": isinstance(e, MemoryError)}
        answered += 1
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(2, f"{END_MARK}{answered}\n".encode())
        write_frame(replies, reply)


if __name__ == "__main__":
    main()
