"""A shared cache's entries: the manifest that says which object each target
of a task is and which object its stored result is, its encoding and its
checks, and the team key that signs it.

A manifest's file is a header line ``taskgraph-cache-entry 1 CHECK MAC``
followed by a JSON body: CHECK is the xxh3-128 of the body (a damaged
manifest is detected), MAC an HMAC-SHA256 of it keyed by the team's cache key
file, or ``-`` when the writer had none. Stored results are pickles: they are
used only when the MAC verifies with this process's key.

Leaf module: imports the standard library and xxhash only.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import logging
import os
import socket
import stat as stat_module
import time
from dataclasses import dataclass

import xxhash

LOGGER = logging.getLogger("taskgraph.Task")

#: The format of a cache: in its marker file and in each manifest's header.
FORMAT = 1
_ENTRY_MAGIC = b"taskgraph-cache-entry"
_MAC_CONTEXT = b"taskgraph cache entry v1\0"
_KEY_CONTEXT = b"taskgraph cache key v1\0"
_MIN_KEY_BYTES = 32


class CacheUnusable(Exception):
    """The directory cannot serve as a cache (the message says why)."""


class EntryProblem(Exception):
    """An entry or one of its objects is damaged, missing or untrusted."""


def who() -> tuple[str, str]:
    """(host, user) of this process, for "made on HOST by USER"."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no passwd entry (containers)
        user = str(os.getuid()) if hasattr(os, "getuid") else "?"
    return socket.gethostname(), user


# -- the team key ----------------------------------------------------------------------------


def read_team_key(path: str) -> bytes:
    """The secret in a cache key file (at least 32 bytes; whitespace around
    a text key, such as a final newline, is ignored).

    Raises:
        CacheUnusable: if the file cannot be read or is too short.
    """
    try:
        with open(path, "rb") as stream:
            info = os.fstat(stream.fileno())
            raw = stream.read(1 << 16)
    except OSError as error:
        raise CacheUnusable(f"cannot read the cache key file {path}: {error}") from error
    # A text key (hex, base64) may end with a newline; a binary one is used whole.
    stripped = raw.strip()
    secret = stripped if stripped and all(32 < byte < 127 for byte in stripped) else raw
    if len(secret) < _MIN_KEY_BYTES:
        raise CacheUnusable(
            f"the cache key file {path} holds {len(secret)} bytes; it needs at least {_MIN_KEY_BYTES} "
            "random bytes (make one with `head -c 32 /dev/urandom > team.key`)"
        )
    if os.name == "posix" and info.st_mode & stat_module.S_IROTH:
        LOGGER.warning(
            "the cache key file %s is readable by every user of this machine: anyone who can read it "
            "can make results that your runs will unpickle. Make it readable by your team only "
            "(chmod o-r).", path,
        )
    return hmac.new(secret, _KEY_CONTEXT, hashlib.sha256).digest()


_KEYS: dict[str, bytes | None] = {}


def team_key(path: str | None) -> bytes | None:
    """The key from ``path``, read once per process; None (with a warning) if it cannot be read."""
    if path is None:
        return None
    if path not in _KEYS:
        try:
            _KEYS[path] = read_team_key(path)
        except CacheUnusable as error:
            LOGGER.warning("%s; stored results are not shared through the cache", error)
            _KEYS[path] = None
    return _KEYS[path]


# -- entries ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One target in an entry: its label, object digest, size and mode bits."""

    label: str
    digest: str
    size: int
    mode: int


@dataclass(frozen=True, slots=True)
class Entry:
    """A manifest, read and checked."""

    key: str
    targets: tuple[StoredFile, ...]
    #: (digest, size) of the pickled result's object, or None.
    result: tuple[str, int] | None
    host: str
    user: str
    made_at: float
    seconds: float
    task: str
    function: str
    #: True when the MAC verified with this process's key.
    signed: bool
    #: Size of the manifest file.
    manifest_bytes: int = 0

    @property
    def size(self) -> int:
        """Bytes of the objects it names."""
        return sum(target.size for target in self.targets) + (self.result[1] if self.result else 0)

    def describe(self) -> str:
        made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.made_at))
        return f"made on {self.host} by {self.user} at {made}"


def _entry_body(entry: Entry) -> bytes:
    body = {
        "key": entry.key,
        "targets": [[t.label, t.digest, t.size, t.mode] for t in entry.targets],
        "result": list(entry.result) if entry.result else None,
        "host": entry.host, "user": entry.user, "made_at": entry.made_at, "seconds": entry.seconds,
        "task": entry.task, "function": entry.function,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _mac(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, _MAC_CONTEXT + body, hashlib.sha256).hexdigest()


def encode_entry(entry: Entry, secret: bytes | None) -> bytes:
    body = _entry_body(entry)
    check = xxhash.xxh3_128_hexdigest(body)
    mac = _mac(secret, body) if secret is not None else "-"
    return b"%s %d %s %s\n%s" % (_ENTRY_MAGIC, FORMAT, check.encode(), mac.encode(), body)


def decode_entry(data: bytes, secret: bytes | None, key: str | None = None) -> Entry:
    """Parse and check a manifest.

    ``Entry.signed`` says whether its MAC verifies with ``secret``.

    Raises:
        EntryProblem: if it is damaged, of another format or for another key.
    """
    header, newline, body = data.partition(b"\n")
    parts = header.split(b" ")
    if not newline or len(parts) != 4 or parts[0] != _ENTRY_MAGIC:
        raise EntryProblem("its manifest is not a taskgraph cache entry (damaged or foreign)")
    if parts[1] != b"%d" % FORMAT:
        raise EntryProblem(f"its manifest has format {parts[1].decode(errors='replace')}, not {FORMAT}")
    if xxhash.xxh3_128_hexdigest(body).encode() != parts[2]:
        raise EntryProblem("its manifest is damaged (its checksum does not match)")
    # Unsigned, or signed with another key: its targets (data, checked by
    # digest) may be used, its stored result never.
    signed = secret is not None and parts[3] != b"-" and hmac.compare_digest(parts[3], _mac(secret, body).encode())
    try:
        raw = json.loads(body)
        entry = Entry(
            key=str(raw["key"]),
            targets=tuple(StoredFile(str(label), str(digest), int(size), int(mode))
                          for label, digest, size, mode in raw["targets"]),
            result=(str(raw["result"][0]), int(raw["result"][1])) if raw["result"] else None,
            host=str(raw["host"]), user=str(raw["user"]), made_at=float(raw["made_at"]),
            seconds=float(raw["seconds"]), task=str(raw["task"]), function=str(raw["function"]),
            signed=signed, manifest_bytes=len(data),
        )
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise EntryProblem(f"its manifest cannot be read ({type(error).__name__}: {error})") from error
    if key is not None and entry.key != key:
        raise EntryProblem(f"its manifest is for another key ({entry.key[:12]})")
    return entry


__all__ = [
    "FORMAT", "CacheUnusable", "Entry", "EntryProblem", "StoredFile", "decode_entry", "encode_entry",
    "read_team_key", "team_key", "who",
]
