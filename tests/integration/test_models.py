"""Unit tests of model resolution and fetching, with fake files only (no real model loads)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from alfred_daemon.engine import models
from alfred_daemon.engine.errors import ModelError
from alfred_daemon.engine.models import (
    SMART_TURN_FILE,
    SMART_TURN_MEMBER,
    fetch_smart_turn,
    package_dir,
    resolve_stt,
    resolve_turn,
    resolve_vad,
)
from alfred_daemon.engine.onnx import make_session

# --------------------------------------------------------------------------- overrides


def test_resolve_vad_missing_override(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "vad.onnx"
    with pytest.raises(ModelError) as err:
        resolve_vad(str(path))
    msg = str(err.value)
    assert "Silero VAD" in msg
    assert str(path) in msg
    assert "models.vad_path" in msg


def test_resolve_vad_existing_override_returned(tmp_path: Path) -> None:
    path = tmp_path / "vad.onnx"
    path.write_bytes(b"anything")  # overrides are verified by loading, not here
    assert resolve_vad(str(path)) == path


def test_resolve_stt_missing_override(tmp_path: Path) -> None:
    path = tmp_path / "whisper-ct2"
    with pytest.raises(ModelError) as err:
        resolve_stt(str(path))
    msg = str(err.value)
    assert "Whisper" in msg
    assert str(path) in msg
    assert "models.stt_model" in msg


def test_resolve_stt_directory_without_model_bin(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"no model\.bin") as err:
        resolve_stt(str(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_resolve_stt_directory_and_model_name(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"\0")
    assert resolve_stt(str(tmp_path)) == str(tmp_path)
    assert resolve_stt("base.en") == "base.en"  # a name faster-whisper resolves itself


def test_resolve_turn_missing_override(tmp_path: Path) -> None:
    path = tmp_path / "turn.onnx"
    with pytest.raises(ModelError) as err:
        resolve_turn(str(path))
    msg = str(err.value)
    assert "Smart Turn" in msg
    assert str(path) in msg
    assert "models.turn_path" in msg


# --------------------------------------------------------------------------- default files


def test_resolve_turn_default_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        resolve_turn(None, models_dir=tmp_path)
    msg = str(err.value)
    assert "not found" in msg
    assert str(tmp_path / SMART_TURN_FILE) in msg
    assert "models fetch" in msg


def test_resolve_turn_default_corrupt(tmp_path: Path) -> None:
    (tmp_path / SMART_TURN_FILE).write_bytes(b"definitely not smart turn")
    with pytest.raises(ModelError) as err:
        resolve_turn(None, models_dir=tmp_path)
    msg = str(err.value)
    assert "corrupt" in msg
    assert "Smart Turn" in msg
    assert str(tmp_path / SMART_TURN_FILE) in msg
    assert models.SMART_TURN_SHA256[:12] in msg


def test_resolve_turn_default_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = b"pretend onnx"
    (tmp_path / SMART_TURN_FILE).write_bytes(content)
    monkeypatch.setattr(models, "SMART_TURN_SHA256", hashlib.sha256(content).hexdigest())
    assert resolve_turn(None, models_dir=tmp_path) == tmp_path / SMART_TURN_FILE


# --------------------------------------------------------------------------- fetch


def make_wheel(path: Path, member: str, content: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pipecat/__init__.py", "")
        zf.writestr(member, content)
    return path


def test_fetch_smart_turn_rejects_wrong_bytes(tmp_path: Path) -> None:
    wheel = make_wheel(
        tmp_path / "pipecat_ai-1.14.0-py3-none-any.whl", SMART_TURN_MEMBER, b"tampered weights"
    )
    target_dir = tmp_path / "models"
    with pytest.raises(ModelError) as err:
        fetch_smart_turn(models_dir=target_dir, wheel=wheel)
    msg = str(err.value)
    assert wheel.name in msg
    assert "refusing" in msg
    assert hashlib.sha256(b"tampered weights").hexdigest()[:12] in msg
    assert not (target_dir / SMART_TURN_FILE).exists()
    assert list(target_dir.iterdir()) == []  # no .partial or other leftovers


def test_fetch_smart_turn_installs_verified_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = b"pretend smart turn weights"
    monkeypatch.setattr(models, "SMART_TURN_SHA256", hashlib.sha256(content).hexdigest())
    wheel = make_wheel(tmp_path / "fake.whl", SMART_TURN_MEMBER, content)
    target_dir = tmp_path / "models"
    target = fetch_smart_turn(models_dir=target_dir, wheel=wheel)
    assert target == target_dir / SMART_TURN_FILE
    assert target.read_bytes() == content
    assert sorted(p.name for p in target_dir.iterdir()) == [SMART_TURN_FILE]
    # idempotent: a verified file in place is kept without opening any wheel
    assert fetch_smart_turn(models_dir=target_dir, wheel=tmp_path / "missing.whl") == target
    assert resolve_turn(None, models_dir=target_dir) == target


def test_fetch_smart_turn_wheel_without_member_is_a_model_error(tmp_path: Path) -> None:
    wheel = make_wheel(
        tmp_path / "pipecat_ai-1.14.0-py3-none-any.whl", "pipecat/audio/other.onnx", b"x"
    )
    target_dir = tmp_path / "models"
    with pytest.raises(ModelError, match="Smart Turn"):
        fetch_smart_turn(models_dir=target_dir, wheel=wheel)
    assert not (target_dir / SMART_TURN_FILE).exists()


# --------------------------------------------------------------------------- package_dir


def test_package_dir_finds_silero_vad_without_importing_it() -> None:
    code = (
        "import sys\n"
        "from alfred_daemon.engine.models import package_dir\n"
        "p = package_dir('silero_vad')\n"
        "assert p is not None and p.name == 'silero_vad', p\n"
        "assert (p / 'data' / 'silero_vad.onnx').is_file(), p\n"
        "assert 'silero_vad' not in sys.modules, 'silero_vad imported'\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_package_dir_missing_or_not_a_package() -> None:
    assert package_dir("alfred_no_such_package_xyz") is None
    assert package_dir("alfred_no_such_package_xyz.sub") is None
    assert package_dir("wave") is None  # a plain module, not a package directory
    found = package_dir("json")
    assert found is not None and (found / "__init__.py").is_file()


# --------------------------------------------------------------------------- onnx


def test_make_session_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 10)
    with pytest.raises(ModelError) as err:
        make_session(path, threads=1, model="Silero VAD")
    msg = str(err.value)
    assert str(path) in msg
    assert "Silero VAD" in msg
    assert "could not be loaded" in msg


def test_make_session_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.onnx"
    with pytest.raises(ModelError) as err:
        make_session(path, threads=1, model="Smart Turn v3.2")
    assert str(path) in str(err.value)
