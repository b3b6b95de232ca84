"""Reading the run's tables and writing the report, through fsspec (local folders or buckets)."""

from __future__ import annotations

import io

import pandas as pd

from grv_batch import storage


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
    """A Parquet file or a folder of Parquet shards as a DataFrame; ``None`` when absent or empty
    (see :func:`grv_batch.storage.read_parquet`)."""
    fs, root = storage.filesystem(url, storage_options)
    table = storage.read_parquet(fs, root, columns)
    return None if table is None else table.to_pandas()


def rejoin_metadata(predictions: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Replace the carried metadata columns of ``predictions`` by those of ``meta`` (joined on path)."""
    replaced = [c for c in meta.columns if c != "path" and c in predictions.columns]
    base = predictions.drop(columns=replaced)
    merged = base.merge(meta, on="path", how="left", validate="many_to_one")
    merged.index = predictions.index
    return merged


def write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write a whole file atomically (local or bucket)."""
    fs, path = storage.filesystem(url, storage_options)
    storage.write_bytes_atomic(fs, path, data)


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()
