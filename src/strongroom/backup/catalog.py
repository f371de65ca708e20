"""A folder of backup files: ``<root>/<cluster_id>/<yyyymmddThhmmssZ>-<backup_id>.srbk``.

The catalog has no index of its own: the files are the truth, so an operator can
copy, move or delete them with ordinary tools. Listing reads only each file's
header (nothing is hashed); :func:`~strongroom.backup.format.verify_backup_file`
checks a whole file. Files whose header cannot be read, or whose name or folder
does not match their header, are reported as problems and never touched by
retention.

Writes are atomic and never replace a file: a reader sees no file or the whole
file, and two writers of the same backup cannot clobber each other.
"""

from __future__ import annotations

import errno
import math
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from strongroom.backup.format import (
    CLUSTER_ID_PATTERN,
    FILE_EXTENSION,
    BackupError,
    BackupHeader,
    decode_backup,
    read_backup_header,
    verify_backup_file,
)
from strongroom.pki.certs import fsync_dir

FILE_MODE = 0o600  # ciphertext only, but nobody else needs to read it
DIR_MODE = 0o700
_DAY = 86400.0


@dataclass(frozen=True)
class BackupEntry:
    """One backup file as listed (from its header: not verified)."""

    backup_id: str
    cluster_id: str
    cluster_name: str
    created: float
    revision: int
    trigger: str
    node_id: str
    record_count: int
    signed: bool
    size: int
    path: Path

    @classmethod
    def from_header(cls, header: BackupHeader, size: int, path: Path) -> BackupEntry:
        return cls(header.backup_id, header.cluster_id, header.cluster_name, header.created, header.revision,
                   header.trigger, header.node_id, header.record_count,
                   header.signature_algorithm is not None, size, path)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (for ``--json`` output)."""
        return {
            "backup_id": self.backup_id, "cluster_id": self.cluster_id, "cluster_name": self.cluster_name,
            "created": self.created, "created_utc": _utc(self.created), "revision": self.revision,
            "trigger": self.trigger, "node_id": self.node_id, "record_count": self.record_count,
            "signed": self.signed, "size": self.size, "path": str(self.path),
        }


@dataclass(frozen=True)
class CatalogProblem:
    """A file in the catalog that could not be listed, and why."""

    path: Path
    message: str


@dataclass(frozen=True)
class CatalogScan:
    entries: list[BackupEntry]  # newest first
    problems: list[CatalogProblem]


# `list` is shadowed by BackupCatalog.list inside the class body, so annotations there use these.
EntryList = list[BackupEntry]
PathList = list[Path]


def backup_file_name(header: BackupHeader) -> str:
    """``<UTC yyyymmddThhmmssZ>-<backup_id>.srbk``: sorts by time in a plain ``ls``."""
    stamp = datetime.fromtimestamp(header.created, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{header.backup_id}{FILE_EXTENSION}"


class BackupCatalog:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # ----------------------------------------------------------------- writing

    def write(self, data: bytes, header: BackupHeader | None = None) -> Path:
        """Store a backup's bytes; returns the new file's path.

        The data is fully checked first (a catalog never holds a file that could not
        be restored); ``header``, if given, must be the one the data was made from.
        """
        written = decode_backup(data).header
        if header is not None:
            mine = (header.backup_id, header.cluster_id, float(header.created), header.revision)
            theirs = (written.backup_id, written.cluster_id, written.created, written.revision)
            if mine != theirs:
                raise BackupError("the header given does not match the backup's own header")
        directory = self.root / written.cluster_id
        try:
            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise BackupError(f"cannot create {directory}: {exc.strerror or exc}") from None
        if any(directory.glob(f"*-{written.backup_id}{FILE_EXTENSION}")):
            raise BackupError(f"backup {written.backup_id} is already in the catalog")
        path = directory / backup_file_name(written)
        _write_new_file(path, data)
        return path

    # ----------------------------------------------------------------- reading

    def scan(self, cluster_id: str | None = None) -> CatalogScan:
        """Every listable backup (newest first) and every file that could not be listed."""
        entries: EntryList = []
        problems: list[CatalogProblem] = []
        for directory in self._cluster_dirs(cluster_id):
            for path in sorted(directory.iterdir()):
                if path.name.startswith(".") or not path.name.endswith(FILE_EXTENSION):
                    continue  # our own temporary files, and whatever else an operator keeps there
                try:
                    header, size = read_backup_header(path)
                except BackupError as exc:
                    problems.append(CatalogProblem(path, str(exc)))
                    continue
                if header.cluster_id != directory.name or backup_file_name(header) != path.name:
                    problems.append(CatalogProblem(
                        path, f"the file's name or folder does not match its header (expected "
                              f"{header.cluster_id}/{backup_file_name(header)}): moved or renamed?"))
                    continue
                entries.append(BackupEntry.from_header(header, size, path))
        entries.sort(key=lambda e: (e.created, e.revision, e.backup_id), reverse=True)
        return CatalogScan(entries, problems)

    def list(self, cluster_id: str | None = None) -> EntryList:
        """Backups of one cluster (or all), newest first; unreadable files are left out (see :meth:`scan`)."""
        return self.scan(cluster_id).entries

    def newest(self, cluster_id: str) -> BackupEntry | None:
        entries = self.list(cluster_id)
        return entries[0] if entries else None

    def find(self, backup_id_or_prefix: str, *, cluster_id: str | None = None) -> BackupEntry:
        """The one backup whose id starts with ``backup_id_or_prefix``."""
        prefix = backup_id_or_prefix.strip().lower()
        if not prefix:
            raise BackupError("give a backup id, or the first characters of one")
        matches = [e for e in self.list(cluster_id) if e.backup_id.startswith(prefix)]
        where = f" of cluster {cluster_id}" if cluster_id else ""
        if not matches:
            raise BackupError(f"no backup{where} has an id starting with {prefix!r} in {self.root}")
        if len(matches) > 1:
            shown = ", ".join(e.backup_id for e in matches[:5]) + (", ..." if len(matches) > 5 else "")
            raise BackupError(f"{prefix!r} is ambiguous: {len(matches)} backups{where} start with it "
                              f"({shown}); give more characters")
        return matches[0]

    # ----------------------------------------------------------------- deleting

    def delete(self, backup_id: str, *, cluster_id: str | None = None) -> BackupEntry:
        """Delete the backup with exactly this id (resolve prefixes with :meth:`find` first)."""
        entry = self.find(backup_id, cluster_id=cluster_id)
        if entry.backup_id != backup_id.strip().lower():
            raise BackupError(f"give the whole backup id to delete; {backup_id!r} is only a prefix "
                              f"of {entry.backup_id}")
        self._remove(entry)
        return entry

    def apply_retention(self, cluster_id: str, retention_days: float, now: float | None = None, *,
                        verify_newest: bool = True) -> EntryList:
        """Delete this cluster's backups older than ``retention_days``; returns what was deleted.

        The newest backup is never deleted, however old it is: a cluster that stopped
        making backups must not lose its last one to the calendar. With
        ``verify_newest`` the newest backup that passes a full checksum check is kept
        too, so a damaged newest file cannot leave the cluster without a usable one.
        """
        if not isinstance(retention_days, (int, float)) or not math.isfinite(retention_days) \
                or retention_days < 0:
            raise ValueError(f"retention_days must be a number >= 0, got {retention_days!r}")
        entries = self.list(cluster_id)
        if not entries:
            return []
        keep = {entries[0].backup_id}
        if verify_newest:
            keep |= self._newest_intact(entries)
        cutoff = (time.time() if now is None else now) - retention_days * _DAY
        deleted: EntryList = []
        for entry in entries:
            if entry.backup_id not in keep and entry.created < cutoff:
                self._remove(entry)
                deleted.append(entry)
        return deleted

    @staticmethod
    def _newest_intact(entries: EntryList) -> set[str]:
        for entry in entries:
            try:
                verify_backup_file(entry.path)
            except BackupError:
                continue
            return {entry.backup_id}
        return set()

    def _remove(self, entry: BackupEntry) -> None:
        try:
            entry.path.unlink(missing_ok=True)  # already gone (another process) is as good as deleted
        except OSError as exc:
            raise BackupError(f"cannot delete {entry.path}: {exc.strerror or exc}") from None
        fsync_dir(entry.path.parent)

    def _cluster_dirs(self, cluster_id: str | None) -> PathList:
        if cluster_id is not None:
            if not CLUSTER_ID_PATTERN.fullmatch(cluster_id):
                raise BackupError(f"{cluster_id!r} is not a cluster id")
            directory = self.root / cluster_id
            return [directory] if directory.is_dir() else []
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and CLUSTER_ID_PATTERN.fullmatch(p.name))



def _write_new_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path``: complete and synced before it appears, never replacing.

    The data goes to a uniquely named temporary file (O_EXCL, so we never open
    something planted there), is fsynced, then hard-linked to its final name: link
    fails if the name exists, which a rename would silently replace.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except OSError as exc:
        raise BackupError(f"cannot create a file in {path.parent}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), FILE_MODE)  # the umask can only narrow it; make it exact
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        _link_new(tmp, path)
    except OSError as exc:
        raise BackupError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _link_new(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise BackupError(f"{path} already exists; a backup file is never overwritten") from None
    except OSError as exc:
        # Some filesystems (FAT, some network mounts) have no hard links; fall back to
        # a rename after a check, which can race only with another writer of the same id.
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if path.exists():
            raise BackupError(f"{path} already exists; a backup file is never overwritten") from None
        os.rename(tmp, path)


def _utc(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
