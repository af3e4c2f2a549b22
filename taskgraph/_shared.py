"""Shared arrays: a numpy array that worker processes on this host map instead of copying.

Imports ``_errors`` only. numpy is imported when an array is made or attached,
so the package imports without it.

The owner (the process that called :func:`shared_array`) creates a POSIX
shared-memory segment (``/dev/shm`` on Linux), copies the data in once, and is
the only one that frees it. A :class:`SharedArray` pickles as a descriptor
(segment name, shape, dtype, lock file path) of a few hundred bytes; unpickling
it in a worker maps the same segment, so a task's payload stays small however
big the array is, and writes in one process are seen by every other.

Lifetime:

* ``close()`` (or the end of a ``with`` block) on the owner removes the segment's
  name at once; the memory itself is returned when the last mapping is gone.
  Mappings are never closed explicitly, only dropped: numpy views taken earlier
  stay valid, the memory is never unmapped under them.
* ``weakref.finalize`` frees the segment when the owner handle is garbage
  collected or the interpreter exits, and the owner registers the segment with
  ``multiprocessing``'s resource tracker, which unlinks it if the owner is
  killed.
* Workers attach *without* registering with a resource tracker (as
  ``SharedMemory(track=False)`` does on Python 3.13): on Python 3.8 to 3.12 a
  process that attaches with ``SharedMemory(name)`` registers the segment, and
  its tracker unlinks the owner's segment, with a "leaked shared_memory"
  warning, when that process exits.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from taskgraph._errors import InvalidArgumentError, SharedArrayError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

if sys.platform == "win32":  # pragma: no cover - Windows
    import msvcrt
else:
    import _posixshmem  # type: ignore[import-not-found,unused-ignore]
    import fcntl
    from multiprocessing import resource_tracker

_LOCK_POLL_S = 0.005


# -- the segment: a named block of memory, mapped ------------------------------------


class _Segment:
    """One mapping of a named shared-memory segment."""

    def __init__(self, name: str, size: int, create: bool) -> None:
        self.name = name
        self.size = size
        if sys.platform == "win32":  # pragma: no cover - Windows
            # A named mapping, freed when its last handle closes: no unlink. (Attaching
            # cannot tell a freed mapping from a new one: it would see zeros.)
            self.buffer: mmap.mmap = mmap.mmap(-1, size, tagname=name)
            return
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self.buffer = mmap.mmap(fd, os.fstat(fd).st_size)
        except BaseException:
            if create:
                _posixshmem.shm_unlink("/" + name)
            raise
        finally:
            os.close(fd)
        if create:
            # The tracker unlinks the segment if this process is killed before it can.
            resource_tracker.register("/" + name, "shared_memory")

    def release(self) -> None:
        """Drop this reference to the mapping. It is never closed explicitly:
        numpy arrays keep a reference to the mmap object but no buffer export
        on it, so ``mmap.close()`` would unmap the memory under a live view
        (a segfault on the next access). The memory is unmapped when the last
        array over it is garbage collected."""
        self.buffer = None  # type: ignore[assignment]

    def unlink(self) -> None:
        """Remove the segment's name (owner only)."""
        if sys.platform == "win32":  # pragma: no cover - Windows
            return
        with contextlib.suppress(FileNotFoundError):
            _posixshmem.shm_unlink("/" + self.name)
        resource_tracker.unregister("/" + self.name, "shared_memory")


def _free(segment: _Segment, lock_path: str, owner_pid: int) -> None:
    # A forked child inherits the owner's finalizer: only the owner frees.
    if os.getpid() != owner_pid:
        return
    segment.unlink()
    segment.release()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock_path)


# -- the lock ----------------------------------------------------------------------


class SharedLock:
    """A lock that threads and processes on this host share: an advisory lock
    (``flock``) on a small file next to the segment.

    Pickles as its file path, so it can be sent to workers that are already
    running (unlike ``multiprocessing.Lock``, which only a child inherits at
    start). Use it as a context manager, like ``threading.Lock``. Not
    re-entrant.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._file: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (SharedLock, (self.path,))

    def _fd(self) -> int:
        if self._file is None:
            try:
                # Never created here: a missing file means the owner already freed the array.
                self._file = open(self.path, "r+b")
            except FileNotFoundError as error:
                raise SharedArrayError(
                    f"the lock file {self.path} of a shared array is gone: its owner already "
                    "closed the array. Keep the owner open until every task using it has finished."
                ) from error
        return int(self._file.fileno())

    def _try_lock(self, fd: int, blocking: bool) -> bool:
        if sys.platform == "win32":  # pragma: no cover - Windows
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            except OSError:
                return False
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock; with ``blocking=False`` or a ``timeout`` (seconds),
        return False instead of waiting longer."""
        deadline = None if timeout < 0 else time.monotonic() + timeout
        if not self._thread_lock.acquire(blocking, timeout):
            return False
        try:
            fd = self._fd()
            # A plain blocking wait is one system call; a bounded wait has to poll.
            wait_in_kernel = blocking and deadline is None and sys.platform != "win32"
            while not self._try_lock(fd, wait_in_kernel):
                if not blocking or (deadline is not None and time.monotonic() >= deadline):
                    self._thread_lock.release()
                    return False
                time.sleep(_LOCK_POLL_S)
        except BaseException:
            self._thread_lock.release()
            raise
        return True

    def release(self) -> None:
        """Give the lock back."""
        fd = self._fd()
        if sys.platform == "win32":  # pragma: no cover - Windows
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def close(self) -> None:
        """Close the lock's file (releases the lock if held)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> SharedLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"SharedLock({self.path!r})"


# -- the public handle --------------------------------------------------------------


class SharedArray:
    """A numpy array in shared memory, for tasks in worker processes.

    ``SharedArray(array)`` copies ``array`` into a new segment; this process is
    its owner. Pass the handle (not ``handle.array``) in a task's arguments: it
    pickles as a small descriptor and maps the same memory in the worker.

    Attributes:
        name: the segment's name (``/dev/shm/<name>`` on Linux).
        shape, dtype: those of the array.
        lock: a :class:`SharedLock` for tasks that write to the array.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    lock: SharedLock
    _finalizer: Callable[[], object]

    def __init__(self, array: npt.ArrayLike) -> None:
        import numpy as np

        source = np.asarray(array)
        if source.dtype.hasobject:
            raise InvalidArgumentError(
                f"shared_array got an array of dtype {source.dtype}, which holds Python objects: "
                "only their pointers could be shared. Use a numeric, boolean, string or "
                "structured dtype without objects."
            )
        self._init(source.shape, source.dtype)
        np.copyto(self.array, source, casting="no")

    @classmethod
    def zeros(cls, shape: int | tuple[int, ...], dtype: npt.DTypeLike = float) -> SharedArray:
        """A new shared array filled with zeros (for tasks to write results into)."""
        import numpy as np

        handle = cls.__new__(cls)
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        resolved = np.dtype(dtype)
        if resolved.hasobject:
            raise InvalidArgumentError(f"SharedArray.zeros got dtype {resolved}, which holds Python objects.")
        handle._init(dims, resolved)  # a new segment is zero-filled by the kernel
        return handle

    def _init(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        import numpy as np

        self.name = f"tg{os.getpid()}_{secrets.token_hex(6)}"  # short: macOS allows 31 characters
        self.shape = tuple(int(n) for n in shape)
        self.dtype = dtype
        self.owner = True
        self.lock = SharedLock(os.path.join(tempfile.gettempdir(), f"{self.name}.lock"))
        nbytes = int(np.prod(self.shape, dtype=np.int64)) * dtype.itemsize
        try:
            self._segment = _Segment(self.name, max(nbytes, 1), create=True)
        except OSError as error:
            raise SharedArrayError(
                f"could not create a shared-memory segment of {nbytes} bytes for an array of shape "
                f"{self.shape} ({error}); /dev/shm may be full or too small (see `df -h /dev/shm`)."
            ) from error
        with open(self.lock.path, "xb"):
            pass
        self._array: np.ndarray[Any, Any] | None = np.ndarray(self.shape, dtype, buffer=self._segment.buffer)
        self._finalizer = weakref.finalize(self, _free, self._segment, self.lock.path, os.getpid())

    @classmethod
    def _attach(cls, name: str, shape: tuple[int, ...], dtype: np.dtype[Any], lock: SharedLock) -> SharedArray:
        """Map an existing segment (what unpickling does)."""
        import numpy as np

        handle = cls.__new__(cls)
        handle.name, handle.shape, handle.dtype, handle.lock = name, shape, dtype, lock
        handle.owner = False
        try:
            handle._segment = _Segment(name, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or 1,
                                       create=False)
        except FileNotFoundError as error:
            raise SharedArrayError(
                f"the shared array {name!r} (shape {shape}, dtype {dtype}) no longer exists: its owner "
                "closed it before this task attached it, or this worker runs on another host. Keep "
                "the `with shared_array(...)` block open until every task using it has finished."
            ) from error
        handle._array = np.ndarray(shape, dtype, buffer=handle._segment.buffer)
        handle._finalizer = weakref.finalize(handle, handle._segment.release)
        return handle

    def __reduce__(self) -> tuple[Any, ...]:
        if self._array is None:
            raise SharedArrayError(
                f"the shared array {self.name!r} was closed and cannot be sent to a task; "
                "close it after the tasks that use it have finished."
            )
        return (SharedArray._attach, (self.name, self.shape, self.dtype, self.lock))

    @property
    def array(self) -> np.ndarray[Any, Any]:
        """The numpy array over the shared memory (no copy)."""
        if self._array is None:
            raise SharedArrayError(f"the shared array {self.name!r} is closed; its memory may be gone.")
        return self._array

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._array is None

    @property
    def nbytes(self) -> int:
        """Size of the array's data in bytes."""
        return int(self.array.nbytes)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray[Any, Any]:
        import numpy as np

        if copy:
            return np.array(self.array, dtype=dtype, copy=True)
        return self.array if dtype is None else self.array.astype(dtype, copy=False)

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key: Any) -> Any:
        return self.array[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.array[key] = value

    def close(self) -> None:
        """Stop using the array here. The owner also frees the segment (its
        name disappears at once; the memory when the last view is gone).
        Idempotent."""
        if self._array is None:
            return
        self._array = None
        self.lock.close()
        self._finalizer()

    def __enter__(self) -> SharedArray:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._array is None else ("owner" if self.owner else "attached")
        return f"<SharedArray {self.name} shape={self.shape} dtype={self.dtype} {state}>"


def shared_array(array: npt.ArrayLike) -> SharedArray:
    """Copy ``array`` into shared memory and return its :class:`SharedArray` handle.

    Use it as a context manager, and keep it open until every task using it
    has finished::

        with taskgraph.shared_array(big) as shared, taskgraph.TaskGraph(ws, 4) as graph:
            graph.add_task(work, args=(shared, 0))
            graph.join()

    Raises:
        InvalidArgumentError: the array holds Python objects (``dtype=object``).
        SharedArrayError: the segment could not be created (``/dev/shm`` full).
    """
    return SharedArray(array)


#: taylorism's name for a shared n-dimensional array.
SharedNumpyArray = SharedArray

__all__ = ["SharedArray", "SharedLock", "SharedNumpyArray", "shared_array"]
