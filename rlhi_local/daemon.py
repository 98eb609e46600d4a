"""The daemon process: private directories, one instance per socket, the model, the server.

Start-up order is chosen so a failure says what is wrong before anything is half-done: dirs
(0700) → the per-socket lock (a second daemon is refused) → model (exit with the file and the
fix) → store → socket (0600, a stale one replaced) → serve. Shutdown removes the socket and the
pid file. Nothing here listens beyond the Unix socket unless loopback TCP is configured.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import secrets
import signal
import socket
import stat
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .config import Config, data_dir, runtime_dir, socket_path
from .errors import DaemonError, DaemonRunningError

if TYPE_CHECKING:
    from .engine import RequestQueue
    from .models import ModelSpec
    from .scheduler import RewardJobs
    from .store import Store

__all__ = ["Daemon", "ensure_private_dir", "pid_path"]

log = logging.getLogger(__name__)

PREWARM_S = 60.0
"""The longest a promotion waits for the user's conversation to be warmed under the new adapter:
under back-to-back requests a 450-token one took 24-29 s (one step between each two answers)."""

MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes including the final NUL


def pid_path(config: Config) -> Path:
    return Path(str(socket_path(config)) + ".pid")


def ensure_private_dir(path: Path) -> None:
    """Create `path` with mode 0700, or repair a looser mode (saying so). A directory owned by
    another user is refused: its owner could read what we keep there, or swap the files."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise DaemonError(
            f"{path} belongs to uid {info.st_uid}, but this daemon runs as uid {os.geteuid()}: it keeps "
            f"private data there and will not use a directory another user owns. Set RLHI_HOME to a "
            f"directory of your own, or, if it is yours, `chown -R {os.geteuid()} {path}`."
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        log.warning("repairing permissions of %s: %o -> 700 (it held private data)", path, mode)
        os.chmod(path, 0o700)


def _load_token(config: Config) -> str:
    if config.server.token:
        return config.server.token
    path = data_dir() / "token"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token


def _check_adapters(store: "Store", queue: "RequestQueue", spec: "ModelSpec") -> None:
    """Load every user's active adapter before serving, so one that llama.cpp cannot use (a
    truncated or deleted file) is found and logged with its file now, and its user is answered
    by the base model from the first request on, instead of that user's chats failing."""
    from .training import adapter_file

    for adapter in store.active_adapters():
        if adapter.base_fingerprint == spec.fingerprint:  # another base's: /health says so
            queue.probe_adapter(adapter_file(adapter))


def _reward_jobs(store: "Store", config: Config) -> "RewardJobs | None":
    """The reward-model half of the schedule, or None where its parts (torch, the sentence
    encoder wheel: the `train` extra) are not installed; the schedule's other jobs still run."""
    from .scheduler import RewardJobs

    return RewardJobs.create(store, config)


class Daemon:
    """Owns the sockets, the lock, the model, the store and the uvicorn server.

    Example (what `rlhi serve` does):

        daemon = Daemon(load_config())
        daemon.start()   # raises RlhiError with a clear message on any problem
        daemon.run()     # blocks until SIGTERM/SIGINT or `request_stop()`
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.socket_path = socket_path(config)
        self.token: str | None = None
        self._lock_file: IO[str] | None = None
        self._sockets: list[socket.socket] = []
        self._server: object | None = None
        self._state: object | None = None
        self.started = threading.Event()

    # -- start-up ----------------------------------------------------------------------------

    def start(self) -> None:
        """Prepare everything to serve; raises `RlhiError` (and cleans up) on failure."""
        os.umask(0o077)
        from .models import OFFLINE_ENV

        os.environ.update(OFFLINE_ENV)  # inherited by the trainer children too
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        from .api import AppState, create_app
        from .api.warming import Warmer
        from .engine import Engine, RequestQueue
        from .mining import Miner
        from .models import resolve_model
        from .scheduler import Scheduler
        from .store import Store
        from .training import Trainings

        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:
            raise DaemonError(
                f"The socket path {self.socket_path} is {len(os.fsencode(self.socket_path))} bytes; "
                f"Unix sockets allow {MAX_SOCKET_PATH}. Set server.socket to a shorter path."
            )
        ensure_private_dir(data_dir())
        ensure_private_dir(runtime_dir())
        # A socket configured elsewhere (say /tmp) keeps its directory's mode: the socket's own
        # 0600 mode is what guards it.
        self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._acquire_lock()
        spec = resolve_model(self.config)
        store = Store(data_dir() / "rlhi.db")
        try:
            engine = Engine(spec, self.config.model)
        except BaseException:
            store.close()
            raise
        queue = RequestQueue(engine, self.config.server.max_queue)
        _check_adapters(store, queue, spec)
        miner = Miner(store, queue, self.config.learning, detector=self.config.detector)
        trainings = Trainings(store, self.config, spec, wait_quiet=miner.quiet_for_training, paused=miner.paused)
        scheduler = Scheduler(store, self.config, miner=miner, trainings=trainings, queue=queue, spec=spec,
                              reward_jobs=_reward_jobs(store, self.config))
        self._state = AppState(
            config=self.config, spec=spec, engine=engine, queue=queue, store=store, miner=miner,
            trainings=trainings, scheduler=scheduler,
        )
        self._state.warmer = Warmer(self._state)
        self._bind_unix()
        if self.config.server.tcp_port:
            self.token = _load_token(self.config)
            self._bind_tcp()
        self._app = create_app(self._state, token=self.token)
        pid_path(self.config).write_text(f"{os.getpid()}\n", encoding="utf-8")
        log.info("daemon ready socket=%s model=%s pid=%d", self.socket_path, spec.id, os.getpid())
        if miner.paused():
            log.info("%s", miner.paused())

    def _acquire_lock(self) -> None:
        lock_path = Path(str(self.socket_path) + ".lock")
        f = open(lock_path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                pid = pid_path(self.config).read_text().strip() if pid_path(self.config).exists() else "?"
                raise DaemonRunningError(
                    f"Another rlhi daemon (pid {pid}) already serves {self.socket_path}. "
                    f"Use it (`rlhi status`), or stop it first (`rlhi stop`)."
                ) from exc
            raise
        self._lock_file = f

    def _bind_unix(self) -> None:
        path = self.socket_path
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise DaemonError(
                    f"{path} exists and is not a socket. Move it away or set server.socket."
                )
            # We hold the lock, so no live daemon owns this socket: it is stale (a crash).
            log.warning("replacing stale socket %s", path)
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise DaemonError(f"Cannot listen on {path}: {exc}.") from exc
        self._sockets.append(sock)

    def _bind_tcp(self) -> None:
        host, port = self.config.server.tcp_host, self.config.server.tcp_port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise DaemonError(f"Cannot listen on {host}:{port}: {exc}. Choose another server.tcp_port.") from exc
        self._sockets.append(sock)
        log.info("also listening on tcp %s:%d (bearer token required)", host, port)

    # -- serving -----------------------------------------------------------------------------

    async def serve(self) -> None:
        import uvicorn

        config = uvicorn.Config(
            self._app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            ws="none",
        )
        server = uvicorn.Server(config)
        self._server = server
        loop = asyncio.get_running_loop()
        if self._state is not None and self._state.warmer is not None:  # type: ignore[attr-defined]
            warmer = self._state.warmer  # type: ignore[attr-defined]
            # An adapter about to be promoted (the training thread waits, at most PREWARM_S) or a
            # mined persona: warm the user's conversation for it.
            def prewarm(user: str, adapter: Path) -> None:
                if not loop.is_running():
                    return
                future = asyncio.run_coroutine_threadsafe(warmer.prewarm(user, adapter), loop)
                deadline = time.monotonic() + PREWARM_S
                while True:
                    try:
                        future.result(0.2)
                        return
                    except TimeoutError:
                        if loop.is_running() and time.monotonic() < deadline:
                            continue
                        future.cancel()  # stopping, or too long: promote without it
                        log.warning("warming user=%s's conversation did not finish: promoting without it", user)
                        return

            self._state.trainings.prewarm = prewarm  # type: ignore[attr-defined]
            self._state.miner.persona_changed = warmer.changed  # type: ignore[attr-defined]
        if self._state is not None and self._state.scheduler is not None:  # type: ignore[attr-defined]
            self._state.scheduler.start()  # type: ignore[attr-defined]
        loop.call_soon(self.started.set)
        try:
            await server.serve(sockets=self._sockets)
        finally:
            # On the loop it runs on, before the loop closes: no job fires during shutdown.
            if self._state is not None and self._state.scheduler is not None:  # type: ignore[attr-defined]
                self._state.scheduler.shutdown()  # type: ignore[attr-defined]

    def run(self) -> None:
        """Serve until stopped (SIGTERM, SIGINT or `request_stop`), then release everything."""
        previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            # uvicorn handles these signals while serving and re-raises them when it returns;
            # a no-op handler then lets us remove the socket and pid file before exiting 0.
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: None)
        try:
            asyncio.run(self.serve())
        finally:
            self.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]

    def request_stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True  # type: ignore[attr-defined]

    def close(self) -> None:
        state = self._state
        self._state = None
        if state is not None:
            if state.scheduler is not None:  # type: ignore[attr-defined]
                state.scheduler.shutdown()  # type: ignore[attr-defined]
            state.trainings.close()  # type: ignore[attr-defined]
            state.queue.close()  # type: ignore[attr-defined]
            state.engine.close()  # type: ignore[attr-defined]
            state.store.close()  # type: ignore[attr-defined]
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        if self._lock_file is not None:
            for path in (self.socket_path, pid_path(self.config)):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
            self._lock_file.close()
            self._lock_file = None
