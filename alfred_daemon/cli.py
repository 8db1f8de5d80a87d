"""``alfred-daemon`` command line.

Subcommands are thin: they parse arguments and call into the engine (and, later, the
runtime and ops packages). Heavy imports happen inside the handlers so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    from alfred_client import StreamError

    from .engine.models import ModelsConfig
    from .ops.config import DaemonConfig


def _fail(message: object) -> int:
    """Bad input ends in one sentence and exit code 2, as the config loader's errors do: the
    user needs what is wrong and what to do, which a traceback would bury."""
    print(f"alfred-daemon: {message}", file=sys.stderr)
    return 2


def _cmd_transcribe(args: argparse.Namespace) -> int:
    from .engine.audio import RESAMPLER_RATES, float_to_pcm16, load_wav
    from .engine.config import EngineConfig, SttConfig
    from .engine.errors import EngineError
    from .engine.events import Event
    from .engine.jobs import Models
    from .engine.models import resolve_all
    from .engine.session import Session

    try:
        # The file first: a bad one is reported at once, not after seconds of model loading.
        audio, rate = load_wav(args.file, RESAMPLER_RATES)
        paths = resolve_all(_models_config(args, turn_enabled=not args.no_turn))
        models = Models.load(paths, threads=args.threads)
    except EngineError as exc:
        return _fail(exc)
    cfg = EngineConfig(stt=SttConfig(partials=not args.no_partials))
    session = Session(models, cfg, sample_rate=rate)
    frame = max(1, rate * 20 // 1000)  # 20 ms frames, as a live client would send
    t_start = time.perf_counter()

    def show(events: list[Event]) -> None:
        for ev in events:
            if args.json:
                print(json.dumps(ev.to_dict()), flush=True)
            else:
                print(_human(ev), flush=True)

    pcm = float_to_pcm16(audio)  # LINEAR16, what `stream` sends the daemon
    for i in range(0, len(pcm) // 2, frame):
        if args.realtime:
            due = t_start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        show(session.push(pcm[2 * i : 2 * (i + frame)]))
    show(session.close())
    return 0


def _models_config(args: argparse.Namespace, turn_enabled: bool = True) -> ModelsConfig:
    from .engine.models import ModelsConfig

    return ModelsConfig(vad_path=args.vad_model, stt_model=args.stt_model,
                        turn_path=args.turn_model, turn_enabled=turn_enabled,
                        models_dir=args.models_dir)


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (default: the packaged weights)")
    g.add_argument("--vad-model", default=None, help="Silero VAD ONNX file")
    g.add_argument("--stt-model", default=None,
                   help="CTranslate2 Whisper directory, or a faster-whisper model name")
    g.add_argument("--turn-model", default=None, help="Smart Turn ONNX file")
    g.add_argument("--models-dir", default=None,
                   help="where `models fetch` puts weights (default: inside the venv)")


def _human(ev: object) -> str:
    from .engine import events as e

    assert isinstance(ev, e.Event)
    t = f"[{ev.audio_offset_ms / 1000:7.2f}s]"
    if isinstance(ev, e.PartialTranscription):
        rest = ev.text[len(ev.stable_text):]
        return f"{t} partial   {ev.stable_text}|{rest}"
    if isinstance(ev, e.FinalTranscription):
        return f"{t} final     {ev.text}   ({ev.processing_ms:.0f} ms)"
    if isinstance(ev, e.TurnEnded):
        p = "-" if ev.probability is None else f"{ev.probability:.2f}"
        return f"{t} turn end  {ev.reason.value} p={p}: {ev.transcript}"
    if isinstance(ev, e.SpeechStarted):
        return f"{t} speech started"
    if isinstance(ev, e.SpeechEnded):
        return f"{t} speech ended ({ev.duration_ms} ms)"
    if isinstance(ev, e.TurnResumed):
        return f"{t} turn resumed"
    if isinstance(ev, e.Interruption):
        return f"{t} interruption"
    return f"{t} {ev.TYPE}"


def _cmd_models(args: argparse.Namespace) -> int:
    from .engine.errors import EngineError
    from .engine.models import fetch_smart_turn, resolve_all

    try:
        if args.action == "fetch":
            path = fetch_smart_turn(Path(args.models_dir) if args.models_dir else None)
            print(f"Smart Turn: {path} (sha256 verified)")
        paths = resolve_all(_models_config(args))
    except EngineError as exc:
        print(f"alfred-daemon: {exc}", file=sys.stderr)
        return 2
    print(f"Silero VAD: {paths.vad}")
    print(f"Whisper:    {paths.stt}")
    print(f"Smart Turn: {paths.turn}")
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    import asyncio

    from alfred_client import AsyncClient, Event, SessionOptions, StreamError

    from .engine.audio import load_wav
    from .engine.errors import EngineError
    from .runtime.supervisor import SUPPORTED_RATES

    for flag in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            print(f"alfred-daemon: --{flag.replace('_', '-')} {path} is not a readable file",
                  file=sys.stderr)
            return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        print("alfred-daemon: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2

    def show(ev: Event) -> None:
        if args.json:
            print(json.dumps(ev.to_dict()), flush=True)
            return
        d, t = ev.data, f"[{ev.audio_offset_ms / 1000:7.2f}s]"
        if ev.type == "partial_transcription":
            stable = d.get("stable_text", "")
            line = f"{t} partial   {stable}|{d.get('text', '')[len(stable):]}"
        elif ev.type == "final_transcription":
            line = f"{t} final     {d.get('text', '')}   ({ev.processing_ms:.0f} ms)"
        elif ev.type == "turn_ended":
            p = d.get("probability")
            line = (f"{t} turn end  {d.get('reason')} p={'-' if p is None else f'{p:.2f}'}: "
                    f"{d.get('transcript', '')}")
        elif ev.type == "pipeline_health":
            return  # periodic; shown with --json
        elif ev.type == "session_started":
            line = f"{t} session   {d.get('session_id')}"
        else:
            line = f"{t} {ev.type.replace('_', ' ')}"
        print(line, flush=True)

    try:
        audio, rate = load_wav(args.file, SUPPORTED_RATES)
    except EngineError as exc:
        return _fail(exc)
    heard = False

    async def run() -> int:
        nonlocal heard
        options = SessionOptions(partials=not args.no_partials)
        token = os.environ.get("ALFRED_TOKEN") or None
        async with AsyncClient(args.target, token=token, tls_ca=args.tls_ca,
                               tls_cert=args.tls_cert, tls_key=args.tls_key) as client:
            async for ev in client.stream_array(audio, rate, realtime=args.realtime,
                                                options=options):
                heard = True
                show(ev)
        return 0

    try:
        return asyncio.run(run())
    except StreamError as exc:
        return _stream_failed(exc, heard)


def _cmd_webrtc(args: argparse.Namespace) -> int:
    import asyncio
    from urllib.parse import urlsplit

    from .engine.audio import RESAMPLER_RATES, load_wav
    from .engine.errors import EngineError

    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return _fail(f"--url {args.url!r} is not the daemon's HTTP address; give one like "
                     "http://127.0.0.1:8015")
    if not 0.0 <= args.tail <= 60.0:
        return _fail(f"--tail {args.tail:g} is out of range; give 0 to 60 seconds")
    try:
        audio, rate = load_wav(args.file, RESAMPLER_RATES)
    except EngineError as exc:
        return _fail(exc)
    from .whip_client import PcmTrack, WhipError, human_line, play, to_pcm48

    def show(message: dict[str, object]) -> None:
        line = json.dumps(message) if args.json else human_line(message)
        if line is not None:
            print(line, flush=True)

    async def run() -> int:
        reason = await play(args.url, PcmTrack(to_pcm48(audio, rate)), show=show,
                            params={"partials": "false"} if args.no_partials else {},
                            token=os.environ.get("ALFRED_TOKEN") or None, tail_s=args.tail)
        if reason != "finished":
            print(f"alfred-daemon: the daemon closed the session before the end of the file "
                  f"(reason {reason}); see its log", file=sys.stderr)
            return 1
        return 0

    try:
        return asyncio.run(run())
    except WhipError as exc:
        if exc.status == 0:
            return _fail(f"{exc}; start the daemon with `alfred-daemon serve` (or `make run` "
                         "in a checkout), or point --url at a running one")
        print(f"alfred-daemon: the daemon refused the offer (HTTP {exc.status}): {exc}",
              file=sys.stderr)
        return 2 if 400 <= exc.status < 500 and exc.status != 429 else 1
    except TimeoutError:
        print("alfred-daemon: no event from the daemon for 30 s; the WebRTC connection may "
              "have failed (see the daemon's log)", file=sys.stderr)
        return 1


def _stream_failed(exc: StreamError, heard: bool) -> int:
    """One sentence for a failed ``stream``. Exit 2 when the user has something to fix (start
    the daemon, change the input), 1 when the daemon could not serve a valid request
    (overloaded, shutting down, failed)."""
    import grpc

    if exc.unreachable:
        # gRPC's details are a paragraph ("failed to connect to all addresses; last error:
        # UNKNOWN: ipv4:...: Failed to connect to remote host: Connection refused").
        why = "connection refused" if "connection refused" in exc.details.lower() else (
            exc.details)
        what = ("lost the daemon at {} mid-stream" if heard else "no daemon answered at {}")
        return _fail(f"{what.format(exc.target)} ({why}); start the daemon with "
                     "`alfred-daemon serve` (or `make run` in a checkout), or point --target "
                     "at a running one")
    verb = "ended" if heard else "refused"
    print(f"alfred-daemon: the daemon {verb} the stream: {exc}", file=sys.stderr)
    return 2 if exc.code == grpc.StatusCode.INVALID_ARGUMENT else 1


def _serve_config(args: argparse.Namespace) -> DaemonConfig:
    """The config file (``--config``; defaults without one) plus environment overrides,
    then the command-line flags that were given explicitly."""
    import dataclasses

    from .ops.config import load

    cfg = load(args.config)
    rt, grpc_cfg, http, logs = cfg.runtime, cfg.grpc, cfg.http, cfg.logging
    if args.workers is not None:
        rt = dataclasses.replace(rt, workers=dataclasses.replace(rt.workers, count=args.workers))
    if args.runtime_dir is not None:
        rt = dataclasses.replace(rt, runtime_dir=args.runtime_dir)
    if any(getattr(args, k) is not None for k in ("vad_model", "stt_model", "turn_model",
                                                   "models_dir")):
        rt = dataclasses.replace(rt, models=_models_config(args))
    if args.listen is not None:
        grpc_cfg = dataclasses.replace(grpc_cfg, listen=args.listen)
    if args.http_host is not None:
        http = dataclasses.replace(http, host=args.http_host)
    if args.http_port is not None:
        http = dataclasses.replace(http, port=args.http_port)
    for flag, key in (("log_level", "level"), ("log_format", "format")):
        if getattr(args, flag) is not None:
            logs = dataclasses.replace(logs, **{key: getattr(args, flag)})
    if args.log_file is not None:
        logs = dataclasses.replace(logs, file=str(args.log_file))
    if args.pid_file is not None:
        logs = dataclasses.replace(logs, pid_file=str(args.pid_file))
    return dataclasses.replace(cfg, runtime=rt, grpc=grpc_cfg, http=http, logging=logs)


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from .api.auth import Authenticator, TokenStore
    from .api.tls import TlsFiles
    from .engine.errors import ConfigError, EngineError
    from .ops.logs import setup_logging
    from .ops.security import exposure_policy
    from .ops.serve import serve
    from .runtime.errors import WorkersFailedError
    from .runtime.rundir import RuntimeDirError

    try:
        cfg = _serve_config(args)
        sec = cfg.security
        refusal, warnings = exposure_policy(sec, cfg.grpc.listen, cfg.http.host)
        if refusal is not None:
            print(f"alfred-daemon: {refusal}", file=sys.stderr)
            return 2
        auth = Authenticator(TokenStore.load(Path(sec.tokens_file)) if sec.tokens_file
                             else None)
        if bool(sec.tls_cert) != bool(sec.tls_key):
            raise ConfigError("security.tls_cert and security.tls_key go together: set both "
                              "or neither")
        tls = (TlsFiles(Path(sec.tls_cert), Path(sec.tls_key),
                        Path(sec.tls_client_ca) if sec.tls_client_ca else None)
               if sec.tls_cert else None)
        setup_logging(cfg.logging.level, cfg.logging.format,
                      Path(cfg.logging.file) if cfg.logging.file else None)
        pid_file = Path(cfg.logging.pid_file) if cfg.logging.pid_file else None
        return asyncio.run(serve(cfg.runtime, cfg.grpc, http_config=cfg.http,
                                 pid_file=pid_file, config_path=args.config,
                                 warnings=warnings, auth=auth, tls=tls,
                                 metrics_public=cfg.security.metrics_public,
                                 webrtc_config=cfg.webrtc))
    except (EngineError, RuntimeDirError, OSError) as exc:
        print(f"alfred-daemon: {exc}", file=sys.stderr)
        return 2
    except WorkersFailedError as exc:
        # Not bad input (exit 2): the install or the machine is broken.
        print(f"alfred-daemon: cannot start: {exc}", file=sys.stderr)
        return 1


def _cmd_config(args: argparse.Namespace) -> int:
    from .engine.errors import ConfigError
    from .ops.config import dumps, load, to_mapping

    try:
        cfg = load(args.file)
    except ConfigError as exc:
        print(f"alfred-daemon: {exc}", file=sys.stderr)
        return 2
    if args.action == "show":
        print(dumps(to_mapping(cfg)), end="")
    else:
        print(f"{args.file}: ok" if args.file else "defaults: ok")
    return 0


DESCRIPTION = ("Speech daemon: Silero VAD, faster-whisper and Smart Turn behind a gRPC API. "
               "`serve` runs it, `stream` sends a WAV file to a running daemon (`webrtc` does "
               "so over WebRTC), `transcribe` runs the engine over a WAV file without one.")
"""Plain text: argparse prints descriptions verbatim, so the module docstring's RST markup
would show up in ``--help``."""

WAV_FORMATS = ("a WAV file (8/16/24/32-bit integer PCM or 32/64-bit float; stereo is "
               "averaged to mono)")

OUTPUT_HELP = ("Output, one line per event: `[1.23s]` is the event's position in the audio; "
               "`partial ask not what|your country` is the text so far, the part before | is "
               "settled (every later partial and the final start with it), the part after it "
               "may still change; `final TEXT (477 ms)` is the utterance's text and the time "
               "Whisper took to decode it.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alfred-daemon", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"alfred-daemon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("transcribe", help="run the engine over a WAV file and print events",
                        description="Run the engine (no daemon) over a WAV file and print its "
                                    "events.", epilog=OUTPUT_HELP)
    tr.add_argument("file", type=Path,
                    help=f"the audio to transcribe: {WAV_FORMATS} at any sample rate")
    tr.add_argument("--realtime", action="store_true", help="feed audio at real-time pace")
    tr.add_argument("--json", action="store_true", help="one JSON object per event per line")
    tr.add_argument("--threads", type=int, default=1, help="model threads (default 1)")
    tr.add_argument("--no-partials", action="store_true",
                    help="no partial transcriptions while someone speaks, only the final "
                         "text of each utterance (and the other events)")
    tr.add_argument("--no-turn", action="store_true", help="skip Smart Turn")
    _add_model_flags(tr)
    tr.set_defaults(func=_cmd_transcribe)

    st = sub.add_parser("stream", help="stream a WAV file to a running daemon and print events",
                        description="Send a WAV file to a running daemon (start one with "
                                    "`alfred-daemon serve`) over gRPC, in 20 ms frames, and "
                                    "print the events it sends back.", epilog=OUTPUT_HELP)
    st.add_argument("file", type=Path,
                    help=f"the audio to send: {WAV_FORMATS} at any sample rate; it is converted "
                         "to 16-bit mono here, and resampled to 16 kHz if the daemon does not "
                         "take its rate")
    st.add_argument("--realtime", action="store_true", help="send audio at real-time pace")
    st.add_argument("--json", action="store_true", help="one JSON object per event per line")
    st.add_argument("--target", default="127.0.0.1:50051",
                    help="daemon address host:port (a bearer token, if the daemon requires "
                         "one, comes from $ALFRED_TOKEN: a flag would show it in ps)")
    st.add_argument("--tls-ca", type=Path, default=None,
                    help="PEM CA to verify a daemon serving TLS with")
    st.add_argument("--tls-cert", type=Path, default=None,
                    help="PEM client certificate, for a daemon that asks for one (mTLS)")
    st.add_argument("--tls-key", type=Path, default=None, help="the client certificate's key")
    st.add_argument("--no-partials", action="store_true",
                    help="ask the daemon for no partial transcriptions while someone speaks, "
                         "only the final text of each utterance (and the other events)")
    st.set_defaults(func=_cmd_stream)

    wr = sub.add_parser("webrtc", help="stream a WAV file to a running daemon over WebRTC "
                                       "(WHIP) and print events",
                        description="Send a WAV file to a running daemon as a WebRTC peer "
                                    "would (Opus over SRTP, offered with WHIP to /whip), at "
                                    "real-time pace, and print the events of its `events` data "
                                    "channel; the session ends with DELETE after the file.",
                        epilog=OUTPUT_HELP)
    wr.add_argument("file", type=Path,
                    help=f"the audio to send: {WAV_FORMATS} at any sample rate (resampled "
                         "to 48 kHz, Opus's rate, here)")
    wr.add_argument("--url", default="http://127.0.0.1:8015",
                    help="the daemon's HTTP address (a bearer token, if the daemon requires "
                         "one, comes from $ALFRED_TOKEN)")
    wr.add_argument("--json", action="store_true",
                    help="print each message of the events channel as it came (the WebSocket "
                         "bridge's JSON: spec names, camelCase fields)")
    wr.add_argument("--no-partials", action="store_true",
                    help="ask for no partial transcriptions, only finals (and other events)")
    wr.add_argument("--tail", type=float, default=1.0,
                    help="seconds of silence sent after the file before ending (default 1)")
    wr.set_defaults(func=_cmd_webrtc)

    sv = sub.add_parser("serve", help="run the daemon (supervisor and workers) until SIGTERM")
    sv.add_argument("--config", type=Path, default=None,
                    help="TOML config file (see systemd/alfred-daemon.toml); flags override it")
    sv.add_argument("--workers", type=int, default=None,
                    help="worker processes (0 = one per core)")
    sv.add_argument("--listen", default=None, help="gRPC address (default 127.0.0.1:50051)")
    sv.add_argument("--http-host", default=None, help="HTTP ops address (default 127.0.0.1)")
    sv.add_argument("--http-port", type=int, default=None, help="HTTP ops port (default 8015)")
    sv.add_argument("--pid-file", type=Path, default=None, help="write the daemon's pid here")
    sv.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    sv.add_argument("--log-format", default=None, choices=["text", "json"],
                    help="stderr log lines: text (journald-aware) or json")
    sv.add_argument("--log-file", type=Path, default=None,
                    help="also log to this size-rotated file (e.g. logs/alfred-daemon.log)")
    sv.add_argument("--runtime-dir", default=None,
                    help="private directory for control sockets (default $XDG_RUNTIME_DIR)")
    _add_model_flags(sv)
    sv.set_defaults(func=_cmd_serve)

    co = sub.add_parser("config", help="show the effective config or check a config file")
    co.add_argument("action", choices=["show", "check"])
    co.add_argument("file", type=Path, nargs="?", default=None)
    co.set_defaults(func=_cmd_config)

    mo = sub.add_parser("models", help="fetch or check model weights")
    mo.add_argument("action", choices=["fetch", "check"])
    _add_model_flags(mo)
    mo.set_defaults(func=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
