"""Job spec validation, discovery, metadata join, batch planning and secret redaction."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from grv_batch import storage
from grv_batch.discovery import (AudioFile, Corpus, InputError, InputParams, batch_id_for, content_version,
                                 discover, file_id_for, join_metadata, load_metadata, plan_batches)
from grv_batch.spec import JobError, JobSpec, load_job

REPO = Path(__file__).resolve().parents[1]


def test_default_job_file_is_the_default():
    assert load_job(REPO / "jobs" / "default.toml") == JobSpec()


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "jobs").glob("*.toml")))
def test_every_shipped_job_file_is_valid(name):
    load_job(REPO / "jobs" / name)


def _job_error(tmp_path, text: str) -> str:
    """The message of the JobError a job file holding ``text`` raises."""
    job = tmp_path / "job.toml"
    job.write_text(text)
    with pytest.raises(JobError) as err:
        load_job(job)
    return str(err.value)


def test_unknown_key_names_the_key_and_what_is_allowed(tmp_path):
    message = _job_error(tmp_path, "[denoise]\nprop_decreas = 0.5\n")
    assert "[denoise].prop_decreas" in message and "unknown key" in message
    assert "prop_decrease" in message  # what is allowed


def test_unknown_table_and_bad_values_are_rejected(tmp_path):
    message = _job_error(tmp_path, "[stages]\nx = 1\n[execution]\nworkers = 0\n[output]\ncompression = 'lz4'\n")
    assert "[stages]" in message and "[execution].workers" in message
    assert "[output].compression" in message and "zstd" in message


def test_job_errors_name_a_top_level_key_bare_and_drop_pydantics_prefix(tmp_path):
    message = _job_error(tmp_path, 'typo_top = 1\n[speakers]\nfrom_path = "(?P<speaker>["\n')
    assert "typo_top: unknown key" in message and "[typo_top]" not in message
    assert "[speakers].from_path: invalid regex" in message and "Value error" not in message


def test_command_line_overrides_the_file(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text("[execution]\nworkers = 3\n")
    assert load_job(job, overrides={"execution": {"workers": 1}}).execution.workers == 1


def test_job_identity_ignores_execution_but_not_stages():
    base = JobSpec()
    assert load_job(overrides={"execution": {"workers": 7}}).fingerprint() == base.fingerprint()
    assert load_job(overrides={"denoise": {"enabled": False}}).fingerprint() != base.fingerprint()


def test_no_job_key_names_code_to_import():
    # Stages come from fixed registries: nothing in the default job is a dotted import path.
    text = (REPO / "jobs" / "default.toml").read_text()
    data = tomllib.loads(text)

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from walk(v)
        elif isinstance(value, list):
            for v in value:
                yield from walk(v)
        else:
            yield value

    assert not [v for v in walk(data) if isinstance(v, str) and v.count(".") >= 2 and ":" in v]


def _touch(root: Path, rel: str, size: int = 100) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def test_discovery_is_recursive_case_insensitive_and_stable(tmp_path):
    for rel in ["a/1.WAV", "a/b/2.flac", "c/3.mp3", "notes.txt", "d/4.sph", "e/5.ogg"]:
        _touch(tmp_path, rel)
    corpus = discover(str(tmp_path))
    assert [f.path for f in corpus.files] == ["a/1.WAV", "a/b/2.flac", "c/3.mp3", "d/4.sph", "e/5.ogg"]
    assert corpus.unmatched == 1
    assert corpus.files[0].file_id == file_id_for("a/1.WAV")
    assert discover(str(tmp_path)).files == corpus.files
    only = discover(str(tmp_path), InputParams(patterns=["*.flac"], exclude=[]))
    assert [f.path for f in only.files] == ["a/b/2.flac"]
    single = discover(str(tmp_path / "c" / "3.mp3"))
    assert [f.path for f in single.files] == ["3.mp3"]


def test_missing_and_empty_input(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        discover(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no audio"):
        discover(str(tmp_path / "empty"))


def test_metadata_join_counts_orphans_both_ways(tmp_path):
    for rel in ["a.wav", "b.wav", "c.wav"]:
        _touch(tmp_path / "in", rel)
    meta = tmp_path / "meta.csv"
    pd.DataFrame({"path": ["a.wav", "b.wav", "zzz.wav"], "gender": ["Female", "male", "male"],
                  "speaker_id": ["s1", "s2", "s3"], "age": [30, None, 40]}).to_csv(meta, index=False)
    frame = load_metadata(str(meta), input_url=str(tmp_path / "in"))
    assert list(frame["gender"]) == ["female", "male", "male"]
    joined = join_metadata(discover(str(tmp_path / "in")), frame)
    assert joined.files_without_metadata == 1 and joined.metadata_without_files == 1
    assert joined.by_path["a.wav"]["speaker_id"] == "s1"
    assert joined.by_path["b.wav"]["age"] is None


def test_metadata_paths_given_as_full_paths_are_made_relative(tmp_path):
    _touch(tmp_path / "in", "x/a.wav")
    meta = tmp_path / "meta.parquet"
    pd.DataFrame({"path": [str(tmp_path / "in" / "x" / "a.wav")]}).to_parquet(meta)
    frame = load_metadata(str(meta), input_url=str(tmp_path / "in"))
    assert list(frame["path"]) == ["x/a.wav"]
    pd.DataFrame({"path": ["./x/a.wav", "./.hidden/b.wav"]}).to_parquet(meta)
    frame = load_metadata(str(meta), input_url=str(tmp_path / "in"))
    assert list(frame["path"]) == ["x/a.wav", ".hidden/b.wav"]


def test_metadata_paths_match_whatever_the_unicode_normal_form(tmp_path):
    import unicodedata

    name = "Zoë/Éloïse.wav"
    _touch(tmp_path / "in", unicodedata.normalize("NFC", name))
    meta = tmp_path / "meta.csv"
    pd.DataFrame({"path": [unicodedata.normalize("NFD", name)], "speaker_id": ["z"]}).to_csv(meta, index=False)
    frame = load_metadata(str(meta), input_url=str(tmp_path / "in"))
    joined = join_metadata(discover(str(tmp_path / "in")), frame)
    assert joined.files_without_metadata == 0 and joined.metadata_without_files == 0
    assert joined.by_path[unicodedata.normalize("NFC", name)]["speaker_id"] == "z"


def test_pipes_and_broken_links_are_listed_as_unreadable_and_never_opened(tmp_path):
    import os

    from grv_batch.pipeline import process_batch
    from grv_batch.runner import plan_run

    corpus = tmp_path / "in"
    _touch(corpus, "ok.wav")
    os.mkfifo(corpus / "pipe.wav")  # opening it would block for ever
    (corpus / "gone.wav").symlink_to(corpus / "nowhere.wav")
    (corpus / "link.wav").symlink_to(corpus / "ok.wav")  # a corpus of links is common
    problems = {f.path: f.problem for f in discover(str(corpus)).files}
    assert problems["ok.wav"] is None and problems["link.wav"] is None
    assert "named pipe" in problems["pipe.wav"] and "does not exist" in problems["gone.wav"]
    job = JobSpec()
    plan = plan_run(str(corpus), str(tmp_path / "out"), job)
    for task in plan.tasks:
        process_batch(task, job=job, layout=plan.layout)
    files = pd.read_parquet(tmp_path / "out" / "files").set_index("path")
    assert "named pipe" in files.loc["pipe.wav", "error"]
    assert "does not exist" in files.loc["gone.wav", "error"]


def test_files_in_linked_folders_are_found_once(tmp_path):
    """A corpus put together from several disks links their folders in: their files are found,
    under the link's name; a link back up the tree, a second link to one folder, or a link to a
    folder inside INPUT (which keeps its own name) adds nothing."""
    corpus, disk2 = tmp_path / "in", tmp_path / "disk2"
    _touch(corpus, "spkA/a.wav")
    _touch(disk2, "spkB/b1.wav")
    _touch(disk2, "spkB/b2.wav")
    (corpus / "spkB").symlink_to(disk2 / "spkB")
    (corpus / "spkB_again").symlink_to(disk2 / "spkB")
    (corpus / "spkA" / "loop").symlink_to(corpus)
    (corpus / "0_current").symlink_to(corpus / "spkA")  # sorts first, names nothing
    found = discover(str(corpus))
    assert [f.path for f in found.files] == ["spkA/a.wav", "spkB/b1.wav", "spkB/b2.wav"]
    assert found.unmatched == 0


def test_metadata_problems_stop_the_run(tmp_path):
    meta = tmp_path / "m.csv"
    meta.write_text("path,gender\na.wav,female\na.wav,male\n")
    with pytest.raises(InputError, match="more than once"):
        load_metadata(str(meta))
    meta.write_text("file,gender\na.wav,female\n")
    with pytest.raises(InputError, match="no 'path' column"):
        load_metadata(str(meta))
    meta.write_text("path,gender\na.wav,woman\nb.wav,M\n")
    with pytest.raises(InputError, match=r"'female' or 'male'.*found \['M', 'woman'\]"):  # as typed
        load_metadata(str(meta))
    meta.write_text("path,gender\na.wav, Female\nb.wav,Unknown\nc.wav,other\nd.wav,\ne.wav,male\n")
    assert load_metadata(str(meta))["gender"].tolist() == ["female", pd.NA, pd.NA, pd.NA, "male"]
    with pytest.raises(InputError, match="does not exist"):
        load_metadata(str(tmp_path / "nope.csv"))


def test_batches_are_deterministic_and_balanced(tmp_path):
    for i in range(20):
        _touch(tmp_path, f"{i:02d}.wav", size=32_000 * (1 + i % 4))  # 1-4 s each
    _touch(tmp_path, "long.wav", size=32_000 * 100)
    files = discover(str(tmp_path)).files
    batches = plan_batches(files, target_audio_s=10, max_files=100)
    assert sum(len(b) for b in batches) == len(files)
    assert [f.path for b in batches for f in b] == [f.path for f in files]
    assert any(len(b) == 1 and b[0].path == "long.wav" for b in batches)
    assert all(sum(f.estimated_s for f in b) <= 2 * 10 or len(b) == 1 for b in batches)
    again = plan_batches(discover(str(tmp_path)).files, target_audio_s=10, max_files=100)
    assert [batch_id_for(b) for b in again] == [batch_id_for(b) for b in batches]


def test_a_file_rewritten_in_place_changes_its_batch_id(tmp_path):
    for name in ("a.wav", "b.wav"):
        _touch(tmp_path, name, size=32_000)
    before = discover(str(tmp_path)).files
    os.utime(tmp_path / "b.wav", (1e9, 1e9))  # same size, other modification time
    after = discover(str(tmp_path)).files
    assert [f.file_id for f in after] == [f.file_id for f in before]
    assert after[0].version == before[0].version and after[1].version != before[1].version
    assert batch_id_for(after) != batch_id_for(before)
    assert batch_id_for(after[:1]) == batch_id_for(before[:1])
    # a store's content hash names the content, whatever the time
    assert content_version({"size": 3, "ETag": '"9b2c"', "LastModified": "today"}) == '3:"9b2c"'
    assert content_version({"size": 3, "mtime": 1.5}) == "3:1.5"


def _corpus_of(paths_and_seconds) -> list[AudioFile]:
    return sorted((AudioFile(file_id=file_id_for(p), path=p, url=p, size=int(s * 32_000))
                   for p, s in paths_and_seconds), key=lambda f: f.path)


@pytest.mark.parametrize("seconds, max_files", [((2.0, 30.0), 200), ((0.5, 2.0), 200),
                                                ((2.0, 30.0), 20)])
def test_a_file_added_or_removed_changes_few_batches(seconds, max_files):
    # Batches end where the files say, not at fixed positions in the sorted list: after one
    # file is added or removed, nearly every batch keeps its id, so a resumed run skips it.
    rng = np.random.default_rng(7)
    names = [f"spk{i // 10:03d}/{i:05d}.wav" for i in range(0, 4000, 2)]
    files = _corpus_of((p, rng.uniform(*seconds)) for p in names)
    before = plan_batches(files, target_audio_s=300, max_files=max_files)
    ids = {batch_id_for(b) for b in before}
    assert len(before) >= 15
    sizes = [sum(f.estimated_s for f in b) for b in before[:-1]]
    counts = [len(b) for b in before]
    if max_files == 200 and seconds[0] >= 2:
        assert 200 < np.mean(sizes) < 400 and max(sizes) <= 600  # about the target, at most twice
    assert max(counts) <= max_files
    changed = []
    for trial in range(20):
        j = int(rng.integers(len(files)))
        added = files[j].path.replace(".wav", "a.wav")  # sorts right after files[j]
        for after in (_corpus_of([*((f.path, f.estimated_s) for f in files),
                                  (added, rng.uniform(*seconds))]),
                      files[:j] + files[j + 1:]):
            batches = plan_batches(after, target_audio_s=300, max_files=max_files)
            assert [f.path for b in batches for f in b] == [f.path for f in after]
            changed.append(sum(batch_id_for(b) not in ids for b in batches))
    # the previous split rebuilt the batch of the change and every batch after it
    assert max(changed) <= 4 and np.mean(changed) <= 2, changed


def test_batch_target_halves_in_steps_for_small_corpora():
    from grv_batch.runner import MIN_TASKS, batch_target_s

    assert batch_target_s(10 * 3600, 300.0) == 300.0
    assert batch_target_s(MIN_TASKS * 300.0 - 1, 300.0) == 150.0
    assert batch_target_s(1000.0, 300.0) == 300.0 / 16  # 53 batches' worth, at least 32
    assert batch_target_s(1050.0, 300.0) == batch_target_s(1000.0, 300.0)  # a little growth
    assert batch_target_s(60.0, 300.0) == 10.0  # the smallest batch
    assert batch_target_s(60.0, 4.0) == 4.0  # never above the job's own target


def test_storage_options_parse_and_redact():
    options = storage.parse_storage_options(
        ["endpoint_url=http://localhost:9000", "key=AKIA123", "secret=shh-123", "anon=false",
         "client_kwargs.region_name=eu-west-1"])
    assert options["anon"] is False and options["client_kwargs"] == {"region_name": "eu-west-1"}
    shown = storage.redact_options(options)
    assert shown["endpoint_url"] == "http://localhost:9000"
    assert shown["key"] == shown["secret"] == "***"
    assert storage.redact_text("denied for shh-123 at x", storage.secret_values(options)) == \
        "denied for *** at x"
    with pytest.raises(ValueError, match="KEY=VALUE"):
        storage.parse_storage_options(["novalue"])


def test_credentials_inside_an_endpoint_url_are_redacted():
    """``endpoint_url`` is shown, but not the ``user:password@`` or query it may carry."""
    options = {"endpoint_url": "http://minio:FLAGPW-1@127.0.0.1:9000/?token=FLAGTOK", "anon": False}
    shown = storage.redact_options(options)
    assert shown["endpoint_url"] == "http://***@127.0.0.1:9000/?***" and shown["anon"] is False
    secrets = storage.secret_values(options)
    assert "FLAGPW-1" in secrets and not any("127.0.0.1" in s for s in secrets)
    assert "FLAGPW-1" not in storage.redact_text("401 for minio FLAGPW-1", secrets)


def test_numeric_looking_secrets_reach_the_back_end_as_typed_and_are_redacted():
    options = storage.parse_storage_options(["password=0012345", "default_block_size=5242880",
                                             "max_concurrency=4"])
    assert options == {"password": "0012345", "default_block_size": 5242880, "max_concurrency": 4}
    assert "12345" in storage.secret_values({"token": 12345, "anon": True})
    assert storage.secret_values({"timeout": 600, "max_concurrency": 4}) == []  # not secrets
    assert storage.redact_text("bad token 12345", storage.secret_values({"token": 12345})) == \
        "bad token ***"


def test_a_rate_too_low_to_denoise_is_refused_in_the_job():
    with pytest.raises(JobError, match="too low to denoise"):
        load_job(overrides={"resample": {"sample_rate": 8000}})
    job = load_job(overrides={"resample": {"sample_rate": 8000}, "denoise": {"enabled": False}})
    assert job.analysis_changes() == ["[resample]", "[denoise]"]


def test_analysis_changes_name_what_the_models_were_not_trained_on():
    assert JobSpec().analysis_changes() == []
    for path in sorted((Path(__file__).parents[1] / "jobs").glob("*.toml")):  # examples keep them
        assert load_job(path).analysis_changes() == [], path
    job = load_job(overrides={"normalize": {"method": "loudness"}, "decode": {"channel": 0},
                              "model": {"min_speech_s": 2.0}})
    assert job.analysis_changes() == ["[normalize]"]


@pytest.mark.parametrize("model", [{"batch_size": 0}, {"batch_size": -4}, {"confidence_threshold": 3},
                                   {"confidence_threshold": 0.2}, {"min_speech_s": -1},
                                   {"disagreement": 1.5}])
def test_model_settings_out_of_range_are_refused(model):
    with pytest.raises(JobError, match=r"\[model\]"):
        load_job(overrides={"model": model})


def test_metadata_with_an_empty_path_is_one_clear_error(tmp_path):
    (tmp_path / "m.csv").write_text("path,gender\na.wav,female\n,male\n")
    with pytest.raises(InputError, match="1 row.* empty 'path' .rows 3"):
        load_metadata(str(tmp_path / "m.csv"))


def test_metadata_paths_as_absolute_paths_or_file_urls_match_a_local_input(tmp_path):
    for rel in ["a.wav", "sub/b.wav"]:
        _touch(tmp_path / "in", rel)
    meta = tmp_path / "meta.csv"
    pd.DataFrame({"path": [f"{tmp_path}/in/a.wav", f"file://{tmp_path}/in/sub/b.wav"]}).to_csv(meta, index=False)
    frame = load_metadata(str(meta), input_url=str(tmp_path / "in"))
    assert list(frame["path"]) == ["a.wav", "sub/b.wav"]


@pytest.mark.parametrize("overrides, key", [
    ({"speakers": {"confidence_threshold": 2.0}}, "[speakers].confidence_threshold"),
    ({"speakers": {"disagreement": -1}}, "[speakers].disagreement"),
    ({"execution": {"memory_limit": "lots"}}, "[execution].memory_limit"),
    ({"execution": {"batch_audio_s": float("inf")}}, "[execution].batch_audio_s"),
])
def test_speaker_and_execution_settings_out_of_range_are_refused(overrides, key):
    with pytest.raises(JobError) as err:
        load_job(overrides=overrides)
    assert key in str(err.value)
    assert load_job(overrides={"execution": {"memory_limit": "4GB"}}).execution.memory_limit == "4GB"


def test_a_signed_http_url_is_read_with_its_query_and_named_without_it(tmp_path):
    """A pre-signed URL (``...a.wav?X-Amz-Signature=...``) matches ``*.wav``, is read with its
    query (the credential), and the tables name the file ``a.wav``, never the credential."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "a.wav", np.zeros(1600, np.float32), 16000)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/a.wav?X-Amz-Signature=sigSECRET"
        corpus = discover(url, InputParams())
        assert [f.path for f in corpus.files] == ["a.wav"]
        assert corpus.files[0].url == url  # what the workers open
        with storage.filesystem(corpus.files[0].url, {})[0].open(corpus.files[0].url, "rb") as handle:
            assert handle.read(4) == b"RIFF"
        assert "sigSECRET" not in corpus.files[0].file_id + corpus.files[0].path
        with pytest.raises(InputError, match="does not exist"):
            discover(f"http://127.0.0.1:{server.server_port}/missing.wav", InputParams())
    finally:
        server.shutdown()
        server.server_close()
    # the server is gone: the same URL cannot be reached, which is not the same as missing
    with pytest.raises(InputError, match="cannot be reached: .*Connect"):
        discover(url, InputParams())


def test_a_long_metadata_csv_with_numbers_then_text_in_a_column_is_read_as_text(tmp_path):
    """pandas reads a long CSV in chunks and gave a column numbers in one and text in the next;
    Arrow then refused the column with a traceback."""
    from grv_batch.runner import _metadata_schema

    meta = tmp_path / "meta.csv"
    rows = [f"spk{i % 50}/f{i}.wav,{20 + i % 50}" for i in range(300_000)] + ["spk0/last.wav,unknown"]
    meta.write_text("path,age\n" + "\n".join(rows) + "\n")
    frame = load_metadata(str(meta))
    assert frame["age"].iloc[0] == "20" and frame["age"].iloc[-1] == "unknown"
    assert str(_metadata_schema(frame).field("age").type) == "string"


def test_a_name_with_a_double_colon_is_read(tmp_path):
    """``::`` chains file systems in an fsspec URL; in a listed file's name it is just text."""
    import soundfile as sf

    from grv_batch.pipeline import process_batch
    from grv_batch.runner import plan_run

    corpus = tmp_path / "in"
    corpus.mkdir()
    tone = 0.3 * np.sin(2 * np.pi * 150 * np.arange(16000) / 16000)
    sf.write(corpus / "take::1.wav", tone, 16000)
    job = JobSpec()
    plan = plan_run(str(corpus), str(tmp_path / "out"), job)
    for task in plan.tasks:
        process_batch(task, job=job, layout=plan.layout)
    files = pd.read_parquet(tmp_path / "out" / "files").set_index("path")
    assert files.loc["take::1.wav", "status"] == "ok", files.loc["take::1.wav", "error"]


def test_patterns_that_can_never_match_are_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not folders"):
        InputParams(patterns=["spk1/*.wav"])
    with pytest.raises(ValidationError, match="at least one pattern"):
        InputParams(patterns=[])


def test_absolute_metadata_paths_join_a_single_file_input(tmp_path):
    _touch(tmp_path, "corpus/a.wav")
    audio = tmp_path / "corpus" / "a.wav"
    meta = tmp_path / "meta.csv"
    meta.write_text(f"path,gender\n{audio},female\n")
    joined = join_metadata(discover(str(audio)), load_metadata(str(meta), input_url=str(audio)))
    assert joined.files_without_metadata == 0 and joined.metadata_without_files == 0


def test_a_name_that_is_not_utf8_is_read_and_written_with_escapes(tmp_path):
    """A Latin-1 name from an old file server (byte 0xE9) is read by its real name and written to
    the tables as ``lat\\xe9.wav``, the name metadata and ``exclude`` use; a file whose name is
    that escape, beside it, keeps its own id; a broken link to such a name is an error row."""
    import os
    import soundfile as sf

    from grv_batch.pipeline import process_batch
    from grv_batch.runner import plan_run

    corpus = tmp_path / "in"
    corpus.mkdir()
    sf.write(corpus / "ok.wav", 0.3 * np.sin(2 * np.pi * 150 * np.arange(16000) / 16000), 16000)
    data = (corpus / "ok.wav").read_bytes()
    raw = os.fsencode(corpus)
    try:
        for name in (b"lat\xe9.wav", b"lat\\xe9.wav", b"skip\xe9.wav"):
            with open(os.path.join(raw, name), "wb") as handle:
                handle.write(data)
        os.symlink(b"/nowhere/caf\xe9.wav", os.path.join(raw, b"gone\xe9.wav"))
    except OSError:
        pytest.skip("this file system only takes UTF-8 names")
    meta = tmp_path / "meta.csv"
    meta.write_text("path,gender\nlat\\xe9.wav,male\n", encoding="utf-8")
    job = JobSpec.model_validate({"input": {"exclude": ["skip\\xe9.wav"]}})
    plan = plan_run(str(corpus), str(tmp_path / "out"), job, metadata_url=str(meta))
    assert plan.joined.metadata_without_files == 0
    for task in plan.tasks:
        process_batch(task, job=job, layout=plan.layout)
    files = pd.read_parquet(tmp_path / "out" / "files").set_index("path").sort_index()
    assert list(files.index) == ["gone\\xe9.wav", "lat\\xe9.wav", "lat\\xe9.wav", "ok.wav"]
    assert files["file_id"].is_unique
    assert files.loc["gone\\xe9.wav", "status"] == "error"
    assert "/nowhere/caf\\xe9.wav" in files.loc["gone\\xe9.wav", "error"]
    assert (files.drop("gone\\xe9.wav")["status"] == "ok").all()


def test_two_files_differing_only_in_unicode_normalisation_each_count_once():
    """A row names the file spelled as it is (NFC); its NFD twin gets no row and is counted as a
    file without metadata (it was folded into the other before)."""
    import unicodedata

    files = [AudioFile(file_id=file_id_for(p), path=p, url=p, size=1)
             for p in sorted([unicodedata.normalize("NFC", "café.wav"), unicodedata.normalize("NFD", "café.wav"),
                              "other.wav"])]
    corpus = Corpus(input_url="in", root="in", files=files, protocol="file")
    meta = pd.DataFrame({"path": [unicodedata.normalize("NFC", "café.wav")], "gender": ["female"]})
    joined = join_metadata(corpus, meta)
    assert list(joined.by_path) == [unicodedata.normalize("NFC", "café.wav")]
    assert joined.files_without_metadata == 2 and joined.metadata_without_files == 0
