"""Smart Turn's int8 kernel check (engine/int8_check.py), on this CPU and on an AVX2-only
CPU emulated by qemu-user (``make setup`` installs it), so both kinds of host are covered
whichever kind runs the suite.

qemu 7.2's TCG implements AVX2 but neither AVX-512 nor VNNI, and it reports its emulated
CPU to the program (``cpuid``), so ONNX Runtime takes the same kernels there as on a real
AVX2-only host -- including the saturating 16-bit pair sums.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from alfred_daemon.engine.errors import ConfigError
from alfred_daemon.engine.int8_check import (
    PROBE_FILE,
    Int8Kernels,
    build_probe,
    choose,
    fused_int8_exact,
)
from alfred_daemon.engine.jobs import Models
from alfred_daemon.engine.models import ModelsConfig

from ..conftest import Utterance
from .test_engine_real import _speech_span, run_session

AVX2_CPU = "Haswell"
"""A qemu CPU model with AVX2 and FMA, without AVX-512 or VNNI."""


def _emulated(code: str, timeout: float) -> dict[str, object]:
    """Run Python ``code`` (which prints one JSON line last) on the emulated AVX2 CPU."""
    if platform.machine() != "x86_64":
        pytest.skip("the emulated CPU is x86_64; this host runs another architecture")
    qemu = shutil.which("qemu-x86_64")
    assert qemu, "qemu-x86_64 not found: `make setup` installs Debian's qemu-user"
    proc = subprocess.run([qemu, "-cpu", AVX2_CPU, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_committed_probe_is_the_one_build_probe_makes() -> None:
    assert PROBE_FILE.read_bytes() == build_probe()


def test_turn_int8_setting_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"models\.turn_int8 = 'fast' is not one of"):
        ModelsConfig(turn_int8="fast")
    assert ModelsConfig(turn_int8="unfused").turn_int8 == "unfused"


def test_forced_kernels_are_kept_and_auto_follows_the_probe() -> None:
    assert choose(Int8Kernels.FUSED) is Int8Kernels.FUSED
    assert choose(Int8Kernels.UNFUSED) is Int8Kernels.UNFUSED
    exact = fused_int8_exact()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    print("fused int8 exact on this CPU:", exact, "| avx512_vnni:", "avx512_vnni" in flags,
          "| avx_vnni:", " avx_vnni" in flags)
    assert choose(Int8Kernels.AUTO) is (Int8Kernels.FUSED if exact else Int8Kernels.UNFUSED)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_emulated_avx2_cpu_saturates_and_auto_picks_unfused() -> None:
    out = _emulated(
        "import json, numpy as np\n"
        "from alfred_daemon.engine import int8_check as c\n"
        "model = c.PROBE_FILE.read_bytes()\n"
        "diff = float(np.max(np.abs(c._run(True, model) - c._run(False, model))))\n"
        "print(json.dumps({'diff': diff, 'exact': c.fused_int8_exact(),\n"
        "                  'auto': c.choose(c.Int8Kernels.AUTO).value}))\n",
        timeout=240)
    print("emulated AVX2:", out)
    assert out["exact"] is False and out["auto"] == "unfused"
    assert isinstance(out["diff"], float) and out["diff"] > 10  # saturation, not rounding


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_emulated_avx2_smart_turn_fused_is_wrong_unfused_agrees(
    tmp_path: Path, models: Models, utterances: list[Utterance],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The product bug itself: a Harvard sentence cut at 55 % of its speech. Natively (and
    unfused on the emulated AVX2 CPU) Smart Turn calls it incomplete; fused int8 kernels on
    the emulated AVX2 CPU call it complete. Smart Turn runs ~7 s a call under emulation, so
    one clip is checked here; the full bounds run natively on both paths
    (test_engine_real's ``turn_models``)."""
    assert models.turn is not None
    u = next(u for u in utterances if u.file == "spk1_snt1.wav")
    s, e = _speech_span(models, u.audio)
    cut = u.audio[: s + int(0.55 * (e - s))]
    # The audio the engine itself gives Smart Turn at the end of the cut sentence.
    asked: list[npt.NDArray[np.float32]] = []
    predict = models.turn.predict

    def recording_predict(audio: npt.NDArray[np.float32]) -> tuple[float, float]:
        asked.append(audio)
        return predict(audio)

    monkeypatch.setattr(models.turn, "predict", recording_predict)
    run_session(models, np.concatenate([cut, np.zeros(16_000, np.float32)]))
    assert asked, "Smart Turn was not asked"
    feats = tmp_path / "features.npy"
    np.save(feats, models.turn.features(asked[-1]))
    native = predict(asked[-1])[0]
    out = _emulated(
        "import json, numpy as np\n"
        "from pathlib import Path\n"
        "from alfred_daemon.engine.int8_check import Int8Kernels\n"
        "from alfred_daemon.engine.turn import SmartTurn\n"
        f"f = np.load({str(feats)!r})[None]\n"
        "res = {}\n"
        "for k in (Int8Kernels.FUSED, Int8Kernels.AUTO):\n"
        f"    st = SmartTurn(Path({str(models.turn.path)!r}), kernels=k)\n"
        "    (p,) = st._session.run(None, {'input_features': f})\n"
        "    res[k.value] = [st.kernels.value, float(np.asarray(p).reshape(-1)[0])]\n"
        "print(json.dumps(res))\n",
        timeout=540)
    print(f"native ({models.turn.kernels.value}): {native:.3f}; emulated AVX2: {out}")
    fused, auto = out["fused"], out["auto"]
    assert isinstance(fused, list) and isinstance(auto, list)
    assert auto[0] == "unfused"
    assert native < 0.5 and auto[1] < 0.5, "the cut sentence is incomplete"
    assert fused[1] > 0.5, "fused int8 kernels on AVX2 were expected to saturate here"
