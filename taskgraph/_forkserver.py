"""The fork server: a copy of the caller, made when a process pool is made,
that forks each worker of the pool on request.

Imports ``_worker`` and ``_threads`` only.

Why: natcap taskgraph (like ``multiprocessing`` on Linux) forks each worker
from the calling process, so workers start in milliseconds with every module
the caller imported, and a script without ``if __name__ == "__main__":`` is
not run again in them. But by then the caller runs threads (here: the
scheduler, the pool's manager, SQLite's callers), and a process forked while
another thread holds a lock inherits the lock held forever. So the caller is
forked once, when the pool is created and before any engine thread exists;
that copy (this server) runs no thread of its own and forks every worker, so
no worker is ever forked from a process that runs engine threads. Workers see
the modules imported before the pool was made; a module imported later is
imported by the worker when it unpickles the first task that needs it.

Who writes and who reads what::

    pool's manager thread ──request + socket fd (SCM_RIGHTS)──> server
    server ──fork──> worker (runs taskgraph._worker.worker_main on that socket)
    server ──'S' pid | 'E' errno | 'X' pid exitcode──> pool's manager thread

The server is the workers' parent: it reaps each one (``SIGCHLD``) and sends
its exit status, so the pool can say "died with signal SIGKILL" about a
process it did not start itself. The server and its workers leave when the
pool's process dies (a pidfd on Linux, a check each second elsewhere), and
the server leaves when the pool closes its socket.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.process
import multiprocessing.util
import os
import pickle
import select
import signal
import socket
import struct
import threading
import time
import traceback
import weakref
from multiprocessing.connection import Connection
from typing import Any

from taskgraph import _threads
from taskgraph._worker import alive, flush_std_streams, worker_main

_HEADER = struct.Struct("!I")
_RECORD = struct.Struct("!cii")
_STARTED, _FAILED, _EXITED = b"S", b"E", b"X"
_WORKER, _SERVER = "worker", "server"
_START_TIMEOUT_S = 10.0
_ORPHAN_POLL_S = 1.0

#: Live servers made in this process, so a pool made while engine threads run
#: can ask one of them for a server of its own (see :func:`start`).
_LIVE: weakref.WeakSet[ForkServer] = weakref.WeakSet()


class ForkServerError(OSError):
    """The fork server could not start a process (or is gone)."""


def available() -> bool:
    """Whether this platform can fork (POSIX with ``os.fork``)."""
    return hasattr(os, "fork") and hasattr(socket, "send_fds") and hasattr(socket, "AF_UNIX")


def start() -> ForkServer | None:
    """A fork server for a new pool, or None when none can be made safely now.

    Forked from this process when no engine thread runs here. Otherwise
    (another graph of this process is running) it is forked by a live server
    of this process instead, a copy of this process as it was when that
    server was made. None when neither is possible: the caller then starts
    its workers with ``spawn``.
    """
    _threads.await_short_lived(0.1)
    if not _threads.running():
        server = ForkServer(_fork_here())
    else:
        for other in list(_LIVE):
            try:
                server = ForkServer(other.fork_server())
            except (OSError, ForkServerError):
                continue
            break
        else:
            return None
    _LIVE.add(server)
    return server


def _fork_here() -> tuple[socket.socket, int, bool]:
    """Fork this process into a server; returns its socket, pid, and True
    (the server is our child)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pool_pid = os.getpid()
    flush_std_streams()
    # Ctrl-C is held back while forking: a SIGINT whose Python handler has not run
    # yet is inherited as pending by the child, which would raise KeyboardInterrupt
    # in its after-fork hooks before it ignores SIGINT. The caller gets it once
    # the fork is done; the server starts with it blocked and ignores it first.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if hasattr(signal, "pthread_sigmask") else None
    try:
        pid = os.fork()
    except BaseException:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        ours.close()
        theirs.close()
        raise
    if pid != 0 and mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if pid == 0:  # the server
        code = 1
        try:
            ours.close()
            _after_fork()
            code = _serve(theirs, pool_pid)
        except BaseException:
            with contextlib.suppress(Exception):
                traceback.print_exc()
        finally:
            os._exit(code)
    theirs.close()
    return ours, pid, True


def _after_fork() -> None:
    """What multiprocessing does in a child it forks, so that objects of the
    caller's that rely on it (its locks, queues, managers) work in workers as
    they do under natcap, whose workers multiprocessing forks."""
    children = getattr(multiprocessing.process, "_children", None)
    if isinstance(children, set):
        children.clear()
    run_after_forkers = getattr(multiprocessing.util, "_run_after_forkers", None)
    if callable(run_after_forkers):
        run_after_forkers()


class ForkServer:
    """The pool's side of one fork server: ask for workers, read their exits.

    All but :meth:`fork_server` are called from the pool's manager thread
    only; :meth:`fork_server` (another pool asking for a server of its own)
    may come from any thread, so sending holds a lock.
    """

    def __init__(self, made: tuple[socket.socket, int, bool]) -> None:
        self._sock, self.pid, self._our_child = made
        self._send_lock = threading.Lock()
        self._buffer = b""
        self._early_exits: list[tuple[int, int]] = []
        self._sequence = 0
        self.gone = False

    @property
    def pending(self) -> bool:
        """Whether exits were read (while a worker started) but not yet taken."""
        return bool(self._early_exits)

    def fileno(self) -> int:
        """For ``multiprocessing.connection.wait``: readable when exits are reported."""
        return self._sock.fileno()

    def _request(self, kind: str, fd: int, options: dict[str, Any]) -> None:
        data = pickle.dumps((kind, options), protocol=pickle.HIGHEST_PROTOCOL)
        message = _HEADER.pack(len(data)) + data
        with self._send_lock:
            sent = socket.send_fds(self._sock, [message], [fd])
            if sent < len(message):
                self._sock.sendall(message[sent:])

    def _request_with_socket(self, kind: str, options: dict[str, Any]) -> socket.socket:
        """Send a request with one end of a new socket pair; returns the other end."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._request(kind, theirs.fileno(), options)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    def start_worker(self, options: dict[str, Any]) -> tuple[int, Connection]:
        """Fork a worker that runs :func:`worker_main` with ``options``;
        returns its pid and our end of its pipe.

        Raises:
            OSError: a socket could not be made (too many open files, ...),
                or the server could not fork (its errno), or it is gone.
        """
        if self.gone:
            raise ForkServerError(f"the fork server (pid {self.pid}) that starts worker processes has exited")
        self._sequence += 1
        ours = self._request_with_socket(_WORKER, dict(options, sequence=self._sequence))
        try:
            pid = self._wait_started(self._sequence)
        except BaseException:
            ours.close()
            raise
        return pid, Connection(ours.detach())

    def fork_server(self) -> tuple[socket.socket, int, bool]:
        """Ask this server for a server of another pool (a copy of it)."""
        if self.gone:
            raise ForkServerError("gone")
        ours = self._request_with_socket(_SERVER, {"pool_pid": os.getpid()})
        # The new server says who it is on its own socket.
        ours.settimeout(_START_TIMEOUT_S)
        try:
            kind, value, _ = _RECORD.unpack(_recv_exact(ours, _RECORD.size))
        except (OSError, EOFError, struct.error) as error:
            ours.close()
            raise ForkServerError(f"no answer from a new fork server: {error}") from error
        ours.settimeout(None)
        if kind != _STARTED:
            ours.close()
            raise ForkServerError(f"a fork server could not be forked: {os.strerror(value)}")
        return ours, value, False

    def _wait_started(self, sequence: int) -> int:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            for kind, value, code in self._read_records(max(0.0, deadline - time.monotonic())):
                if kind == _EXITED:
                    self._early_exits.append((value, code))
                elif code != sequence:
                    # The answer to an earlier request given up after its time-out: a
                    # worker nobody waits for is stopped (its exit is reported as usual).
                    if kind == _STARTED:
                        with contextlib.suppress(OSError):
                            os.kill(value, signal.SIGKILL)
                elif kind == _STARTED:
                    return value
                else:
                    raise OSError(value, f"the fork server could not fork a worker: {os.strerror(value)}")
            if self.gone:
                raise ForkServerError(f"the fork server (pid {self.pid}) that starts worker processes has exited")
            if time.monotonic() >= deadline:
                raise ForkServerError(
                    f"the fork server (pid {self.pid}) did not start a worker within {_START_TIMEOUT_S:.0f} s"
                )

    def _read_records(self, timeout: float) -> list[tuple[bytes, int, int]]:
        """Records available within ``timeout`` (all that are there)."""
        if self.gone:
            return []
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            return []
        try:
            data = self._sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.gone = True
            return []
        self._buffer += data
        records = []
        while len(self._buffer) >= _RECORD.size:
            records.append(_RECORD.unpack(self._buffer[:_RECORD.size]))
            self._buffer = self._buffer[_RECORD.size:]
        return records

    def exits(self) -> list[tuple[int, int]]:
        """(pid, exit code) of workers that exited since the last call; call
        it when :meth:`fileno` is readable. After it, :attr:`gone` says
        whether the server itself has exited."""
        found, self._early_exits = self._early_exits, []
        found += [(value, code) for kind, value, code in self._read_records(0.0) if kind == _EXITED]
        return found

    def close(self) -> None:
        """Let the server go (it exits when its socket closes) and reap it."""
        _LIVE.discard(self)
        with contextlib.suppress(OSError):
            self._sock.close()
        self.gone = True
        if not self._our_child:
            return  # another server's child: that server reaps it
        deadline = time.monotonic() + 2.0
        while True:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return  # reaped elsewhere (someone called os.wait())
            if pid:
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, 0)
                return
            time.sleep(0.005)


# -- inside the server ---------------------------------------------------------------


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the socket closed")
        data += chunk
    return data


def _receive(sock: socket.socket) -> tuple[str, dict[str, Any], int | None] | None:
    """One request and the descriptor that came with it; None at end of file."""
    try:
        head, fds, flags, _ = socket.recv_fds(sock, _HEADER.size, 1)
    except OSError:
        return None
    if not head:
        return None
    if len(head) < _HEADER.size:
        head += _recv_exact(sock, _HEADER.size - len(head))
    (size,) = _HEADER.unpack(head)
    kind, options = pickle.loads(_recv_exact(sock, size))
    truncated = bool(flags & getattr(socket, "MSG_CTRUNC", 0))
    return kind, options, (fds[0] if fds and not truncated else None)


def _serve(sock: socket.socket, pool_pid: int) -> int:
    """The server's loop; returns its exit code."""
    gc.freeze()  # what was inherited is never scanned again: fewer pages copied in workers
    wake_r, wake_w = _take_signals()
    watch = None
    with contextlib.suppress(AttributeError, OSError):
        watch = os.pidfd_open(pool_pid)  # type: ignore[attr-defined,unused-ignore]
    handles: list[Any] = [sock, wake_r] + ([watch] if watch is not None else [])
    while True:
        ready, _, _ = select.select(handles, [], [], None if watch is not None else _ORPHAN_POLL_S)
        if (watch is not None and watch in ready) or (watch is None and not alive(pool_pid)):
            return 0  # the pool's process died: workers leave by themselves
        if wake_r in ready:
            _drain(wake_r)
            _reap(sock)
        if sock in ready:
            request = _receive(sock)
            if request is None:
                _reap(sock)
                return 0
            _fork_for(sock, request, pool_pid, [sock, wake_r, wake_w, watch])


def _take_signals() -> tuple[int, int]:
    """Set the server's signals up; returns the pipe a ``SIGCHLD`` wakes it on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides what Ctrl-C does
    if hasattr(signal, "pthread_sigmask"):
        # The forking thread's mask is inherited (SIGINT blocked around the fork, maybe
        # more): a blocked SIGCHLD would hide every exit.
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for name in ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"):
        number = getattr(signal, name, None)
        if number is not None and callable(signal.getsignal(number)):
            signal.signal(number, signal.SIG_DFL)  # the caller's Python handlers are not ours
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    return wake_r, wake_w


def _drain(wake_r: int) -> None:
    """Empty the wake-up pipe (one byte per signal)."""
    with contextlib.suppress(OSError):
        while os.read(wake_r, 512):
            pass


def _fork_for(sock: socket.socket, request: tuple[str, dict[str, Any], int | None], pool_pid: int,
              inherited: list[Any]) -> None:
    """Fork the child a request asks for and tell the requester its pid (or
    why not), for a worker; a server's requester hears from the child itself."""
    kind, options, fd = request
    sequence = int(options.get("sequence", 0))
    if fd is None:
        if kind == _WORKER:  # a server's requester hears nothing on its own socket: it times out
            _send(sock, _FAILED, 24, sequence)  # EMFILE: the descriptor did not fit here
        return
    try:
        pid = os.fork()
    except OSError as error:
        os.close(fd)
        if kind == _WORKER:
            _send(sock, _FAILED, error.errno or 0, sequence)
        return
    if pid == 0:
        _become(kind, options, fd, pool_pid, inherited)
    os.close(fd)
    if kind == _WORKER:
        _send(sock, _STARTED, pid, sequence)


def _send(sock: socket.socket, kind: bytes, value: int, code: int) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(_RECORD.pack(kind, value, code))


def _reap(sock: socket.socket) -> None:
    """Report every child that has exited."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        _send(sock, _EXITED, pid, os.waitstatus_to_exitcode(status))


def _become(kind: str, options: dict[str, Any], fd: int, pool_pid: int, inherited: list[Any]) -> None:
    """In a child of the server: become a worker, or a server for another pool. Never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for handle in inherited:
            with contextlib.suppress(OSError, TypeError):
                handle.close() if isinstance(handle, socket.socket) else os.close(handle)
        _after_fork()
        if kind == _SERVER:
            sock = socket.socket(fileno=fd)
            _send(sock, _STARTED, os.getpid(), 0)
            code = _serve(sock, options["pool_pid"])
        else:
            multiprocessing.current_process().name = options["name"]
            worker_main(Connection(fd), options["levels"], options["nice"], options["cpu"], parent_pid=pool_pid)
            code = 0
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        os._exit(code)


__all__ = ["ForkServer", "ForkServerError", "available", "start"]
