"""What a command checks, before any work, about the stores its flags name: the Optuna storage (--storage) and the
MLflow tracking URI (--tracking-uri), so that a path or URL that cannot be one fails in one line with nothing
written, not in a traceback (or minutes of retries) after the teachers were trained. kdtrain.cli calls these;
kdtrain.study.search and kdtrain.tracking.client open the stores themselves."""

from __future__ import annotations

import contextlib
import errno
import os
import urllib.parse
from pathlib import Path

from kdtrain.errors import KdtrainError
from kdtrain.paths import redact
from kdtrain.study import search
from kdtrain.study.storage import db_error


def storage(url: str | None, create: bool = False):
    """The Optuna storage a command names (--storage, else $KDTRAIN_STORAGE, else the default journal), opened if it
    exists, else None; one clear line, before any work, for what cannot be one: a journal path that is not a
    regular file, not a journal, or cannot be created (create: the sweep will create it), an in-memory database.
    Opening an existing journal reads it through (Optuna replays it), so a broken one fails here."""
    url = url or search.default_storage()
    if search.is_rdb(url):
        _check_sqlite(url, create)
        return search.open_storage(url)
    path = Path(url)
    with contextlib.suppress(RuntimeError, ValueError):  # ~user that does not exist, a NUL: _exists names it
        path = path.expanduser()
    exists = _exists(path, url)
    if exists:
        if path.is_dir():
            return search.open_storage(url)  # its own message
        if not path.is_file():
            raise KdtrainError(
                f"the Optuna storage {path} is not a regular file (a device, a pipe); give a journal "
                "file such as mlruns/optuna.journal or an RDB URL (postgresql://...)"
            )
        try:
            return search.open_storage(url)
        except KdtrainError:
            raise
        except OSError as e:
            raise KdtrainError(f"cannot read the Optuna storage {path}: {e.strerror or e}") from None
        except Exception as e:  # noqa: BLE001
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise KdtrainError(
                f"the Optuna storage {path} is not an Optuna journal ({type(e).__name__}: {reason}); "
                "give the journal kdtrain wrote, a new path, or an RDB URL"
            ) from None
    if create:  # the sweep creates the journal (and a .lock beside it): refuse now what it could not create
        _check_creatable(path, url)
    return None


def _check_sqlite(url: str, create: bool) -> None:
    """storage's RDB case: a SQLite URL that names no file (in memory), or (create False) no file that exists."""
    scheme, _, rest = url.partition("://")
    if scheme.split("+")[0] == "sqlite":
        path = rest[1:].split("?")[0]
        if path in ("", ":memory:") or path.startswith("file::memory:"):
            raise KdtrainError(
                f"the Optuna storage {redact(url)} is an in-memory database: the study would "
                "vanish with this process; give a file, e.g. sqlite:///optuna.db"
            )
        if not create and not _exists(path, url):
            raise KdtrainError(f"no Optuna storage at {redact(url)}: run a sweep first, or pass --storage")


def _check_creatable(path: Path, url: str) -> None:
    """A journal path the sweep could not create (with its .lock): its first existing folder is not a folder, not
    writable, or a name on the way is too long for the file system."""
    parent = path.absolute().parent
    while not _exists(parent, url):
        parent = parent.parent
    limit = 255
    with contextlib.suppress(OSError, ValueError):
        limit = os.pathconf(parent, "PC_NAME_MAX")
    new = [*path.absolute().relative_to(parent).parts[:-1], path.name + ".lock"]
    why = (
        f"{parent} is not a folder"
        if not parent.is_dir()
        else f"{parent} is not writable"
        if not os.access(parent, os.W_OK | os.X_OK)
        else os.strerror(errno.ENAMETOOLONG)
        if any(len(n.encode()) > limit for n in new)
        else None
    )
    if why:
        raise KdtrainError(
            f"cannot create the Optuna storage {str(path)[:200]}: {why} (give a journal path in a "
            "writable folder, or an RDB URL)"
        )


def _exists(path: Path, url: str) -> bool:
    """path.exists(), one clear line for a path that the file system refuses to look up."""
    try:
        return Path(path).expanduser().exists()
    except (OSError, RuntimeError, ValueError) as e:  # a name too long, ~user that does not exist, a NUL
        raise KdtrainError(
            f"the Optuna storage {url[:200]!r}: {getattr(e, 'strerror', None) or e} (give a journal path or an RDB URL)"
        ) from None


TRACKING_SCHEMES = (
    "",
    "file",
    "sqlite",
    "http",
    "https",
    "postgresql",
    "mysql",
    "mssql",
    "databricks",
    "databricks-uc",
    "uc",
)
"""The tracking URI schemes MLflow knows (its client refuses others only when a run is logged)."""


def check_tracking(given: str | None) -> None:
    """One clear line, before any work, for an MLflow tracking URI (--tracking-uri, else $MLFLOW_TRACKING_URI) that
    MLflow would trip on only after the teachers were trained: not a URI, an unknown scheme, an in-memory or
    non-SQLite database file, a file where a store folder belongs, a database that cannot be reached (MLflow
    retries for minutes). Servers (http) are checked by tracking.check_reachable."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return  # the default: SQLite under kdtrain's home
    what = f"the MLflow tracking URI {redact(uri)[:300]!r} ({'--tracking-uri' if given else 'MLFLOW_TRACKING_URI'})"
    if not uri.isprintable() or uri != uri.strip():
        raise KdtrainError(f"{what} contains control characters or surrounding spaces")
    try:
        parts = urllib.parse.urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError as e:
        raise KdtrainError(f"{what} is not a valid URI ({e})") from None
    scheme = parts.scheme.split("+")[0].lower() if len(parts.scheme) > 1 else ""  # C:\... is a path
    if scheme not in TRACKING_SCHEMES:
        raise KdtrainError(
            f"{what}: unknown scheme '{parts.scheme}'; use http(s)://HOST:PORT (an MLflow server), "
            "sqlite:///PATH.db, postgresql://..., or a local folder"
        )
    if scheme in ("http", "https") and " " in uri:
        raise KdtrainError(f"{what} contains a space (write it as %20)")
    try:
        _check_tracking_path(uri, parts, scheme, what)
    except (OSError, RuntimeError, ValueError) as e:  # a name too long, ~user that does not exist, a NUL (%00)
        raise KdtrainError(f"{what}: {getattr(e, 'strerror', None) or e}") from None
    if scheme in ("postgresql", "mysql", "mssql"):
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(
                uri, connect_args={"connect_timeout": 10} if scheme in ("postgresql", "mysql") else {}
            )
        except ImportError:
            raise KdtrainError(f"{what} needs its database driver (e.g. pip install 'kdtrain[postgres]')") from None
        except Exception as e:  # noqa: BLE001
            raise KdtrainError(f"{what} is not a database URL SQLAlchemy can read: {db_error(e)}") from None
        try:
            with engine.connect():
                pass
        except Exception as e:  # noqa: BLE001
            raise KdtrainError(f"cannot reach the MLflow tracking database {redact(uri)}: {db_error(e)}") from None
        finally:
            engine.dispose()


def _check_tracking_path(uri: str, parts, scheme: str, what: str) -> None:
    """check_tracking's local cases: a SQLite file, or a store folder."""
    if scheme == "sqlite":
        path = uri.partition("://")[2][1:].split("?")[0]
        if path in ("", ":memory:") or path.startswith("file::memory:"):
            raise KdtrainError(
                f"{what} is an in-memory database: the runs would vanish with this process; give "
                "a file, e.g. sqlite:///mlruns/mlflow.db"
            )
        p = Path(path).expanduser()
        if p.is_dir():
            raise KdtrainError(f"{what} names a folder; give the database file, e.g. sqlite:///{p / 'mlflow.db'}")
        if p.is_file() and p.stat().st_size:
            with open(p, "rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    raise KdtrainError(f"{what}: {p} is not a SQLite database; give a new file or the MLflow database")
    elif scheme in ("", "file"):
        p = Path(urllib.parse.unquote(parts.path) if scheme == "file" else uri).expanduser()
        if p.exists() and not p.is_dir():
            raise KdtrainError(f"{what}: {p} is a file; a local MLflow store is a folder, or use sqlite:///PATH.db")
