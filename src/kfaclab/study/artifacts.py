"""Where a trial's full record lives: an Optuna artifact store beside the study storage.

Optuna's artifacts keep large files out of the storage's attribute tables: the trial gets a
small system attr ``artifacts:<id>`` (file name, MIME type) and the bytes go to an artifact
store. The store must be visible wherever the storage is, so it follows the storage:

- journal in an output folder → ``OUT/artifacts/`` (Optuna's ``FileSystemArtifactStore``): the
  folder travels with its journal, and every local worker shares it.
- database URL → a table ``kfaclab_artifacts`` in that same database (``DatabaseArtifactStore``):
  a local directory on one machine of a PostgreSQL sweep would be invisible to the workers and
  reports on the others, while the database is what they all reach already.

``kfaclab dashboard`` hands the same store to optuna-dashboard, so the record is downloadable
from a trial's page for both kinds of storage.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path
from typing import BinaryIO

import optuna
import sqlalchemy as sa
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from kfaclab import atomic
from kfaclab.study.storage import Storage, driver_url
from kfaclab.study.storage.retry import retrying

ARTIFACT_DIR = "artifacts"
TABLE = "kfaclab_artifacts"
_TABLE_LOCK = "kfaclab:artifacts-table"  # serialises the table's creation across machines


def artifact_dir(spec: Storage) -> Path:
    assert spec.folder is not None
    return spec.folder / ARTIFACT_DIR


def open_artifact_store(
    spec: Storage, storage: optuna.storages.BaseStorage, *, create: bool
) -> RecordStore:
    """The artifact store of ``spec``'s storage. ``create=False`` (readers) creates nothing: an
    old study written before artifacts simply has none, and its records are read from the old
    user attribute (records.read_record)."""
    database = spec.database_url()
    if database is None:  # a storage of files: its records are files beside it
        folder = artifact_dir(spec)
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        return AtomicFileSystemArtifactStore(folder)
    # Optuna's RDBStorage has its engine (and its connection settings) at hand; a storage that
    # wraps it may not, and then the URL gives one.
    engine = getattr(storage, "engine", None)
    if not isinstance(engine, sa.engine.Engine):
        engine = _engine(database)
    store = DatabaseArtifactStore(engine)
    if create:
        with spec.cell_lock(_TABLE_LOCK):
            store.create_table()
    return store


class AtomicFileSystemArtifactStore(FileSystemArtifactStore):
    """Optuna's file store, with writes that are whole or absent (kfaclab.atomic: a kill while a
    record is written leaves no half record) and reads that never follow a symbolic link (a
    link planted in artifacts/ would hand any file on the machine to the record reader)."""

    def open_reader(self, artifact_id: str) -> BinaryIO:
        path = self._get_filepath(artifact_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"artifact {artifact_id} is not in {self._base_path}") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(errno.ELOOP, "a symbolic link, not a file", str(path)) from None
            raise
        return os.fdopen(fd, "rb")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        with atomic.open_atomic(self._get_filepath(artifact_id), "wb") as handle:
            shutil.copyfileobj(content_body, handle)


_ENGINES: dict[str, sa.engine.Engine] = {}


def _engine(url: str) -> sa.engine.Engine:
    if url not in _ENGINES:
        _ENGINES[url] = sa.create_engine(driver_url(url), pool_pre_ping=True)
    return _ENGINES[url]


class DatabaseArtifactStore:
    """Optuna's ArtifactStore protocol on one table of a SQLAlchemy database (PostgreSQL,
    SQLite): ``artifact_id`` → bytes. Records are a few kB compressed, so whole-value reads and
    writes are fine; nothing streams."""

    def __init__(self, engine: sa.engine.Engine) -> None:
        self.engine = engine
        self.table = sa.Table(
            TABLE,
            sa.MetaData(),
            sa.Column("artifact_id", sa.String(64), primary_key=True),
            sa.Column("data", sa.LargeBinary, nullable=False),
        )

    @property
    def url(self) -> str:
        return str(self.engine.url)  # SQLAlchemy shows the password as ***

    def create_table(self) -> None:
        self.table.create(self.engine, checkfirst=True)

    # Reads and writes ride out a database restart like every storage call (storage/retry.py).
    @retrying
    def open_reader(self, artifact_id: str) -> BinaryIO:
        query = sa.select(self.table.c.data).where(self.table.c.artifact_id == artifact_id)
        try:
            with self.engine.connect() as conn:
                data = conn.execute(query).scalar_one_or_none()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            # No table yet: a database whose studies were written before artifacts existed.
            if not sa.inspect(self.engine).has_table(TABLE):
                raise ArtifactNotFound(f"no {TABLE} table in the database") from exc
            raise
        if data is None:
            raise ArtifactNotFound(f"artifact {artifact_id} is not in {TABLE}")
        return io.BytesIO(bytes(data))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self._insert(artifact_id, content_body.read())

    @retrying
    def _insert(self, artifact_id: str, data: bytes) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(self.table.insert().values(artifact_id=artifact_id, data=data))
        except sa.exc.IntegrityError:
            # A retry after a commit whose answer the restart swallowed: the row is there.
            query = sa.select(self.table.c.data).where(self.table.c.artifact_id == artifact_id)
            with self.engine.connect() as conn:
                if conn.execute(query).scalar_one_or_none() != data:
                    raise

    def remove(self, artifact_id: str) -> None:
        where = self.table.c.artifact_id == artifact_id
        with self.engine.begin() as conn:
            result = conn.execute(self.table.delete().where(where))
        if result.rowcount == 0:
            raise ArtifactNotFound(f"artifact {artifact_id} is not in {TABLE}")


RecordStore = FileSystemArtifactStore | DatabaseArtifactStore
