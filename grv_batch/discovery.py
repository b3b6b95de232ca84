"""Finding the audio files of a corpus and joining their metadata.

A corpus is a local folder, a single file or any fsspec URL. Each file found gets a ``file_id``
that depends only on its path relative to INPUT, so the same corpus gives the same ids wherever it
is mounted and however often it is listed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import posixpath
import stat
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pydantic import field_validator

from grv_batch import storage
from grv_batch._params import Params
from grv_batch.stages.decode import AV_EXTENSIONS

# The order and the set are part of a job's fingerprint (an OUT is resumed only by the same job):
# dict.fromkeys keeps one "*.mp3" now that MP3 is among the extensions PyAV (FFmpeg) decodes.
DEFAULT_PATTERNS = tuple(dict.fromkeys((
    "*.wav", "*.flac", "*.ogg", "*.oga", "*.opus", "*.mp3", "*.aif", "*.aiff", "*.aifc",
    "*.sph", "*.nist", "*.caf", "*.au",
    *(f"*{ext}" for ext in AV_EXTENSIONS))))

#: Rough bytes per second of audio by extension, used only to balance batches before decoding.
_BYTES_PER_SECOND = {".wav": 32_000, ".flac": 18_000, ".ogg": 10_000, ".oga": 10_000,
                     ".mp3": 16_000, ".aif": 32_000, ".aiff": 32_000, ".aifc": 32_000,
                     ".sph": 32_000, ".nist": 32_000, ".opus": 4_000, ".caf": 32_000, ".au": 32_000,
                     ".m4a": 16_000, ".m4b": 8_000, ".mp4": 16_000, ".aac": 16_000, ".webm": 8_000,
                     ".mka": 16_000, ".mkv": 16_000, ".wma": 16_000, ".3gp": 2_000, ".amr": 1_600}


class InputParams(Params):
    """Which files of INPUT are audio.

    Parameters
    ----------
    patterns
        Glob patterns matched against file names (not folders), case-insensitively.
    exclude
        Glob patterns matched against the path relative to INPUT; matching files are skipped.
    """

    patterns: list[str] = list(DEFAULT_PATTERNS)
    exclude: list[str] = []

    @field_validator("patterns")
    @classmethod
    def _names_only(cls, patterns: list[str]) -> list[str]:
        # a pattern that can never match would make every file "unmatched" without a word
        if not patterns:
            raise ValueError("at least one pattern is needed (e.g. '*.wav')")
        with_folder = [p for p in patterns if "/" in p]
        if with_folder:
            raise ValueError(f"patterns match file names, not folders: {with_folder} can never match "
                             f"(use exclude, which matches the path relative to INPUT, to leave folders out)")
        return patterns


#: ``gender`` values read as "no ground truth" (after trimming and lowercasing).
NO_GROUND_TRUTH = ("", "unknown", "other", "na", "n/a", "none")


class InputError(Exception):
    """INPUT or metadata is unusable; the message is a one-line reason for the user."""


@dataclass(frozen=True, slots=True)  # slots: a million of them in the client
class AudioFile:
    """One discovered file."""

    file_id: str
    path: str  # relative to INPUT, POSIX separators
    url: str  # what fsspec opens
    size: int
    #: why the file cannot be read, known from the listing (it becomes an error row unopened)
    problem: str | None = None
    #: which content the listing saw at ``path`` (:func:`content_version`); a batch id covers it
    version: str = ""

    @property
    def estimated_s(self) -> float:
        """Audio seconds guessed from size and extension (for batch balancing only)."""
        ext = posixpath.splitext(self.path)[1].lower()
        return max(self.size / _BYTES_PER_SECOND.get(ext, 32_000), 0.1)


@dataclass
class Corpus:
    """The files found under INPUT, sorted by path."""

    input_url: str
    root: str
    files: list[AudioFile]
    protocol: str
    unmatched: int = 0  # files under INPUT that matched no pattern


def file_id_for(relative_path: str) -> str:
    """Stable 16-hex-digit id of a file, from its path relative to INPUT. A local name's bytes that
    are not UTF-8 count as they are, so a file named ``lat\\xe9.wav`` beside one whose name has the
    byte 0xE9 (both written ``lat\\xe9.wav`` in the tables: :func:`grv_batch.storage.printable`)
    keeps its own id."""
    return hashlib.blake2b(relative_path.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


#: Listing fields that change when an object's content does, most telling first: a content hash
#: or generation where the store keeps one (S3 and HTTP ``ETag``, Azure ``etag``, GCS ``generation``),
#: else the modification time (local files, SFTP, ...).
_VERSION_FIELDS = ("ETag", "etag", "generation", "Content-MD5", "Digest",
                   "mtime", "LastModified", "last_modified", "updated", "modified", "created")


def content_version(info: Mapping[str, Any]) -> str:
    """Which content a listing entry ``info`` (fsspec's ``info``/``find(detail=True)``) describes.

    The size and the first of ``_VERSION_FIELDS`` present, as text. A file rewritten in place
    gets another version, so its batch runs again when a run resumes; ``touch`` does too (a
    local file has no content hash to tell an identical rewrite apart).
    """
    stamp = next((info[k] for k in _VERSION_FIELDS if info.get(k) not in (None, "")), "")
    return f"{int(info.get('size') or 0)}:{stamp}"


def discover(input_url: str, params: InputParams = InputParams(), *,
             storage_options: Mapping[str, Any] | None = None) -> Corpus:
    """List the audio files under ``input_url``, recursively.

    Raises
    ------
    InputError
        When INPUT does not exist or holds no audio file.
    """
    fs, root = storage.filesystem(input_url, storage_options)
    protocol = storage.protocol(fs)
    try:
        fs.invalidate_cache()
    except Exception:  # noqa: BLE001 - not every filesystem caches
        pass
    try:
        exists = fs.exists(root)
        # In a bucket, "audio" can be an object and a prefix at once: "audio/" names the prefix
        is_file = exists and fs.isfile(root) and not (input_url.endswith("/") and fs.isdir(root))
        if is_file:
            found = {root: fs.info(root)}
            root = posixpath.dirname(storage.without_query(fs, root))
        elif exists and storage.is_local(fs):
            found = _find_local(fs, root)
        elif exists:
            found = fs.find(root, detail=True, withdirs=False)
    except PermissionError as exc:
        raise InputError(f"INPUT {input_url} cannot be read: permission denied") from exc
    except Exception as exc:  # noqa: BLE001 - an unreachable endpoint, bad credentials...
        raise InputError(f"INPUT {input_url} cannot be listed: {type(exc).__name__}: {exc}") from exc
    if not exists:
        _raise_if_unreachable(fs, root, input_url)
        raise InputError(f"INPUT {input_url} does not exist")
    patterns = [p.lower() for p in params.patterns]
    files: list[AudioFile] = []
    unmatched = 0
    for path, info in found.items():
        # a signed URL's query string is a credential: read with it, never name the file by it
        named = storage.without_query(fs, path)
        relative = posixpath.relpath(named, root) if root else named
        name = posixpath.basename(named).lower()
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            unmatched += 1
            continue
        shown = storage.printable(relative)
        if any(fnmatch.fnmatchcase(relative, p) or fnmatch.fnmatchcase(shown, p) for p in params.exclude):
            continue
        files.append(AudioFile(file_id=file_id_for(relative), path=shown,
                               url=storage.full_url(fs, path), size=int(info.get("size") or 0),
                               problem=_unreadable_entry(path, info),
                               version=content_version(info)))
    files.sort(key=lambda f: f.path)
    if not files:
        raise InputError(
            f"INPUT {input_url} holds no audio file matching {', '.join(params.patterns)}"
        )
    return Corpus(input_url=input_url, root=root, files=files, protocol=protocol,
                  unmatched=unmatched)


def _raise_if_unreachable(fs, root: str, input_url: str) -> None:
    """fsspec's ``exists`` is False for a server that cannot be reached as well as for a missing
    file (HTTP's swallows every error): ask once more, so that the user is told which it is."""
    if storage.is_local(fs):
        return
    try:
        fs.info(root)
    except FileNotFoundError as exc:
        # HTTP's info raises FileNotFoundError for any failure, with the real one as its cause
        cause = exc.__cause__
        status = getattr(cause, "status", None)
        if isinstance(cause, OSError) and status is None:  # refused, no such host, TLS...
            raise InputError(f"INPUT {input_url} cannot be reached: {type(cause).__name__}: {cause}") from exc
        if isinstance(status, int) and status not in (404, 410):
            raise InputError(f"INPUT {input_url} cannot be read: the server answered HTTP {status} "
                             f"{getattr(cause, 'message', '')}".rstrip()) from exc
    except PermissionError as exc:
        raise InputError(f"INPUT {input_url} cannot be read: permission denied") from exc
    except Exception as exc:  # noqa: BLE001 - another back end's refused connection, bad credentials...
        raise InputError(f"INPUT {input_url} cannot be reached: {type(exc).__name__}: {exc}") from exc


def load_metadata(url: str, *, input_url: str | None = None,
                  storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Read a metadata CSV or Parquet file (local or in a bucket) with one row per file.

    The ``path`` column is made relative to INPUT where it was given as a full URL or path.

    Raises
    ------
    InputError
        When the file cannot be read, has no ``path`` column, or lists a path twice.
    """
    try:
        fs, path = storage.filesystem(url, storage_options)
        if fs.isdir(path):  # a Parquet dataset (a folder of shards)
            table = storage.read_parquet(fs, path)
            if table is None:
                raise FileNotFoundError(f"no Parquet files in {url}")
            frame = table.to_pandas()
        else:
            with fs.open(path, "rb") as handle:
                if path.lower().endswith((".parquet", ".pq")):
                    frame = pd.read_parquet(handle)
                else:
                    # low_memory=False: in chunks, pandas gives a column numbers in one chunk and
                    # text in another (an "age" of 64, then "unknown"), which no table can hold
                    frame = pd.read_csv(handle, dtype={"path": str, "speaker_id": str, "gender": str},
                                        low_memory=False)
    except FileNotFoundError as exc:
        raise InputError(f"metadata {url} does not exist") from exc
    except Exception as exc:  # noqa: BLE001 - any parser failure is the same problem to the user
        raise InputError(f"metadata {url} cannot be read: {type(exc).__name__}: {exc}") from exc
    if "path" not in frame.columns:
        raise InputError(f"metadata {url} has no 'path' column (columns: {', '.join(map(str, frame.columns))})")
    frame = frame.copy()
    empty = (frame["path"].isna() | (frame["path"].astype("string").str.strip() == "")).to_numpy(bool)
    if empty.any():
        rows = ", ".join(str(i + 2) for i in empty.nonzero()[0][:5])  # 1 = the header
        raise InputError(f"metadata {url}: {int(empty.sum())} row(s) with an empty 'path' (rows "
                         f"{rows}{' ...' if empty.sum() > 5 else ''}, counting the header as row 1)")
    # NFC: macOS writes names decomposed (NFD), most tools composed; both name the same file
    frame["path"] = [unicodedata.normalize("NFC", _relative_to_input(p, input_url))
                     for p in frame["path"].astype(str)]
    dupes = frame["path"][frame["path"].duplicated()].unique()
    if len(dupes):
        shown = ", ".join(dupes[:3]) + (" ..." if len(dupes) > 3 else "")
        raise InputError(f"metadata {url} lists {len(dupes)} path(s) more than once: {shown}")
    if "gender" in frame.columns:
        typed = frame["gender"].astype("string").str.strip()
        gender = typed.str.lower()
        # the usual ways of saying "not known / not binary": no ground truth for a binary model
        gender = gender.mask(gender.isin(NO_GROUND_TRUTH))
        bad = sorted(set(typed[gender.notna() & ~gender.isin(["female", "male"])]))  # as typed
        if bad:  # a typo or another coding scheme would silently lose the ground truth
            raise InputError(f"metadata {url}: column 'gender' must be 'female' or 'male' (or empty, "
                             f"'unknown', 'other', 'na', 'n/a', 'none' for no ground truth), found {bad[:5]}")
        frame["gender"] = gender
    if "speaker_id" in frame.columns:
        frame["speaker_id"] = frame["speaker_id"].astype("string")
    for column in frame.columns[frame.dtypes == object]:
        values = frame[column].dropna()
        if values.map(type).nunique() > 1:  # numbers and text in one column: as text
            frame[column] = frame[column].astype("string")
    return frame.reset_index(drop=True)


def _relative_to_input(path: str, input_url: str | None) -> str:
    path = path.strip()
    if input_url:
        base = input_url.rstrip("/") + "/"
        if path.startswith(base):
            return path[len(base):]
        if "://" not in input_url and path.startswith("file://"):
            path = path[len("file://"):]  # a file URL of a local INPUT is its absolute path
        if "://" not in input_url and path.startswith("/"):
            folder = os.path.abspath(input_url)
            if os.path.isfile(folder):  # INPUT is one file: paths are relative to its folder
                folder = os.path.dirname(folder)
            absolute = folder.rstrip("/") + "/"
            if path.startswith(absolute):
                return path[len(absolute):]
    while path.startswith("./"):  # "./a.wav" is "a.wav"; a hidden "./.x/a.wav" stays ".x/a.wav"
        path = path[2:]
    return path


@dataclass
class MetadataJoin:
    """How the metadata rows matched the files found."""

    by_path: dict[str, dict[str, Any]]
    columns: list[str]
    files_without_metadata: int
    metadata_without_files: int
    examples_missing_files: list[str]


def _find_local(fs, root: str) -> dict[str, dict]:
    """``fs.find(root, detail=True)`` for a local folder, descending into linked folders too.

    A corpus put together from several disks links their folders in; fsspec's local ``find``
    lists such a link as one entry and never looks inside. The folders inside INPUT are listed
    first, so their files keep their own names; then the linked folders, each real folder once: a
    link to a folder INPUT already holds, a second link to one folder, or a link back up the tree
    adds nothing. A subfolder that cannot be read (permissions, gone since) is left out, as
    ``find`` leaves it out; INPUT itself must be readable.
    """
    found: dict[str, dict] = {}
    top = os.path.realpath(root)
    walked: set[str] = set()
    own, linked = [root], []  # folders to list: reached without a link first
    while own or linked:
        folder = own.pop() if own else linked.pop()
        real = os.path.realpath(folder)
        above = folder != root and (real == top or top.startswith(real.rstrip(os.sep) + os.sep))
        if real in walked or above:
            continue
        walked.add(real)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            if folder == root:
                raise
            continue
        inner_own, inner_linked = [], []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                (inner_linked if entry.is_symlink() else inner_own).append(entry.path)
            else:
                info = fs.info(entry)  # from the directory entry, as fsspec's own listing does
                found[info["name"]] = info
        own.extend(reversed(inner_own))
        linked.extend(reversed(inner_linked))
    return found


def _unreadable_entry(path: str, info: Mapping[str, Any]) -> str | None:
    """What makes a listed entry unreadable as a file (local listings say; buckets hold files).

    A named pipe would block the worker reading it for ever, so it must never be opened.
    """
    if info.get("type", "file") == "file":
        return None
    mode = info.get("mode")
    if info.get("islink"):  # local listings describe the link itself, not its target
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return f"a symbolic link whose target does not exist ({info.get('destination')})"
    if mode is not None and stat.S_ISFIFO(mode):
        return "not a regular file: a named pipe"
    if mode is not None and (stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
        return "not a regular file: a socket or device"
    return None


def join_metadata(corpus: Corpus, metadata: pd.DataFrame | None) -> MetadataJoin:
    """Match metadata rows to discovered files by relative ``path``; count both kinds of orphan."""
    if metadata is None:
        return MetadataJoin({}, [], 0, 0, [])
    # metadata paths are NFC (load_metadata); a file's own name may be either form
    spellings: dict[str, list[str]] = {}
    for f in corpus.files:
        spellings.setdefault(unicodedata.normalize("NFC", f.path), []).append(f.path)
    # a row names the file spelled as it is, else the one file its NFC form stands for; two files
    # whose names differ only in normalisation, neither spelled as the row, are both left without
    file_of = {key: key if key in paths else paths[0] for key, paths in spellings.items()
               if key in paths or len(paths) == 1}
    rows = metadata.set_index("path", drop=False)
    known = set(rows.index)
    matched = sorted(known & set(file_of))
    unmatched_rows = sorted(known - set(file_of))
    columns = [c for c in metadata.columns if c != "path"]
    # records, not iterrows: a Series per row costs ~0.1 ms, minutes for millions of files
    records = rows.loc[matched, columns].to_dict("records") if matched else []
    by_path = {file_of[p]: {c: _plain(v) for c, v in r.items()} for p, r in zip(matched, records, strict=True)}
    return MetadataJoin(by_path=by_path, columns=columns,
                        files_without_metadata=len(corpus.files) - len(by_path),
                        metadata_without_files=len(unmatched_rows),
                        examples_missing_files=unmatched_rows[:5])


def _plain(value: Any) -> Any:
    """Turn pandas/numpy scalars (and NA) into plain Python values that pickle small."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def plan_batches(files: Sequence[AudioFile], *, target_audio_s: float,
                 max_files: int) -> list[list[AudioFile]]:
    """Split sorted files into consecutive batches of about ``target_audio_s`` seconds of audio.

    Where a batch ends is decided by the file at the cut, not by its position in the list
    (content-defined chunking, as rsync and restic cut files into blocks). Once a batch holds half
    a batch's worth, it closes after a file whose id hashes below twice that file's share of a
    batch; it is forced closed only before a file that would take it past twice the target or past
    ``max_files``. A file's share is its estimated audio over ``target_audio_s``, or 2 /
    ``max_files`` for very short clips, so batches hold about the target on average, or about
    ``max_files / 2`` clips.

    So the split depends only on the file list, and a rerun over the same corpus makes the same
    batches (and so the same shard names); a file added or removed changes its own batch and, until
    the cuts fall in step again, usually one more, and a resumed run skips the rest. A file
    longer than the target is a batch of its own.
    """
    batches: list[list[AudioFile]] = []
    current: list[AudioFile] = []
    filled = 0.0  # of a batch's worth
    for f in files:
        share = max(f.estimated_s / target_audio_s, 2 / max_files)
        if current and (f.estimated_s >= target_audio_s or filled + share > 2
                        or len(current) >= max_files):
            batches.append(current)
            current, filled = [], 0.0
        current.append(f)
        filled += share
        if filled >= 0.5 and _cut_draw(f) < 2 * share:
            batches.append(current)
            current, filled = [], 0.0
    if current:
        batches.append(current)
    return batches


def _cut_draw(f: AudioFile) -> float:
    """A number in [0, 1) fixed by the file's id: whether a batch may end after this file."""
    return int(f.file_id[:13], 16) / 16**13


#: Changes whenever what a batch id stands for changes (see :func:`batch_id_for`).
BATCH_ID_SALT = b"batches-3"


def batch_id_for(files: Sequence[AudioFile],
                 metadata: Sequence[Mapping[str, Any] | None] | None = None, *,
                 metadata_columns: str = "") -> str:
    """Deterministic id of a batch: a hash of its file ids and content versions
    (:attr:`AudioFile.version`) and, in a run with metadata, of what the batch carries into
    ``predictions``: ``metadata[i]``, the row of ``files[i]`` (None for a file without one), and
    ``metadata_columns``, the carried columns and their types.

    A batch with a completion record under its id is done, so a file rewritten in place, or a
    metadata row edited, added or removed, reruns the batch of its file, and a metadata column
    added or retyped reruns every batch.
    """
    # the salt names this scheme: batches of outputs written before it (cut at other places,
    # ids without file versions or metadata) never pass for done, so those outputs rerun whole once
    digest = hashlib.blake2b(digest_size=8, salt=BATCH_ID_SALT)
    for f in files:
        digest.update(f.file_id.encode() + b"\x00" + f.version.encode() + b"\x00")
    if metadata is not None:
        digest.update(b"\x00" + metadata_columns.encode())
        for row in metadata:
            digest.update(b"\x00" + json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()
