"""The decoded-pixel cache: each image decoded once per size and decoder, kept on disk, read back in batches.

An entry is one image at one size: ``ROOT/pixels-<DECODER>/<size>/<ab>/<digest>.px``, the
raw uint8 ``size x size x 3`` pixels followed by a 16-byte BLAKE2b checksum of them;
``digest`` is the BLAKE2b of the image file's bytes, so a changed file is another entry
and a renamed or copied one is the same. A file's digest is remembered under its path,
size, modification time, inode and device (``ROOT/files/``), so a second pass over
unchanged files reads none of their bytes; a file rewritten in place gets a new
modification time and is hashed again. The outcome of a whole fill is remembered the same
way under its list of files, so a second fit over the same unchanged folder costs a stat
per file and one read. Entries are written to a temporary file and
renamed into place: two processes filling the cache at once write the same bytes and
neither reader sees half an entry. An entry whose length or checksum is wrong is
removed and decoded again from its file, never served.

Reading uses plain file reads, not memory maps: the pages then stay in the operating
system's page cache, not in the process's resident memory, which holds batches only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stacking.data.images import DECODER, ImageDecodeError, Pixels, decode_image
from stacking.errors import UserError

CACHE_DIR_ENV = "STACKSERVE_CACHE_DIR"
CHECKSUM_BYTES = 16
FILES = "files"  # the digests of files already hashed, by path and stat
# A file modified this recently may change again within the filesystem's timestamp granularity without its stat
# changing (git's "racy" files): its digest is not remembered.
SETTLED_NS = 2 * 10**9
SUFFIX = ".px"


def default_cache_dir() -> Path:
    """``$STACKSERVE_CACHE_DIR``, else the user's cache directory (``$XDG_CACHE_HOME`` or ``~/.cache``)/stackserve."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "stackserve"


def _settled(st: os.stat_result) -> bool:
    return st.st_mtime_ns < time.time_ns() - SETTLED_NS


def file_digest(data: bytes) -> str:
    """An image file's identity in the cache: the BLAKE2b of its bytes (160 bits)."""
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def _checksum(pixels: bytes) -> bytes:
    return hashlib.blake2b(pixels, digest_size=CHECKSUM_BYTES).digest()


class PixelCache:
    """Decoded pixels under ``root``, by file digest, size and decoder."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def prepare(self) -> None:
        """Make the root, or say clearly why it cannot be used (before any image is decoded)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise UserError(
                f"--cache-dir ({CACHE_DIR_ENV}) {self.root}: cannot write decoded pixels there ({exc.strerror or exc})"
            ) from None

    def _file_key(self, path: Path) -> Path | None:
        """Where the digest of ``path`` as it is now would be remembered: keyed by its real path, size, modification
        time (ns), inode and device, as make, git and ccache know a file unchanged. None if it cannot be stat'ed or
        was modified in the last ``SETTLED_NS``."""
        try:
            real = Path(path).resolve()
            st = real.stat()
        except OSError:
            return None
        if not _settled(st):
            return None
        key = hashlib.blake2b(
            f"{real}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_dev}".encode(), digest_size=16
        ).hexdigest()
        return self.root / FILES / key[:2] / key

    def recall(self, key: Path | None) -> str | None:
        """What was remembered under ``key`` (from ``_file_key``/``_list_key``, taken before the files were read)."""
        try:
            return key.read_text() if key is not None else None
        except OSError:
            return None

    def remember(self, key: Path | None, content: str) -> None:
        """Store ``content`` under ``key``: the stat taken before reading, so a file changed meanwhile is not
        paired with what was read from it before."""
        if key is not None:
            self._write_atomically(key, content.encode())

    def _list_key(self, paths: Sequence[Path], sizes: Sequence[int]) -> Path | None:
        """Where the outcome of filling exactly these files, as they are now, at these sizes is remembered: keyed by
        each path and its stat (size, modification time, inode, device). None if a file cannot be stat'ed or was
        modified in the last ``SETTLED_NS``."""
        key = hashlib.blake2b(f"{DECODER}\0{sorted(set(sizes))}\n".encode(), digest_size=16)
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                return None
            if not _settled(st):
                return None
            key.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_dev}\n".encode())
        digest = key.hexdigest()
        return self.root / FILES / "lists" / digest[:2] / digest

    def known_list(self, key: Path | None, count: int, sizes: Sequence[int]) -> tuple[list, list] | None:
        """(digests, reasons) remembered under ``key`` for ``count`` files whose every entry is still there; else
        None."""
        try:
            found = json.loads(self.recall(key) or "null")
        except ValueError:
            return None
        if not isinstance(found, dict) or len(found.get("digests", ())) != count:
            return None
        digests, reasons = found["digests"], found["reasons"]
        if all(self.has(d, s) for d in digests if d is not None for s in sizes):
            return digests, reasons
        return None

    def entry(self, digest: str, size: int) -> Path:
        return self.root / f"pixels-{DECODER}" / str(size) / digest[:2] / f"{digest}{SUFFIX}"

    def has(self, digest: str, size: int) -> bool:
        """An entry of the right length is there (its checksum is checked when it is read)."""
        try:
            return self.entry(digest, size).stat().st_size == size * size * 3 + CHECKSUM_BYTES
        except OSError:
            return False

    def read(self, digest: str, size: int) -> np.ndarray | None:
        """The image at ``size``; None if absent or damaged (a damaged entry is removed)."""
        path = self.entry(digest, size)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        body, check = data[:-CHECKSUM_BYTES], data[-CHECKSUM_BYTES:]
        if len(body) != size * size * 3 or _checksum(body) != check:
            path.unlink(missing_ok=True)
            return None
        return np.frombuffer(body, np.uint8).reshape(size, size, 3)

    def write(self, digest: str, size: int, pixels: np.ndarray) -> None:
        """Store one image, atomically: a reader sees the whole entry or none."""
        body = np.ascontiguousarray(pixels, np.uint8).tobytes()
        self._write_atomically(self.entry(digest, size), body + _checksum(body))

    def _write_atomically(self, path: Path, content: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(content)
            os.replace(tmp, path)
        except OSError as exc:  # a full disk, a lost mount: not an unreadable image
            raise UserError(f"pixel cache {self.root}: cannot write {path.name} ({exc.strerror or exc})") from None
        finally:
            tmp.unlink(missing_ok=True)

    def info(self) -> list[dict]:
        """Per decoder and size: entries and bytes (this decoder's marked ``current``)."""
        rows = []
        for decoder in sorted(self.root.glob("pixels-*")) if self.root.is_dir() else []:
            for folder in sorted((d for d in decoder.iterdir() if d.name.isdigit()), key=lambda d: int(d.name)):
                files = [f for f in folder.glob(f"*/*{SUFFIX}")]
                rows.append(
                    {
                        "decoder": decoder.name.removeprefix("pixels-"),
                        "current": decoder.name == f"pixels-{DECODER}",
                        "size": int(folder.name),
                        "entries": len(files),
                        "bytes": sum(f.stat().st_size for f in files),
                    }
                )
        return rows

    def clear(self) -> tuple[int, int]:
        """Remove every entry of every decoder, and the remembered digests; return (entries, bytes) removed."""
        rows = self.info()
        for folder in [*self.root.glob("pixels-*"), self.root / FILES] if self.root.is_dir() else []:
            shutil.rmtree(folder, ignore_errors=True)
        return sum(r["entries"] for r in rows), sum(r["bytes"] for r in rows)


class CachedRows:
    """Images at one size in the cache, used like a uint8 (N, size, size, 3) array that is not in memory.

    Indexing with a slice, a mask or row numbers gives another ``CachedRows`` (nothing is
    read); ``np.asarray`` reads the rows. An entry found damaged or missing is decoded
    again from its file, which must still have the content it had (its digest).
    """

    def __init__(self, cache: PixelCache, size: int, digests: Sequence[str], sources: Sequence[Path], rows=None):
        self.cache, self.size = cache, size
        self.digests, self.sources = tuple(digests), tuple(sources)
        self.rows = np.arange(len(self.digests)) if rows is None else np.asarray(rows, np.int64)

    dtype = np.dtype(np.uint8)
    ndim = 4

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.rows), self.size, self.size, 3)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> CachedRows | np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._read(int(self.rows[key]))
        return CachedRows(self.cache, self.size, self.digests, self.sources, self.rows[key])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, np.uint8)
        for i, row in enumerate(self.rows):
            out[i] = self._read(int(row))
        return out if dtype is None else out.astype(dtype)

    def _read(self, row: int) -> np.ndarray:
        digest = self.digests[row]
        found = self.cache.read(digest, self.size)
        if found is not None:
            return found
        source = self.sources[row]
        if not Path(source).is_file():  # e.g. a Ray node that sees neither this cache nor the data
            raise UserError(
                f"{source}: its pixels are not in the cache at {self.cache.root} and the file is not there to decode "
                f"on {socket.gethostname()}; with Ray, give --cache-dir a path every node sees (or the data)"
            )
        return _fill_one(self.cache, source, [self.size], digest)[1].at(self.size)[0]

    def identity(self) -> str:
        """What these pixels are, without reading them: the decoder, the size and each file's digest, in order."""
        digest = hashlib.blake2b(f"{DECODER}/{self.size}\n".encode(), digest_size=32)
        digest.update("\n".join(self.digests[r] for r in self.rows).encode())
        return digest.hexdigest()

    @staticmethod
    def concat(parts: Sequence[CachedRows]) -> CachedRows:
        """The rows of ``parts`` in order (one cache, one size)."""
        first = parts[0]
        digests = [p.digests[r] for p in parts for r in p.rows]
        sources = [p.sources[r] for p in parts for r in p.rows]
        return CachedRows(first.cache, first.size, digests, sources)


def _fill_one(cache: PixelCache, path: Path, sizes: Sequence[int], expect: str | None = None) -> tuple[str, Pixels]:
    """Make sure ``path``'s pixels are in the cache at ``sizes``, decoding those missing; (digest, decoded or empty).

    A file whose path, size, modification time and inode are those it had when last
    hashed is not read again (``PixelCache._file_key``). ``expect``: the digest the file
    had when it was listed, to decode ``sizes`` again from it; a file changed since is an error.
    """
    key = cache._file_key(path) if expect is None else None
    known = cache.recall(key)
    if known is not None and len(known) == 40 and all(cache.has(known, s) for s in sizes):
        return known, Pixels({})
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    digest = file_digest(data)
    if expect is not None and digest != expect:
        raise ImageDecodeError(f"{path}: the file changed while in use (its cached pixels cannot be rebuilt)")
    missing = [s for s in sizes if expect is not None or not cache.has(digest, s)]
    decoded = Pixels({})
    if missing:
        try:
            decoded = decode_image(data, missing)
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"{path}: {exc}") from None
        for size in missing:
            cache.write(digest, size, decoded.at(size)[0])
    cache.remember(key, digest)
    return digest, decoded


@dataclass(frozen=True)
class FillReport:
    """How the pixels of a set of files were found: decoded now or already in the cache."""

    images: int
    decoded: int  # files decoded now (at one or more sizes)
    seconds: float

    @property
    def from_cache(self) -> int:
        return self.images - self.decoded

    def line(self, cache: PixelCache) -> str:
        rate = self.images / self.seconds if self.seconds > 0 else float("inf")
        if self.decoded == 0:
            return f"pixels: all {self.images} images from the cache ({cache.root}), {self.seconds:.2f} s"
        return (
            f"pixels: {self.decoded} images decoded, {self.from_cache} from the cache ({cache.root}), "
            f"{self.seconds:.2f} s, {rate:.0f} images/s"
        )


def fill_cache(
    cache: PixelCache,
    paths: Sequence[Path],
    sizes: Sequence[int],
    workers: int | None = None,
    progress: bool = True,
) -> tuple[list[str | None], list[str | None], FillReport]:
    """Make sure every file's pixels are in the cache at every size, decoding the missing ones on every core.

    Returns each file's digest (None for an unreadable one), each file's reason for being
    unreadable (None for a good one), and the report. ``progress``: a bar of its own (off
    where the caller already shows one, e.g. ``predict``'s chunks).
    """
    cache.prepare()
    started, decoded = time.monotonic(), 0
    key = cache._list_key(paths, sizes)
    known = cache.known_list(key, len(paths), sizes)  # the same files as a fill before: one read, no file opened
    if known is not None:
        return known[0], known[1], FillReport(len(paths), 0, time.monotonic() - started)
    workers = workers or len(os.sched_getaffinity(0))

    def one(path: Path) -> tuple[str | None, str | None, bool]:
        try:
            digest, fresh = _fill_one(cache, path, sizes)
            return digest, None, bool(fresh.by_size)
        except ImageDecodeError as exc:
            return None, str(exc), False

    digests, reasons = [], []
    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool,
        tqdm(total=len(paths), desc="decoding", unit="img", leave=False, disable=None if progress else True) as bar,
    ):
        for digest, reason, fresh in pool.map(one, paths):
            digests.append(digest)
            reasons.append(reason)
            decoded += fresh
            bar.update()
            bar.set_postfix(from_cache=len(digests) - decoded, refresh=False)
    cache.remember(key, json.dumps({"digests": digests, "reasons": reasons}))
    return digests, reasons, FillReport(len(paths), decoded, time.monotonic() - started)


def cached_pixels(cache: PixelCache, paths: Sequence[Path], digests: Sequence[str], sizes: Sequence[int]) -> Pixels:
    """``Pixels`` whose every size reads from the cache (nothing in memory)."""
    return Pixels({size: CachedRows(cache, size, digests, paths) for size in sizes})
