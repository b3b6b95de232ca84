"""OUT is never the input's folder, ``--overwrite`` never deletes what grv-batch did not write, and
a rerun with other metadata reruns the batches it changes. All checked by planning alone (no
cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import grv, make_mixed_corpus
from grv_batch.discovery import InputError
from grv_batch.runner import OutputConflict, plan_run
from grv_batch.spec import JobSpec


def _audio(folder):
    return sorted(p.name for p in folder.rglob("*.wav"))


@pytest.fixture()
def corpus(tmp_path):
    folder = tmp_path / "project" / "audio"
    meta = make_mixed_corpus(folder, n_voices=2, broken=False)
    return folder, meta


@pytest.mark.parametrize("where", ["input itself", "folder above input"])
def test_out_that_holds_the_input_is_refused_even_with_overwrite(corpus, where):
    folder, _ = corpus
    before = _audio(folder)
    out = folder if where == "input itself" else folder.parent
    with pytest.raises(OutputConflict, match="contains it"):
        plan_run(str(folder), str(out), JobSpec.model_validate({"output": {"overwrite": True}}))
    assert _audio(folder) == before and before


def test_overwrite_never_empties_a_folder_grv_batch_did_not_write(corpus, tmp_path):
    folder, _ = corpus
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OutputConflict, match="not a grv-batch output"):
        plan_run(str(folder), str(out), JobSpec.model_validate({"output": {"overwrite": True}}))
    assert (out / "notes.txt").read_text() == "keep me"


def test_conflicts_name_a_bucket_out_with_its_scheme(corpus):
    import fsspec

    folder, _ = corpus
    fs = fsspec.filesystem("memory")
    fs.pipe("memory://grv-conflict-test/results/notes.txt", b"keep me")
    try:
        with pytest.raises(OutputConflict, match="^OUT memory:///?grv-conflict-test/results is not empty"):
            plan_run(str(folder), "memory://grv-conflict-test/results", JobSpec())
    finally:
        fs.rm("memory://grv-conflict-test", recursive=True)


def test_overwrite_removes_what_grv_batch_wrote_and_nothing_else(corpus, tmp_path):
    """``--overwrite`` deleted OUT itself: at a bucket's root, the bucket with its other objects,
    versions and settings; in a folder, the user's files beside the output."""
    folder, _ = corpus
    out = tmp_path / "results"
    plan_run(str(folder), str(out), JobSpec())
    for name in ("files", "_batches", "report"):
        (out / name).mkdir(exist_ok=True)
        (out / name / "part-0.parquet").write_text("earlier output")
    (out / ".tmp-123-_run.json").write_text("an interrupted write")
    (out / "notes.txt").write_text("keep me")
    (out / "mine").mkdir()
    (out / "mine" / "data.csv").write_text("keep me too")
    other = JobSpec.model_validate({"output": {"overwrite": True}, "features": {"n_mfcc": 13}})
    assert not plan_run(str(folder), str(out), other).resuming
    assert sorted(p.name for p in out.iterdir()) == ["_job.json", "mine", "notes.txt"]
    assert (out / "mine" / "data.csv").read_text() == "keep me too"
    assert json.loads((out / "_job.json").read_text())["job"]["features"]["n_mfcc"] == 13


def _finish_every_batch(plan) -> None:
    """Leave what a finished run leaves for each planned batch: its completion record and its files'
    rows in ``files``, ``features`` and ``predictions`` (the columns resuming reads)."""
    out = Path(plan.out_url)
    for folder in ("_batches", "files", "features", "predictions"):
        (out / folder).mkdir(exist_ok=True)
    for t in plan.tasks:
        (out / "_batches" / f"{t.batch_id}.json").write_text("{}")
        ids = [f.file_id for f in t.files]
        pd.DataFrame({"file_id": ids, "status": "ok"}).to_parquet(out / "files" / f"part-{t.batch_id}.parquet")
        for table in ("features", "predictions"):
            pd.DataFrame({"file_id": ids}).to_parquet(out / table / f"part-{t.batch_id}.parquet")


def test_edited_or_extended_metadata_reruns_only_the_batches_whose_rows_changed(tmp_path):
    folder = tmp_path / "audio"
    meta = make_mixed_corpus(folder, n_voices=6, broken=False)
    out = tmp_path / "out"
    job = JobSpec.model_validate({"execution": {"max_files_per_batch": 1}})  # a batch a file

    def plan(**kwargs):
        return plan_run(str(folder), str(out), job, **kwargs)

    def rerun(**kwargs) -> list[str]:
        again = plan(**kwargs)
        assert again.resuming
        return [t.files[0].path for t in again.tasks if t.batch_id not in again.done]

    _finish_every_batch(plan(metadata_url=str(meta)))
    assert rerun(metadata_url=str(meta)) == []
    rows = pd.read_csv(meta)
    rows.loc[0, "gender"] = "male" if rows.loc[0, "gender"] == "female" else "female"
    rows.to_csv(meta, index=False)
    assert rerun(metadata_url=str(meta)) == [rows.loc[0, "path"]]
    rows.iloc[[0, 2, 3, 4, 5]].to_csv(meta, index=False)  # row 1 removed: file 1 has none now
    assert rerun(metadata_url=str(meta)) == [rows.loc[0, "path"], rows.loc[1, "path"]]
    # a new column goes into every file's predictions row: every batch reruns
    rows.assign(accent="scottish").to_csv(meta, index=False)
    assert plan(metadata_url=str(meta)).done == set()
    # and so does a run without metadata, whose predictions have no metadata columns at all
    assert plan().done == set()


def test_a_relative_out_reaches_workers_as_an_absolute_path(corpus, tmp_path, monkeypatch):
    """Workers of a named scheduler run in folders of their own: a relative OUT would scatter the
    shards there."""
    folder, _ = corpus
    monkeypatch.chdir(tmp_path)
    plan = plan_run(str(folder), "out-relative", JobSpec())
    assert plan.layout.out_url == str(tmp_path / "out-relative")


def test_a_report_group_that_names_no_column_is_refused_before_any_audio(corpus, tmp_path):
    folder, meta = corpus
    job = JobSpec.model_validate({"report": {"groups": ["condition", "accent"]}})
    with pytest.raises(InputError, match="'accent', not a metadata column"):
        plan_run(str(folder), str(tmp_path / "out"), job, metadata_url=str(meta))
    plan_run(str(folder), str(tmp_path / "out"), JobSpec.model_validate({"report": {"groups": ["condition"]}}),
             metadata_url=str(meta))


def test_an_unreachable_bucket_is_one_clear_error():
    options = {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s",
               "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}}
    with pytest.raises(InputError, match="cannot be listed: EndpointConnectionError"):
        plan_run("s3://corpus/audio/", "s3://results/run/",
                 JobSpec.model_validate({"storage_options": options}))


@pytest.mark.slow
def test_cli_refuses_out_equal_to_input_with_one_line(corpus):
    folder, _ = corpus
    before = _audio(folder)
    proc = grv("run", str(folder), "--out", str(folder), "--overwrite", check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "contains it" in lines[0], proc.stderr
    assert _audio(folder) == before


def test_input_is_identified_by_where_it_is_not_how_it_was_typed(corpus, tmp_path, monkeypatch):
    """``audio``, ``./audio/``, the absolute path and its ``file://`` URL are one INPUT; the same
    relative name typed in another folder is another INPUT, whose results must not be mixed into
    this OUT."""
    folder, _ = corpus
    out = tmp_path / "out"
    monkeypatch.chdir(folder.parent)
    assert not plan_run("audio", str(out), JobSpec()).resuming
    assert plan_run("./audio/", str(out), JobSpec()).resuming
    assert plan_run(str(folder), str(out), JobSpec()).resuming
    assert plan_run(f"file://{folder}", str(out), JobSpec()).resuming
    other = tmp_path / "elsewhere"
    make_mixed_corpus(other / "audio", n_voices=2, broken=False)
    monkeypatch.chdir(other)
    with pytest.raises(OutputConflict, match="a different input"):
        plan_run("audio", str(out), JobSpec())


def test_a_report_intersection_that_names_no_column_is_refused_before_any_audio(corpus, tmp_path):
    folder, meta = corpus
    job = JobSpec.model_validate({"report": {"intersections": [["condition", "accent"]]}})
    with pytest.raises(InputError, match="intersections names 'accent'"):
        plan_run(str(folder), str(tmp_path / "out"), job, metadata_url=str(meta))
    ok = JobSpec.model_validate({"report": {"intersections": [["condition", "pitch_band"]]}})
    plan_run(str(folder), str(tmp_path / "out"), ok, metadata_url=str(meta))


@pytest.mark.parametrize("url, message", [("foo://bucket/x", "Protocol not known"),
                                          ("zzz-no-such-scheme://b/x", "cannot be used")])
def test_an_unknown_url_scheme_is_one_clear_error(corpus, tmp_path, url, message):
    folder, _ = corpus
    with pytest.raises(InputError, match=message):
        plan_run(url, str(tmp_path / "out"), JobSpec())
    with pytest.raises(InputError, match="OUT"):
        plan_run(str(folder), url, JobSpec())


def test_a_relative_bundle_reaches_workers_as_an_absolute_path(corpus, tmp_path, monkeypatch):
    from grv_batch.models.testing import make_tiny_bundle

    folder, _ = corpus
    make_tiny_bundle(tmp_path / "bundle")
    monkeypatch.chdir(tmp_path)
    typed = JobSpec.model_validate({"model": {"bundle": "bundle"}})
    plan = plan_run(str(folder), str(tmp_path / "out"), typed)
    assert plan.job.model.bundle == str(tmp_path / "bundle")
    # OUT's identity keeps the path as written: outputs of earlier versions still resume
    record = json.loads((tmp_path / "out" / "_job.json").read_text())
    assert record["fingerprint"].startswith(typed.fingerprint())
    assert plan_run(str(folder), str(tmp_path / "out"), typed).resuming


def test_credentials_in_urls_never_reach_the_job_record(corpus, tmp_path):
    import json

    from grv_batch import storage

    folder, _ = corpus
    assert storage.redact_url("https://bob:hunter2@host/m.csv?X-Amz-Signature=abc&t=1") == \
        "https://***@host/m.csv?***"
    assert storage.redact_text("metadata s3://k:s3cret@b/m.csv?token=zz cannot be read") == \
        "metadata s3://***@b/m.csv?*** cannot be read"
    plan_run(str(folder), str(tmp_path / "out"), JobSpec())
    record = json.loads((tmp_path / "out" / "_job.json").read_text())
    assert record["input"] == str(folder)
    assert storage.location("s3://k:s3cret@b/audio/?x=1") == "s3://***@b/audio/?***"


def test_unknown_members_stop_before_any_audio(corpus, tmp_path):
    folder, _ = corpus
    for members, message in ((["nope"], "no member 'nope'"), ([], "at least one")):
        with pytest.raises(InputError, match=message):
            plan_run(str(folder), str(tmp_path / "out"),
                     JobSpec.model_validate({"model": {"members": members}}))
    assert not (tmp_path / "out").exists()  # refused before OUT was claimed


def test_a_dotted_storage_option_overrides_one_nested_key():
    from grv_batch import storage

    job = {"key": "k", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    cli = storage.parse_storage_options(["client_kwargs.region_name=eu-west-1"])
    assert storage.merge_options(job, cli) == {
        "key": "k", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"}}


def test_a_report_group_naming_a_renamed_metadata_column_says_what_to_name(corpus, tmp_path):
    folder, meta = corpus
    clash = tmp_path / "clash.csv"
    pd.read_csv(meta).assign(duration_s=1.0).to_csv(clash, index=False)
    with pytest.raises(InputError, match="'duration_s'.*carried as 'meta_duration_s'"):
        plan_run(str(folder), str(tmp_path / "out"),
                 JobSpec.model_validate({"report": {"groups": ["duration_s"]}}), metadata_url=str(clash))


def test_metadata_columns_named_like_outputs_are_carried_renamed(corpus, tmp_path):
    folder, meta = corpus
    clash = tmp_path / "clash.csv"
    pd.read_csv(meta).assign(label="train", confidence=0.3, meta_label="x").to_csv(clash, index=False)
    plan = plan_run(str(folder), str(tmp_path / "out"), JobSpec(), metadata_url=str(clash))
    carried = [f.name for f in plan.layout.metadata_schema]
    assert {"meta_label", "meta_label_2", "meta_confidence"} <= set(carried)
    assert "label" not in carried and "confidence" not in carried
    row = next(iter(plan.joined.by_path.values()))
    assert row["meta_label_2"] == "train" and row["meta_label"] == "x"


def test_metadata_rows_without_a_file_are_shown_without_their_credentials(corpus, tmp_path):
    import io

    from rich.console import Console

    meta = tmp_path / "meta.csv"
    signed = "https://bob:hunter2pw@store.example.com/audio/x.wav?X-Amz-Signature=SIGSECRET123"
    meta.write_text(f"path,gender\n{signed},female\n")
    shown = io.StringIO()
    folder, _ = corpus
    plan_run(str(folder), str(tmp_path / "out"), JobSpec(), metadata_url=str(meta),
             console=Console(file=shown, width=300))
    assert "1 row(s) without a file (e.g. https://***@store.example.com/audio/x.wav?***)" in shown.getvalue()
    assert "hunter2pw" not in shown.getvalue() and "SIGSECRET123" not in shown.getvalue()
