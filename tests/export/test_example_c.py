"""examples/c/main.c: the complete program docs/codegen.md shows, compiled strictly against a
generated model and run on image files; its class and logits are the reference runtime's."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import shiftquant as sq
from tests.export.models import quantized_pixels
from tests.export.test_codegen import STRICT

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "c" / "main.c"


def _pgm(path: Path, image: np.ndarray, maxval: int) -> Path:
    h, w = image.shape
    path.write_bytes(f"P5\n# a test image\n{w} {h}\n{maxval}\n".encode() + image.astype(np.uint8).tobytes())
    return path


def test_the_example_program_classifies_images_like_the_reference(tmp_path):
    model, batches, px = quantized_pixels("plain", 0, act_shift_bits=2)
    p = np.concatenate([batches["held_out"], batches["saturated"]])
    rt = sq.export(model, tmp_path / "m.sqb", px.to_float(p[:1]), px)
    assert rt.manifest["integer_only"]
    sq.codegen(rt, tmp_path)  # model.h, model.c
    header = (tmp_path / "model.h").read_text()
    assert "#define MODEL_PIXEL_MAX (255)" in header and "mean = (0.3), std = (0.4)" in header
    shutil.copy(EXAMPLE, tmp_path / "main.c")
    done = subprocess.run(["cc", *STRICT, "-O2", "main.c", "model.c", "-o", "classify"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    ints, _ = rt.run_int(p)
    for i, image in enumerate(p):
        for args in (["img.pgm"], ["-raw", "img.raw"]):
            _pgm(tmp_path / "img.pgm", image[0], 255)
            image.tofile(tmp_path / "img.raw")
            run = subprocess.run(["./classify", *args], cwd=tmp_path, capture_output=True, text=True)
            assert run.returncode == 0, run.stderr
            lines = run.stdout.splitlines()
            assert lines[0] == f"class {int(np.argmax(ints[i]))}"
            assert [int(v) for v in lines[1].split()[1:]] == ints[i].tolist()
    _pgm(tmp_path / "bad.pgm", p[0, 0], 16)  # another pixel range than the model's
    run = subprocess.run(["./classify", "bad.pgm"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 2 and "the model takes pixels 0..255" in run.stderr
