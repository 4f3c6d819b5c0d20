"""Writing the files of a run, and saying in one line why a write failed.

A full disk, a full quota, a read-only or forbidden folder end many cluster jobs, usually hours in, and
Python reports them as chained tracebacks (torch's ``inline_container.cc: unexpected pos``) that name the
cause only in passing. Here every file a run needs is written to a temporary name in the same folder,
fsynced and renamed (:func:`atomic_write`): a failed write leaves the previous file intact and no partial
file behind, and becomes a :class:`StorageError` whose message names the file, the cause in words, the bytes
needed (when known) and free on that file system, and what to do. Optional outputs (the embedding map, W&B,
log files, caches) report the same line as a warning and the run goes on.

Standard library only: the command-line check of the run dir (:func:`check_writable`) runs before torch is
imported.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from cssl.core.errors import ConfigError, RunError

# errno -> the cause in words; only these are storage faults (others stay ordinary exceptions)
CAUSES: dict[int, str] = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.EFBIG: "file too large for the file system",
    errno.EIO: "input/output error (a failing disk or a lost network file system)",
    errno.ESTALE: "stale network file handle (the file system went away)",
}
ADVICE: dict[int, str] = {
    errno.ENOSPC: "free space there, set run_dir= to a disk with room, or keep fewer checkpoints (checkpoint.keep_last=)",
    errno.EDQUOT: "free space within your quota (quota -s; on Lustre lfs quota -u $USER <dir>), set run_dir= to "
    "another file system, or keep fewer checkpoints (checkpoint.keep_last=)",
    errno.EROFS: "set run_dir= to a writable file system",
    errno.EACCES: "set run_dir= to a folder you may write, or fix its permissions",
    errno.EPERM: "set run_dir= to a folder you may write, or fix its permissions",
    errno.EFBIG: "set run_dir= to a file system that holds large files",
    errno.EIO: "check the disk or the network file system, then run again",
    errno.ESTALE: "check the network file system, then run again",
}
SPACE = (errno.ENOSPC, errno.EDQUOT)


class StorageError(RunError):
    """A file of the run could not be written (see :data:`CAUSES`); the message is one line."""

    def __init__(self, message: str, *, path: Path, errno_: int, needed: int | None, free: int | None) -> None:
        super().__init__(message)
        self.path, self.errno, self.needed, self.free = path, errno_, needed, free


def find_os_error(exc: BaseException | None) -> OSError | None:
    """The first storage fault (an OSError with an errno of :data:`CAUSES`) in ``exc`` or the exceptions it
    was raised from or during (torch wraps a failed write in a RuntimeError)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in CAUSES:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def free_bytes(path: Path) -> int | None:
    """Bytes free to this user on the file system of ``path`` (or of its nearest existing parent)."""
    folder = _existing(Path(path))
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path``."""
    folder = _existing(Path(path)).resolve()
    while not os.path.ismount(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def human(n: float) -> str:
    """Bytes for people: ``3.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def describe(path: Path, err: OSError, needed: int | None = None) -> str:
    """``<path>: <cause> (<needed> needed, <free> free on <mount>); <what to do>`` for a storage fault."""
    code = err.errno if err.errno in CAUSES else errno.EIO
    free = free_bytes(path)
    sizes = []
    if needed is not None:
        sizes.append(f"about {human(needed)} needed")
    if free is not None:
        sizes.append(f"{human(free)} free on {mount_point(path)}")
    where = f" ({', '.join(sizes)})" if sizes else ""
    return f"{path}: {CAUSES[code]}{where}; {ADVICE[code]}"


def storage_error(path: Path, err: OSError, *, needed: int | None = None, then: str = "") -> StorageError:
    """A :class:`StorageError` for ``err`` raised while writing ``path``; ``then`` says how the run continues."""
    message = f"could not write {describe(path, err, needed)}" + (f"; {then}" if then else "")
    return StorageError(
        " ".join(message.split()), path=Path(path), errno_=err.errno or 0, needed=needed, free=free_bytes(path)
    )


_partial: set[Path] = set()
_partial_lock = threading.Lock()


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], *, needed: int | None = None, then: str = "") -> None:
    """Write ``path`` through ``write(file)`` to a temporary name beside it, fsync, rename over ``path``.

    Raises:
        StorageError: no space, quota, permission, read-only (also when torch wraps it); the temporary file
            is removed and ``path``, if it existed, is unchanged.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with _partial_lock:
        _partial.add(tmp)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as err:  # noqa: BLE001 - storage faults become one line, others are re-raised
        _remove(tmp)
        fault = find_os_error(err)
        if fault is None and _torch_short_write(err) and needed is not None:
            free = free_bytes(path)
            if free is not None and free < needed:  # torch lost the errno: a short write on a full disk
                fault = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        if fault is None:
            raise
        raise storage_error(path, fault, needed=needed, then=then) from None
    finally:
        _remove(tmp)
        with _partial_lock:
            _partial.discard(tmp)


def atomic_write_text(path: Path, text: str, *, then: str = "") -> None:
    """:func:`atomic_write` of a text file (UTF-8)."""
    data = text.encode()
    atomic_write(path, lambda f: f.write(data), needed=len(data), then=then)


def remove_partial_files() -> None:
    """Remove the temporary files of writes still in progress (before an immediate exit)."""
    with _partial_lock:
        pending = list(_partial)
    for tmp in pending:
        _remove(tmp)


def check_writable(folder: Path, key: str = "run_dir") -> None:
    """Create ``folder`` and write a small file in it, so that a run dir that cannot be written is refused
    before any work.

    Raises:
        ConfigError: one line naming the folder, the cause and what to do.
    """
    folder = Path(folder)
    probe = folder / f".cssl-write-check-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"cssl")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        if err.errno not in CAUSES:
            raise ConfigError(
                f"{key} {folder} cannot be written ({err.strerror}); set {key}= to a writable folder"
            ) from None
        raise ConfigError(f"{key} cannot be written: {describe(folder, err)}") from None
    finally:
        _remove(probe)


def short_of_space(folder: Path, size: int, files: int, what: str) -> str | None:
    """A one-line warning when the file system of ``folder`` has less than ``files`` x ``size`` bytes free
    (``what`` says which files they are), else None."""
    free = free_bytes(folder)
    if free is None or free >= files * size:
        return None
    where = f"{mount_point(folder)} has {human(free)} free"
    if free < size:
        return (
            f"a checkpoint of about {human(size)} does not fit: {where}, and the first checkpoint will stop the "
            "run; free space or set run_dir= to a larger disk"
        )
    fewer = ", or lower checkpoint.keep_last=" if "keep_last" in what else ""
    return (
        f"checkpoints of about {human(size)} each: {what} need {human(files * size)}, and {where}; free space "
        f"or set run_dir= to a larger disk{fewer} (the run goes on; a checkpoint that does not fit will stop "
        "it, the previous one kept)"
    )


def warn(message: str) -> None:
    """One line on stderr (every rank: each writes its own files)."""
    print(f"warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


def optional_output(what: str, path: Path | None, err: BaseException) -> None:
    """Warn that an optional output (a plot, a cache, a log) was not written; the run goes on."""
    if isinstance(err, StorageError):
        warn(f"{what} not written, the run goes on: {err}")
        return
    fault = find_os_error(err)
    if fault is not None:
        target = Path(fault.filename) if fault.filename else path
        warn(f"{what} not written, the run goes on: {describe(target or Path('.'), fault)}")
    else:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        warn(f"{what} not written, the run goes on ({type(err).__name__}: {first})")


def guard_log_files() -> None:
    """Make a log file that can no longer be written (a full disk) one warning instead of a traceback per
    record; logging to that file then stops and the run goes on."""
    loggers = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler) and not getattr(handler, "_cssl_guarded", False):
                handler._cssl_guarded = True  # type: ignore[attr-defined]
                handler.handleError = _log_failure(handler, handler.handleError)  # type: ignore[method-assign]


def _log_failure(handler: logging.FileHandler, original: Callable[[Any], None]) -> Callable[[Any], None]:
    def handle(record: Any) -> None:
        fault = find_os_error(sys.exc_info()[1])
        if fault is None:
            original(record)
            return
        handler.setLevel(logging.CRITICAL + 10)  # nothing more goes to this file
        warn(f"log file not written any more, the run goes on: {describe(Path(handler.baseFilename), fault)}")

    return handle


def _torch_short_write(err: BaseException) -> bool:
    text = str(err)
    return "inline_container" in text or "unexpected pos" in text or "PytorchStreamWriter failed" in text


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only folder: there is no partial file to remove either
