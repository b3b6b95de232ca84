"""Filesystem access through fsspec: local folders and buckets alike.

Everything that touches OUT or INPUT goes through here, so that atomic writes and the redaction of
credentials are done in one place.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

#: Storage options whose values may be shown (in ``_run.json`` and logs). Every other value is
#: treated as a secret, because fsspec back ends name credentials inconsistently.
PUBLIC_OPTION_KEYS = frozenset(
    {"endpoint_url", "region_name", "anon", "use_ssl", "requester_pays", "default_block_size",
     "profile", "version_aware", "default_fill_cache"}
)

REDACTED = "***"

#: Option names that hold credentials: their values stay strings as typed (``password=0012``) and
#: are redacted whatever their type.
_SECRET_KEY = re.compile(r"key|secret|token|pass|credential|auth|sig|session", re.IGNORECASE)


def parse_storage_options(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings from the command line into fsspec storage options.

    ``true``/``false`` become booleans and integers become ``int`` (``max_concurrency=4``), except
    for credential-like keys (``key``, ``secret``, ``token``, ``password``...), which stay strings
    as typed (``password=0012345``). A dotted key (``client_kwargs.region_name=eu-west-1``) makes a
    nested dictionary.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"storage option {pair!r} is not of the form KEY=VALUE")
        value: Any = raw
        if raw.lower() in {"true", "false"}:
            value = raw.lower() == "true"
        *parents, leaf = key.split(".")
        if not _SECRET_KEY.search(leaf) and re.fullmatch(r"-?\d+", raw):
            value = int(raw)
        target = options
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return options


def merge_options(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, nested tables merged key by key (``-s client_kwargs.region_name=x``
    keeps the job file's ``client_kwargs.endpoint_url``)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_options(out[key], value)
        else:
            out[key] = value
    return out


def url_secrets(url: str) -> list[str]:
    """The credentials a URL carries (``user:password`` and the password alone, the query
    string), so that error messages quoting them in another shape can be redacted too."""
    from urllib.parse import urlsplit

    if "://" not in url:
        return []
    head = url.split("://", 1)[1].split("/", 1)[0]
    found = []
    if "@" in head and ":" in head.rsplit("@", 1)[0]:  # a bare user name is not a secret
        userinfo = head.rsplit("@", 1)[0]
        found += [userinfo, userinfo.partition(":")[2]]
    query = urlsplit(url).query
    return [s for s in (*found, query) if s]


def secret_values(options: Mapping[str, Any]) -> list[str]:
    """Every string value in ``options`` that is not known to be public, longest first."""
    found: list[str] = []
    for key, value in options.items():
        if isinstance(value, Mapping):
            found.extend(secret_values(value))
        elif key in PUBLIC_OPTION_KEYS or isinstance(value, bool):
            if isinstance(value, str):  # an endpoint_url may carry user:password@ or a token
                found.extend(url_secrets(value))
        elif isinstance(value, str) and value:
            found.append(value)
        elif isinstance(value, (int, float)) and _SECRET_KEY.search(str(key)):
            found.append(str(value))  # a numeric credential from a job file (timeout=600 is not)
    return sorted(set(found), key=len, reverse=True)


def redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``options`` safe to write anywhere: non-public values replaced by ``***``."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, Mapping):
            out[key] = redact_options(value)
        elif key in PUBLIC_OPTION_KEYS:
            out[key] = redact_url(value) if isinstance(value, str) else value
        else:
            out[key] = REDACTED
    return out


# ``user:password@`` after a URL's scheme, and a URL's query string (pre-signed URLs carry their
# signature or token there)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s'\"]+@")
_URL_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?'\"]*)\?[^\s'\"]+")


def redact_url(url: str) -> str:
    """``url`` safe to write or print: ``user:password@`` and the query string become ``***``.

    >>> redact_url("https://bob:hunter2@example.org/a.csv?X-Amz-Signature=abc")
    'https://***@example.org/a.csv?***'
    """
    return _URL_QUERY.sub(_redact_query, _URL_USERINFO.sub(f"{REDACTED}@", url))


def _redact_query(match: re.Match) -> str:
    # a file URL has no query: a '?' there is part of a file name
    return match.group(0) if match.group(1).lower().startswith("file:") else f"{match.group(1)}?{REDACTED}"


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` safe to write anywhere: every occurrence of a secret replaced (error messages may
    echo request data), the credentials and query strings of the URLs in it (:func:`redact_url`)
    too, and made :func:`printable`."""
    for secret in secrets:
        if len(secret) >= 3:
            text = text.replace(secret, REDACTED)
    return printable(redact_url(text))


def printable(text: str) -> str:
    """``text`` as UTF-8 can hold it (a Parquet string, a JSON file, a terminal).

    A local file name that is not UTF-8 (Latin-1 from an old file server, say) reaches Python with
    each such byte as a lone surrogate; those bytes are written as ``\\xe9`` escapes. Files are
    still opened by their real names.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def location(url: str) -> str:
    """What identifies INPUT or OUT across runs: a local path made absolute with its links resolved
    (``corpus``, ``./corpus/`` and ``/data/corpus`` are one place, and the same relative name typed
    in another folder is not), a URL without trailing slash and without its credentials."""
    if "://" not in url and not url.startswith("file:"):
        return os.path.realpath(url)
    if url.startswith(("file://", "local://")):  # the same local folder, typed as a URL
        return os.path.realpath(fsspec.core.url_to_fs(url)[1])
    return redact_url(url).rstrip("/")


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None):
    """Return ``(fs, path)`` for a local path or any fsspec URL."""
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return fs, path.rstrip("/") or path


def absolute(url: str) -> str:
    """A local path made absolute (workers elsewhere resolve a relative one in their own folder);
    URLs with a protocol are returned as they are."""
    return url if "://" in url else os.path.abspath(url)


def join(*parts: str) -> str:
    """Join path parts with ``/`` (fsspec paths are POSIX-like on every back end)."""
    return posixpath.join(*parts)


def write_bytes_atomic(fs, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a partial file.

    The data goes to a hidden temporary name in the same folder first; Arrow datasets ignore names
    starting with ``.``. On object stores the final PUT is atomic by itself.
    """
    parent = posixpath.dirname(path) if "/" in path else ""
    if is_local(fs):
        import os

        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    else:
        if parent and not _is_object_store(fs):
            fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(path, data)


#: Back ends without real folders: a key is written as it is, and ``makedirs`` would only check
#: (and possibly create) the bucket on every write, which a least-privilege role may not allow.
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss"})


def _protocols(fs) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def protocol(fs) -> str:
    """``fs``'s main protocol, as its URLs start (``"s3"``, ``"file"``)."""
    return _protocols(fs)[0]


def _is_object_store(fs) -> bool:
    return bool(_OBJECT_STORES.intersection(_protocols(fs)))


def plain_strings(table: pa.Table) -> pa.Table:
    """``table`` with ``large_string`` columns as ``string`` (pandas 3 hands Arrow large strings):
    every grv-batch table uses one string type, so readers can union them without casts."""
    schema = pa.schema([f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f
                        for f in table.schema], metadata=table.schema.metadata)
    return table if schema.equals(table.schema) else table.cast(schema)


def write_parquet_atomic(fs, path: str, table: pa.Table, *, compression: str = "zstd") -> None:
    """Write one Arrow table as a Parquet file at ``path``, atomically."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=None if compression == "none" else compression)
    write_bytes_atomic(fs, path, sink.getvalue())


def write_json_atomic(fs, path: str, payload: Any) -> None:
    """Write ``payload`` as indented JSON at ``path``, atomically."""
    write_bytes_atomic(fs, path, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())


def read_json(fs, path: str) -> Any:
    """Read a JSON file."""
    with fs.open(path, "rb") as handle:
        return json.loads(handle.read())


def exists(fs, path: str) -> bool:
    """``fs.exists`` without stale listings on object stores."""
    try:
        fs.invalidate_cache(path)
    except Exception:  # noqa: BLE001 - not every filesystem caches
        pass
    return fs.exists(path)


def remove_if_exists(fs, path: str) -> None:
    """Delete the file at ``path`` if there is one (a leftover of an earlier attempt or run)."""
    if exists(fs, path):
        fs.rm(path)


def list_names(fs, folder: str) -> list[str]:
    """Base names of the files directly in ``folder`` (empty when it does not exist)."""
    try:
        fs.invalidate_cache(folder)
    except Exception:  # noqa: BLE001
        pass
    if not fs.exists(folder):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(folder, detail=False))


def read_parquet(fs, path: str, columns: list[str] | None = None) -> pa.Table | None:
    """A Parquet file or a folder of Parquet shards as one Arrow table; ``None`` when absent or empty.

    A folder is read as an Arrow dataset: hive partition folders (``gender=male/``) become
    columns, names starting with ``.`` or ``_`` (temporary files, completion records) are skipped,
    and the shards' schemas are unified with promotion, so a metadata column that is all-null
    (typed ``null``) in one shard and typed in another is not an error. ``columns``: read only
    those of them that exist.
    """
    import pyarrow.dataset as ds

    if not exists(fs, path):
        return None
    if fs.isfile(path):
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            wanted = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
            return parquet.read(columns=wanted)
    dataset = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive",
                         ignore_prefixes=[".", "_"])
    fragments = list(dataset.get_fragments())
    if not fragments:
        return None
    schemas = [fragment.physical_schema for fragment in fragments]
    if dataset.partitioning is not None and dataset.partitioning.schema is not None:
        schemas.append(dataset.partitioning.schema)
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    dataset = dataset.replace_schema(schema)  # the files found above, read with the unified schema
    wanted = None if columns is None else [c for c in columns if c in schema.names]
    return dataset.to_table(columns=wanted)


def is_local(fs) -> bool:
    protocol = _protocols(fs)
    return "file" in protocol or "local" in protocol


def full_url(fs, path: str) -> str:
    """``path`` of ``fs`` as the user would type it: ``s3://bucket/key``, or a local path (HTTP's
    paths are whole URLs already)."""
    if is_local(fs) or any(path.startswith(f"{p}://") for p in _protocols(fs)):
        return path
    return f"{protocol(fs)}://{path}"


def without_query(fs, path: str) -> str:
    """``path`` of ``fs`` without an HTTP(S) URL's query string (a pre-signed URL's credential,
    ``?X-Amz-Signature=...``): what to name the file by. Other filesystems' names may hold a ``?``."""
    return path.split("?", 1)[0] if {"http", "https"} & set(_protocols(fs)) else path


# --- Reading INPUT ------------------------------------------------------------------------------


class ReadFailed(OSError):
    """Reading an INPUT file failed in the storage layer (network, bucket, disk), not in its audio.

    Worth retrying: the same file may read fine a moment later.
    """


class GuardedReader(io.RawIOBase):
    """A read-only file object over ``raw`` that keeps the first exception a read or seek raises.

    Decoders read through C callbacks (libsndfile's virtual I/O, FFmpeg's) that swallow a Python
    exception and take the failed read for the end of the file: a network error half-way through
    an Ogg file decoded as a shorter, valid-looking file. Here a failed read answers "end of file"
    too, and :attr:`error` says it was not one; :func:`open_input` turns it into :class:`ReadFailed`
    whatever the decoder made of the short read.
    """

    def __init__(self, raw: Any):
        super().__init__()
        self._raw = raw
        self.error: BaseException | None = None
        self._readinto = getattr(raw, "readinto", None)  # no copy where the file offers it
        # decoders choose by file name (``path`` on fsspec's files, ``name`` on local ones)
        self.path = getattr(raw, "path", None) or getattr(raw, "name", "")
        self.name = self.path

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.error is not None:
            return 0
        try:
            if self._readinto is not None:
                return self._readinto(buffer) or 0
            data = self._raw.read(len(buffer))
        except Exception as exc:  # noqa: BLE001 - kept for open_input; the decoder sees EOF
            self.error = exc
            return 0
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.error is None:
            try:
                return self._raw.seek(offset, whence)
            except Exception as exc:  # noqa: BLE001
                self.error = exc
        return self.tell()

    def tell(self) -> int:
        try:
            return self._raw.tell()
        except Exception:  # noqa: BLE001
            return 0


#: Libraries whose exceptions mean "the storage or the network failed" without being OSErrors.
_STORAGE_ERROR_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests",
                          "google.api_core", "google.auth", "azure.core")


def is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the file system or the network rather than from grv-batch."""
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    return any(cls.__module__.startswith(_STORAGE_ERROR_MODULES) for cls in type(exc).__mro__)


#: Exceptions that are about the file itself, not the storage: retrying cannot help.
_PERMANENT_OPEN_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _file_location(url: str, storage_options: Mapping[str, Any] | None = None):
    """``(fs, path)`` of one listed file's URL (as :func:`full_url` writes it). Unlike
    ``fsspec.open``, ``::`` is not read as a chain of file systems: it is part of a name here
    (``take::1.wav``)."""
    if "://" not in url:
        return fsspec.filesystem("file"), url
    fs = fsspec.filesystem(url.split("://", 1)[0], **dict(storage_options or {}))
    return fs, fs._strip_protocol(url)


@contextlib.contextmanager
def open_input(url: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[GuardedReader]:
    """Open an INPUT file for decoding.

    Raises
    ------
    ReadFailed
        Opening failed for a reason other than the file being absent or forbidden, or a read or
        seek failed while the file was open (also when the decoder then raised an error of its
        own about the short data: the short data was not the file's).
    FileNotFoundError, PermissionError
        As raised by the file system.
    """
    try:
        fs, path = _file_location(url, storage_options)
        raw = fs.open(path, "rb")
    except _PERMANENT_OPEN_ERRORS:
        raise
    except Exception as exc:
        if not is_storage_error(exc):  # e.g. an option the back end rejects: retrying cannot help
            raise
        raise ReadFailed(f"cannot open: {type(exc).__name__}: {exc}") from exc
    reader = GuardedReader(raw)
    try:
        yield reader
    except Exception:
        if reader.error is None:
            raise
    finally:
        with contextlib.suppress(Exception):
            raw.close()
    if reader.error is not None:
        exc = reader.error
        raise ReadFailed(f"read failed: {type(exc).__name__}: {exc}") from exc
