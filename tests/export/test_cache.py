"""The C backend's library cache cannot be poisoned: a library is loaded only after its SHA-256
matched the digest written with it, from a directory of ours that nobody else can write; a refused
or read-only cache falls back to a private temporary directory with a warning."""
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shiftquant.export.c import CRuntime
from shiftquant.export.c import backend as c_backend
from shiftquant.export.c.emit import emit
from shiftquant.export.c.lower import lower
from tests.export.test_parity import hard_and_runtime

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
ROOT = os.getuid() == 0

PLANTED = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void)
{
    FILE *f = fopen(getenv("SQ_MARKER"), "w");
    if (f) { fputs("planted code ran", f); fclose(f); }
}
"""


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """A tiny bundle (pixels in, integer logits out) and a batch of its pixels."""
    _, batches, _, rt = hard_and_runtime("mlp", 0, 2, True, tmp_path_factory.mktemp("mlp"))
    return rt, batches["held_out"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh cache directory (not yet made) and a fresh private fallback for every test."""
    monkeypatch.setenv("SHIFTQUANT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(c_backend, "_PRIVATE", [])
    return tmp_path / "cache" / "c"


def build_only(rt) -> Path:
    """The library CRuntime(rt) would load, built (and cached) without loading it."""
    return c_backend.build("model", *emit(lower(rt, "model", "tables")))


def recorded(library: Path) -> bool:
    """The library's bytes match its digest file."""
    digest = library.with_suffix(".sha256").read_text().strip()
    return hashlib.sha256(library.read_bytes()).hexdigest() == digest


def assert_runs(rt, pixels, library=None):
    native = CRuntime(rt)
    assert library is None or native.library == library
    assert (native.run(pixels) == rt.run(pixels)).all()
    return native


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A library whose constructor writes ``$SQ_MARKER``; shown to do so when loaded elsewhere."""
    (tmp_path / "planted.c").write_text(PLANTED)
    subprocess.run([shutil.which("cc"), "-shared", "-fPIC", "-o", "planted.so", "planted.c"], cwd=tmp_path,
                   check=True)
    probe = tmp_path / "probe"
    subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(tmp_path / 'planted.so')!r})"],
                   env={**os.environ, "SQ_MARKER": str(probe)}, check=True)
    assert probe.exists()  # loading it does write the marker
    monkeypatch.setenv("SQ_MARKER", str(tmp_path / "marker"))
    return tmp_path / "planted.so"


@pytest.mark.parametrize("how", ["overwritten", "symlink with its digest", "foreign owner with its digest"])
def test_a_planted_library_is_never_loaded(mlp, planted, how, tmp_path):
    if how.startswith("foreign") and not ROOT:
        pytest.skip("chown to another user needs root")
    rt, pixels = mlp
    library = build_only(rt)
    evil = planted.read_bytes()
    if how == "overwritten":  # the digest file kept: it records the genuine library
        library.write_bytes(evil)
    else:  # the digest file even records the planted bytes: only its kind or owner gives it away
        library.unlink()
        if how.startswith("symlink"):
            library.symlink_to(planted)
        else:
            library.write_bytes(evil)
            os.chown(library, 12345, -1)
        library.with_suffix(".sha256").write_text(hashlib.sha256(evil).hexdigest() + "\n")
    assert_runs(rt, pixels, library)
    assert not (tmp_path / "marker").exists()
    assert not library.is_symlink() and library.stat().st_uid == os.getuid()
    assert library.read_bytes() != evil and recorded(library)  # rebuilt and replaced


@pytest.mark.parametrize("damage", ["truncated", "digest missing"])
def test_a_damaged_library_is_rebuilt_not_loaded(mlp, damage):
    rt, pixels = mlp
    library = build_only(rt)
    good = library.read_bytes()
    if damage == "truncated":  # loading it would die of SIGBUS
        library.write_bytes(good[:len(good) // 2])
    else:
        library.with_suffix(".sha256").unlink()
    assert not c_backend._verified(library)
    assert_runs(rt, pixels, library)
    assert recorded(library) and len(library.read_bytes()) == len(good)


def refuse(cache: Path, reason: str, tmp_path: Path) -> None:
    cache.mkdir(parents=True)
    if reason == "symbolic link":
        cache.rmdir()
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        cache.symlink_to(tmp_path / "elsewhere")
    elif reason == "owned by uid":
        os.chown(cache, 12345, -1)
    else:
        os.chmod(cache, 0o777 if reason == "others" else 0o770)


@pytest.mark.parametrize("reason", ["others", "group", "symbolic link", "owned by uid"])
def test_an_unsafe_cache_directory_is_refused(mlp, cache, reason, tmp_path):
    if reason == "owned by uid" and not ROOT:
        pytest.skip("chown to another user needs root")
    rt, pixels = mlp
    refuse(cache, reason, tmp_path)
    with pytest.warns(UserWarning, match=rf"{re.escape(str(cache))}: .*{reason}"):
        native = assert_runs(rt, pixels)
    assert native.library.parent != cache and not list(cache.iterdir())
    private = native.library.parent.stat()
    assert stat.S_IMODE(private.st_mode) == 0o700 and private.st_uid == os.getuid() and recorded(native.library)


@pytest.mark.parametrize("how", ["mkdir fails", "rename fails", "chmod 0500"])
def test_a_read_only_cache_warns_and_still_builds(mlp, cache, how, monkeypatch):
    rt, pixels = mlp
    if how == "chmod 0500":
        if ROOT:
            pytest.skip("root writes into a 0500 directory")
        cache.mkdir(parents=True)
        cache.chmod(0o500)  # made writable again below
    else:
        name = "mkdir" if how == "mkdir fails" else "replace"
        real = getattr(os, name)

        def denied(path, *args, **kw):
            target = args[0] if name == "replace" else path
            if str(target).startswith(str(cache.parent)):
                raise PermissionError(13, "Permission denied", str(target))
            return real(path, *args, **kw)

        if name == "replace":
            cache.mkdir(parents=True)
        monkeypatch.setattr(c_backend.os, name, denied)
    try:
        with pytest.warns(UserWarning, match=rf"{re.escape(str(cache))}: it cannot be (created|written)"):
            native = assert_runs(rt, pixels)
    finally:
        if cache.exists():
            cache.chmod(0o700)
    assert native.library.parent != cache and recorded(native.library)
    assert not cache.exists() or not list(cache.iterdir())  # not even a temporary file left


def test_stale_temporaries_are_swept(mlp, cache):
    rt, _ = mlp
    cache.mkdir(parents=True, mode=0o700)
    for name in (".build-old", ".build-new"):
        (cache / name).mkdir()
        (cache / name / "model.c").write_text("int x;\n")
    for name in (".old.tmp", ".new.tmp", "other-old.txt"):
        (cache / name).write_text("partial")
    now = time.time()
    for name in (".build-old", ".old.tmp", "other-old.txt"):
        os.utime(cache / name, (now - 7200, now - 7200))
    for name in (".build-new", ".new.tmp"):
        os.utime(cache / name, (now - 60, now - 60))
    library = build_only(rt)
    left = {p.name for p in cache.iterdir()}
    assert left == {".build-new", ".new.tmp", "other-old.txt", library.name, library.with_suffix(".sha256").name}


def test_the_cache_directory_and_its_new_parents_are_private(mlp, tmp_path, monkeypatch):
    rt, _ = mlp
    monkeypatch.setenv("SHIFTQUANT_CACHE_DIR", str(tmp_path / "a" / "b"))
    library = build_only(rt)
    assert library.parent == tmp_path / "a" / "b" / "c" and recorded(library)
    for made in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
