"""Records, and blocks, every outbound network attempt of a Python process and of its children.

Loaded by Python at start-up because `tests/egress` is first on PYTHONPATH (`tests.egress.egress_env`);
children that keep PYTHONPATH, as the daemon's trainer children do, load it too. Active only when
RLHI_EGRESS_LOG names a file: each process says it is recorded (one `recorder.start` line), and
an audit hook (PEP 578) appends one JSON line per attempt to connect to, send to or resolve an
address that is not a Unix socket ({"pid", "event", "address", "argv"}; O_APPEND, so several
processes share the file); unless RLHI_EGRESS_BLOCK=0 the attempt then fails as refused, so
nothing leaves and nothing hangs on a network timeout.

It sees what goes through Python's `socket` module (requests, httpx, urllib, huggingface_hub,
asyncio); a native library opening sockets by itself would bypass it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

_ADDRESSED = {"socket.connect", "socket.sendto", "socket.sendmsg"}
_RESOLVING = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr",
              "socket.getnameinfo"}


def _install(path: str, block: bool) -> None:
    def record(event: str, address: Any) -> None:
        argv = getattr(sys, "orig_argv", sys.argv)  # the command line as started (`-m trainers JOB`)
        line = json.dumps({"pid": os.getpid(), "event": event, "address": repr(address)[:300],
                           "argv": [str(a)[:200] for a in argv[:4]]}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in _ADDRESSED:
            sock, address = args[0], args[1]
            if address is None or getattr(sock, "family", None) == socket.AF_UNIX:
                return  # a connected socket's sendmsg, or the daemon's own Unix socket
            record(event, address)
            if block:
                raise ConnectionRefusedError(111, f"outbound connection to {address!r} blocked by tests/egress")
        elif event in _RESOLVING:
            record(event, args[:2])
            if block:
                raise socket.gaierror(socket.EAI_NONAME, f"name lookup of {args[0]!r} blocked by tests/egress")

    sys.addaudithook(hook)
    record("recorder.start", None)


def _chain() -> None:
    """Run the sitecustomize this one shadows, if the interpreter has one."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None and spec.origin and \
            os.path.abspath(spec.origin) != os.path.abspath(__file__):
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if os.environ.get("RLHI_EGRESS_LOG"):
    _install(os.environ["RLHI_EGRESS_LOG"], os.environ.get("RLHI_EGRESS_BLOCK", "1") != "0")
_chain()
