"""Denoiser.save / Denoiser.load (bundle.py): one self-contained folder that serves the same
numbers bit for bit, and refuses a changed or missing file with one line naming it."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from mamba_denoiser import Denoiser
from mamba_denoiser.errors import BundleError, ConfigError, PanelError
from tests.helpers import make_small_frame, train_sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return train_sweep(tmp_path_factory.mktemp("bundle"), directions=("causal",))


@pytest.fixture(scope="module")
def saved(sweep, tmp_path_factory):
    """(bundle folder, the original Denoiser, its transform of the history): saved from a
    copy of the sweep that is deleted afterwards, so the bundle must stand alone."""
    work = tmp_path_factory.mktemp("saved")
    copy = shutil.copytree(sweep["root"] / "causal", work / "sweep")
    den = Denoiser.from_run(copy)  # gate on: the decisions include the gate's choices
    history = make_small_frame(n_rows=600)
    out = den.transform(history)
    folder = den.save(work / "bundle")
    shutil.rmtree(copy)
    return folder, den, out


def test_the_bundle_holds_a_manifest_of_every_file(saved):
    folder, den, _ = saved
    manifest = json.loads((folder / "manifest.json").read_text())
    files = set(manifest["files"])
    assert files == {"clusters.json", "decisions.json", *(f"checkpoints/c{i}.ckpt" for i in (0, 1))}
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert on_disk == files | {"manifest.json"}
    assert all(len(sha) == 64 for sha in manifest["files"].values())
    assert {"mamba_denoiser", "torch", "python"} <= set(manifest["versions"])
    data = manifest["data"]
    assert data["split"] == {k: list(v) for k, v in den.bounds.items()}
    assert data["fitted_rows_digest"] == den._fitted_on and len(data["sha256"]) == 64
    assert data["split_ids"]["train"][0] == "0"  # the history's first date_id


def test_a_loaded_bundle_transforms_and_updates_bit_identically(saved):
    folder, den, out = saved
    loaded = Denoiser.load(folder)
    assert loaded.features == den.features
    history = make_small_frame(n_rows=600)
    pd.testing.assert_frame_equal(loaded.transform(history), out, check_exact=True)
    longer = make_small_frame(n_rows=610)
    for i in range(600, 610):  # day by day, against the original Denoiser
        row = longer.iloc[i : i + 1]
        pd.testing.assert_frame_equal(loaded.update(row), den.update(row), check_exact=True)
    with pytest.raises(PanelError, match="revised history"):
        Denoiser.load(folder).transform(make_small_frame(n_rows=600, seed=1))


def test_a_changed_file_is_refused_naming_it(saved, tmp_path):
    folder = shutil.copytree(saved[0], tmp_path / "copy")
    ckpt = folder / "checkpoints" / "c1.ckpt"
    blob = bytearray(ckpt.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte in the weights
    ckpt.write_bytes(bytes(blob))
    with pytest.raises(BundleError, match=r"checkpoints/c1\.ckpt: changed since the bundle"):
        Denoiser.load(folder)
    shutil.copy(saved[0] / "checkpoints" / "c1.ckpt", ckpt)
    decisions = folder / "decisions.json"
    decisions.write_text(decisions.read_text().replace("kalman", "diffusion", 1))
    with pytest.raises(BundleError, match=r"decisions\.json: changed since the bundle"):
        Denoiser.load(folder)


def test_a_missing_file_or_folder_is_refused_naming_it(saved, tmp_path):
    folder = shutil.copytree(saved[0], tmp_path / "copy")
    (folder / "checkpoints" / "c0.ckpt").unlink()
    with pytest.raises(BundleError, match=r"checkpoints/c0\.ckpt: missing from the bundle"):
        Denoiser.load(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(BundleError, match="not a Denoiser bundle .no manifest.json"):
        Denoiser.load(folder)
    with pytest.raises(BundleError, match="no such folder"):
        Denoiser.load(tmp_path / "nowhere")


def test_save_needs_fitted_decisions_and_never_overwrites_other_files(sweep, tmp_path):
    den = Denoiser.from_run(sweep["root"] / "causal")
    with pytest.raises(ConfigError, match="call transform.history. first"):
        den.save(tmp_path / "b")
    den.transform(make_small_frame(n_rows=600).iloc[:550])  # the test part runs past it
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="not a bundle; choose a new folder"):
        den.save(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    first = den.save(tmp_path / "b")
    again = den.save(tmp_path / "b")  # re-saving over a bundle replaces it
    assert first == again and Denoiser.load(again).features == den.features
    split_ids = json.loads((first / "manifest.json").read_text())["data"]["split_ids"]
    assert split_ids["test"][1] == "549"  # the last row it was given
