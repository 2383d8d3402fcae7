"""Bundles of format version 3 written before the op registry still load and give the same bits.

``data/v3`` holds bundles that shiftquant wrote at commit db4dc60 (before each op was defined once)
for the parity models and a graph of 28 ops, with the logits its reference runtime gave on
calibration, held-out and saturation-extreme pixels (``expected.npz``)."""
import shutil
from pathlib import Path

import numpy as np
import pytest

import shiftquant as sq
from shiftquant.export.format.bundle import FORMAT_VERSION

DATA = Path(__file__).parent / "data" / "v3"
EXPECTED = np.load(DATA / "expected.npz")
LABELS = sorted({k.split(".")[0] for k in EXPECTED.files})


def test_the_stored_bundles_are_format_version_3():
    assert FORMAT_VERSION == 3 and len(LABELS) == 7
    for label in LABELS:
        assert (DATA / f"{label}.sqb").read_bytes()[8:12] == (3).to_bytes(4, "little")


@pytest.mark.parametrize("label", LABELS)
def test_an_old_bundle_gives_bit_identical_logits(label):
    rt = sq.load_bundle(DATA / f"{label}.sqb")
    pixels = EXPECTED[f"{label}.pixels"]
    assert np.array_equal(rt.run(pixels), EXPECTED[f"{label}.logits"]), label
    if f"{label}.ints" in EXPECTED.files:
        assert rt.manifest["integer_only"]
        assert np.array_equal(rt.run_int(pixels)[0], EXPECTED[f"{label}.ints"]), label


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("label", [label for label in LABELS if f"{label}.ints" in EXPECTED.files])
def test_an_old_integer_only_bundle_gives_the_same_bits_in_c(label, tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTQUANT_CACHE_DIR", str(tmp_path))
    rt = sq.load_bundle(DATA / f"{label}.sqb", backend="c")
    ints, _ = rt.run_int(EXPECTED[f"{label}.pixels"])
    assert np.array_equal(ints, EXPECTED[f"{label}.ints"]), label
