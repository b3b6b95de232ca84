"""Reading the run's tables and writing the report, through fsspec (local folders or buckets)."""

from __future__ import annotations

import io

import pandas as pd

from grv_batch import storage

from ._config import ReportInputError


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


def rejoin_metadata(predictions: pd.DataFrame, meta: pd.DataFrame, *, source: str = "metadata") -> pd.DataFrame:
    """Replace the carried metadata columns of ``predictions`` by those of ``meta`` (joined on path).

    A column named like one the pipeline writes (``label``, ``p_male``...) is carried as
    ``meta_<name>``, as ``grv-batch run`` does.

    Raises
    ------
    ReportInputError
        When no path of ``meta`` is a file of the run (a report without its ground truth or
        groups would look like a finished one).
    """
    from grv_batch.pipeline import rename_metadata_clashes

    meta, _ = rename_metadata_clashes(meta)
    if len(predictions) and not predictions["path"].isin(meta["path"]).any():
        examples = ", ".join(map(str, meta["path"].head(2)))
        raise ReportInputError(f"{source}: no path matches a file of the run (e.g. {examples}; "
                               f"paths are relative to the run's INPUT, as in the files table)")
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(storage.plain_strings(pa.Table.from_pandas(df, preserve_index=False)), buf)
    return buf.getvalue()
