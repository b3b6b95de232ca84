"""Reading the run's tables and writing the report, through fsspec (local folders or buckets)."""

from __future__ import annotations

import io
import posixpath

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def _fs(url: str, storage_options: dict | None) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path


def join_url(base: str, *parts: str) -> str:
    """``base/part/...`` for local paths and URLs alike."""
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def read_table(
    out: str, name: str, storage_options: dict | None = None, *, columns: list[str] | None = None
) -> pd.DataFrame | None:
    """One Parquet dataset of OUT as a DataFrame; ``None`` when the table does not exist.

    ``columns`` reads only those of the listed columns that exist (the features table also holds
    the 128 mel means, which the report does not need).
    """
    return read_dataset(join_url(out, name), storage_options, columns=columns)


def read_dataset(
    url: str, storage_options: dict | None = None, *, columns: list[str] | None = None
) -> pd.DataFrame | None:
    """A Parquet file or a folder of Parquet files as a DataFrame; ``None`` when absent or empty.

    Shards are read one by one and concatenated with schema promotion, so a metadata column that
    is all-null in one shard and typed in another is not an error.
    """
    fs, root = _fs(url, storage_options)
    if not fs.exists(root):
        return None
    if fs.isfile(root):
        files = [root]
    else:
        files = sorted(
            p for p in fs.find(root) if p.endswith(".parquet") and not posixpath.basename(p).startswith((".", "_"))
        )
    if not files:
        return None
    tables = []
    for f in files:
        with fs.open(f, "rb") as fh:
            pf = pq.ParquetFile(fh)
            cols = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
            tables.append(pf.read(columns=cols))
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    return table.to_pandas()


def rejoin_metadata(predictions: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Replace the carried metadata columns of ``predictions`` by those of ``meta`` (joined on path)."""
    replaced = [c for c in meta.columns if c != "path" and c in predictions.columns]
    base = predictions.drop(columns=replaced)
    merged = base.merge(meta, on="path", how="left", validate="many_to_one")
    merged.index = predictions.index
    return merged


def write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write a whole file; local files go through a temporary name and a rename."""
    fs, path = _fs(url, storage_options)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        tmp = path + ".tmp"
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()
