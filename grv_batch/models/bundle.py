"""Model bundles: a folder of ``.keras`` files and JSON, with ``manifest.json`` holding the sha256
of every other file. Nothing in a bundle is ever unpickled: Keras models load in safe mode, and
calibrators, scalers, combiner weights and thresholds are JSON numbers.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

MANIFEST = "manifest.json"
ENSEMBLE_JSON = "ensemble.json"
FORMAT = "grv-bundle/1"
SHIPPED_BUNDLE = Path(__file__).resolve().parent / "bundle"


class BundleError(RuntimeError):
    """The bundle is missing, malformed, or does not match its manifest."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(bundle: str | os.PathLike) -> dict:
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise BundleError(f"not a model bundle (no {MANIFEST}): {bundle}")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise BundleError(f"unreadable {MANIFEST} in {bundle}: {exc}") from exc
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"unsupported bundle format in {bundle}: {manifest.get('format')!r}")
    return manifest


def verify_bundle(bundle: str | os.PathLike) -> dict:
    """Check every file listed in the manifest against its sha256; return the manifest.

    Raises :class:`BundleError` on any missing file, mismatch, or a path escaping the bundle.
    """
    root = Path(bundle).resolve()
    manifest = read_manifest(root)
    for name, digest in manifest["files"].items():
        p = (root / name).resolve()
        if p.parent != root or name == MANIFEST:
            raise BundleError(f"bundle manifest lists an invalid file name: {name!r}")
        if not p.is_file():
            raise BundleError(f"bundle file missing: {name}")
        actual = sha256_file(p)
        if actual != digest:
            raise BundleError(f"sha256 mismatch for {name} in {root}: expected {digest}, got {actual}; refusing to load")
    if ENSEMBLE_JSON not in manifest["files"]:
        raise BundleError(f"bundle manifest does not cover {ENSEMBLE_JSON}")
    return manifest


def _save_for_inference(model, path: Path) -> None:
    """Save ``model`` as a ``.keras`` file without optimizer state: a bundle holds inference
    models, and a model saved right after ``fit`` would carry its Adam moments too."""
    import tempfile

    import keras

    if getattr(model, "optimizer", None) is None:
        model.save(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        trained = Path(tmp) / path.name
        model.save(trained)
        keras.saving.load_model(trained, compile=False, safe_mode=True).save(path)


def write_bundle(out: str | os.PathLike, *, name: str, version: str, members: dict[str, dict],
                 combiner: dict, thresholds: dict, model_card: dict | None = None,
                 model_card_md: str | None = None) -> Path:
    """Write a bundle folder.

    ``members`` maps member name -> {"kind": registry kind, "model": keras.Model,
    "config": JSON dict (scalers, columns...), "calibration": JSON dict}. ``combiner`` is
    {"weights": {member: w}, "bias": b, "calibration": JSON dict}. ``thresholds`` holds the
    recommended ``confidence_threshold`` and ``disagreement``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"members": {}, "combiner": combiner, "thresholds": thresholds}
    for mname, m in members.items():
        fname = f"{mname}.keras"
        _save_for_inference(m["model"], out / fname)
        spec["members"][mname] = {"kind": m["kind"], "file": fname, "config": m.get("config", {}),
                                  "calibration": m.get("calibration", {"type": "identity"})}
    (out / ENSEMBLE_JSON).write_text(json.dumps(spec, indent=1, allow_nan=False))
    files = [ENSEMBLE_JSON] + [s["file"] for s in spec["members"].values()]
    if model_card is not None:
        (out / "model_card.json").write_text(json.dumps(model_card, indent=1, default=float))
        files.append("model_card.json")
    if model_card_md is not None:
        (out / "model_card.md").write_text(model_card_md)
        files.append("model_card.md")
    manifest = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "members": list(spec["members"]),
        "files": {f: sha256_file(out / f) for f in sorted(files)},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out
