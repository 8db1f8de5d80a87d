"""The Node.js client (clients/node).

Against a real daemon (``alfred-daemon serve`` in a subprocess): ``node
clients/node/examples/stream_wav.js --realtime --json`` streaming jfk.wav, with and without a
token; and the package as a user gets it -- ``npm pack``, installed from the tarball into a
scratch project, its TypeScript example compiled there with ``tsc`` against the installed
declarations and run. Without a daemon: the package's own tests (``node --test``: resume and
dedupe against a scripted grpc-js server, the declarations against the proto, the event
shape, the exports), ``tsc --noEmit`` over the declarations and the example (and a file with
type errors, which must fail), the tarball's contents, and the bundled proto being the
repository's byte for byte.

Needs ``node``, ``npm`` and ``clients/node/node_modules`` (``make setup`` runs ``npm ci``
there); when one is missing the tests fail rather than skip, so CI cannot pass without
running them.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import REPO
from ..grpc_helpers import Daemon, running_daemon, wer

NODE_DIR = REPO / "clients" / "node"
EXAMPLE = NODE_DIR / "examples" / "stream_wav.js"
TS_EXAMPLE = "examples/transcript.ts"
TSC = NODE_DIR / "node_modules" / "typescript" / "bin" / "tsc"
BUNDLED_PROTO = NODE_DIR / "proto" / "alfred" / "v1" / "alfred.proto"
PROTO = REPO / "proto" / "alfred" / "v1" / "alfred.proto"
WAV = REPO / "tests" / "data" / "jfk.wav"
REFERENCE = ("And so my fellow Americans, ask not what your country can do for you, "
             "ask what you can do for your country.")
STREAM_TIMEOUT_S = 120.0
TOOL_TIMEOUT_S = 180.0
"""tsc, node --test, npm pack."""
INSTALL_TIMEOUT_S = 300.0
"""npm install of the tarball (its dependencies from npm's cache or the registry)."""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A real daemon for this test; it must exit 0 on SIGTERM and leave no process behind
    (tests/grpc_helpers.py, shared with the Python client's tests)."""
    with running_daemon(tmp_path) as d:
        yield d


@pytest.fixture
def node() -> str:
    """The node binary, with the client's dependencies installed; else the test fails."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the Node.js client test needs Node >= 18 "
                    "(CI installs it; see clients/README.md)")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"{NODE_DIR / 'node_modules'} is missing: run "
                    "`cd clients/node && npm ci --no-audit --no-fund` (make setup does it)")
    return node


@pytest.fixture
def npm() -> str:
    """The npm binary; else the test fails."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not on PATH: the Node.js client's package tests need npm "
                    "(it comes with Node; see clients/README.md)")
    return npm


@pytest.fixture
def tsc(node: str) -> list[str]:
    """The command of the client's pinned TypeScript compiler; else the test fails."""
    if not TSC.is_file():
        pytest.fail(f"{TSC} is missing: run `cd clients/node && npm ci --no-audit --no-fund` "
                    "(make setup does it; typescript is a devDependency)")
    return [node, str(TSC)]


def _run(cmd: list[str], cwd: Path, timeout: float,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `cmd` to the end (bounded by `timeout`); a timeout fails the test with its output."""
    full_env = {**os.environ, "NODE_NO_WARNINGS": "1", "npm_config_update_notifier": "false",
                "npm_config_fund": "false", "npm_config_audit": "false", **(env or {})}
    try:
        return subprocess.run(cmd, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout:.0f} s; "
                    f"stdout so far:\n{exc.stdout!r}\nstderr:\n{exc.stderr!r}")


def _ok(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 0, (f"{' '.join(run.args)} exited {run.returncode}\n"
                                 f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}")
    return run.stdout


def _wav_ms(path: Path) -> float:
    with wave.open(str(path), "rb") as wf:
        return wf.getnframes() * 1000 / wf.getframerate()


@pytest.mark.slow
def test_node_client_streams_jfk_realtime(node: str, daemon: Daemon) -> None:
    env = {**os.environ, "NODE_NO_WARNINGS": "1"}
    try:
        run = subprocess.run(
            [node, str(EXAMPLE), str(WAV), "--realtime", "--json", "--target", daemon.target],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=STREAM_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"stream_wav.js did not finish within {STREAM_TIMEOUT_S:.0f} s; "
                    f"stdout so far:\n{exc.stdout!r}\ndaemon log:\n{daemon.log_tail()}")
    assert run.returncode == 0, (
        f"stream_wav.js exited {run.returncode}\nstderr:\n{run.stderr}\n"
        f"daemon log:\n{daemon.log_tail()}")

    events: list[dict[str, Any]] = [json.loads(line) for line in run.stdout.splitlines()
                                    if line.strip()]
    assert events, f"no events printed; stderr:\n{run.stderr}"
    types = [e["type"] for e in events]
    for e in events:  # the `alfred-daemon stream --json` shape
        assert isinstance(e["type"], str) and e["type"] != "unknown", e
        assert isinstance(e["audio_offset_ms"], int), e
        assert isinstance(e["processing_ms"], int | float), e
        assert not any(k.startswith("_") for k in e), e

    assert types[0] == "session_started", types[:5]
    started = events[0]
    assert started["session_id"] and started["resume_token"]
    assert started["effective_config"]["sample_rate_hz"] == 16_000
    assert started["effective_config"]["encoding"] == "LINEAR16"

    assert "final_transcription" in types, types
    first_final = types.index("final_transcription")
    partials = types[:first_final].count("partial_transcription")
    assert partials >= 2, f"{partials} partials before the first final: {types[:first_final]}"

    finals = [e for e in events if e["type"] == "final_transcription"]
    text = " ".join(e["text"] for e in finals)
    error = wer(REFERENCE, text)
    assert error <= 0.10, f"WER {error:.3f}: {text!r}"

    last_final = len(types) - 1 - types[::-1].index("final_transcription")
    assert "turn_ended" in types[last_final + 1 :], types[last_final:]

    length_ms = _wav_ms(WAV)
    offsets = [(e["type"], e["audio_offset_ms"]) for e in events
               if e["type"] != "frame_processed"]
    for (prev_t, prev), (t, cur) in itertools.pairwise(offsets):
        assert cur >= prev, f"audio_offset_ms went back: {prev_t}@{prev} -> {t}@{cur}"
    for t, off in offsets:
        assert 0 <= off <= length_ms + 100, f"{t} at {off} ms, file is {length_ms:.0f} ms"

    assert types[-1] == "session_closed", types[-3:]
    assert events[-1]["reason"] == "finished", events[-1]
    assert types.count("session_closed") == 1


@pytest.mark.slow
def test_node_client_sends_its_token(node: str, tmp_path: Path) -> None:
    """With tokens required, the client without one gets UNAUTHENTICATED; with ALFRED_TOKEN
    (the example passes it as {token}) it streams."""
    token = "node-client-token-0123456789"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"node {token}\n")
    runs: dict[str, subprocess.CompletedProcess[str]] = {}
    with running_daemon(tmp_path / "d",
                        env={"ALFRED__SECURITY__TOKENS_FILE": str(tokens)}) as d:
        for name, extra in (("none", {}), ("token", {"ALFRED_TOKEN": token})):
            env = {k: v for k, v in os.environ.items() if k != "ALFRED_TOKEN"}
            runs[name] = subprocess.run(
                [node, str(EXAMPLE), str(WAV), "--json", "--no-partials", "--target", d.target],
                cwd=REPO, env={**env, "NODE_NO_WARNINGS": "1", **extra},
                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=STREAM_TIMEOUT_S, check=False)
    assert runs["none"].returncode == 1, runs["none"]
    assert "UNAUTHENTICATED" in runs["none"].stderr
    assert runs["token"].returncode == 0, runs["token"].stderr
    types = [json.loads(line)["type"] for line in runs["token"].stdout.splitlines() if line]
    assert types[0] == "session_started" and "final_transcription" in types


# ----------------------------------------------------------------------------- no daemon


def test_node_bundled_proto_is_the_repository_proto() -> None:
    """index.js loads the package's copy of the proto (an installed package has no
    ../../proto); it must be the daemon's, byte for byte."""
    assert BUNDLED_PROTO.is_file(), f"{BUNDLED_PROTO} is missing: run npm run sync-proto"
    assert BUNDLED_PROTO.read_bytes() == PROTO.read_bytes(), (
        f"{BUNDLED_PROTO} differs from {PROTO}: run `cd clients/node && npm run sync-proto` "
        "(and update index.d.ts if the events changed)")


@pytest.mark.timeout(240)
def test_node_package_tests(node: str) -> None:
    """clients/node/test/*.test.js: resume and dedupe against a scripted grpc-js server (the
    Node twin of test_python_client_resumes_with_last_event_sequence_and_drops_resends),
    the declarations against the proto and the exports, the event shape, the package's
    exports from CommonJS and ESM."""
    files = sorted(str(p.relative_to(NODE_DIR)) for p in (NODE_DIR / "test").glob("*.test.js"))
    assert len(files) >= 4, files
    out = _ok(_run([node, "--test", *files], NODE_DIR, TOOL_TIMEOUT_S))
    assert "# fail 0" in out and "# skipped 0" in out and "# todo 0" in out, out
    passed = int(out.split("# pass ", 1)[1].split()[0])
    assert passed >= 15, out


@pytest.mark.timeout(240)
def test_node_typescript_declarations_typecheck(tsc: list[str]) -> None:
    """`tsc --noEmit -p clients/node` (strict, skipLibCheck off): index.d.ts and
    examples/transcript.ts, which imports 'alfred-client' through the package's exports."""
    config = json.loads((NODE_DIR / "tsconfig.json").read_text())
    assert config["compilerOptions"]["strict"] is True
    assert config["compilerOptions"]["skipLibCheck"] is False
    assert set(config["files"]) == {"index.d.ts", TS_EXAMPLE}
    run = _run([*tsc, "--noEmit", "-p", str(NODE_DIR), "--listFiles"], NODE_DIR,
               TOOL_TIMEOUT_S)
    listed = _ok(run).splitlines()
    for f in ("index.d.ts", TS_EXAMPLE):  # checked, not just named
        assert str(NODE_DIR / f) in listed, (f, listed[-5:])


BAD_TS = """\
import { createClient, sessionConfig } from 'alfred-client';

async function main(): Promise<void> {
  const client = createClient('127.0.0.1:50051', { maxResumes: 'three' });
  for await (const ev of client.streamWav('call.wav', { realtime: true, resume: 1 })) {
    if (ev.type === 'final_transcription') {
      const n: number = ev.text;
      console.log(n, ev.turn_id);
    }
    if (ev.type === 'turn_ended') console.log(ev.probability.toFixed(2));
    if (ev.type === 'final_transcripton') console.log(ev);
  }
  sessionConfig(16000, { vad: { threshold: '0.5' } });
}
void main();
"""
BAD_LINES = {4: "TS2322", 5: "TS2322", 7: "TS2322", 8: "TS2339", 10: "TS18048", 11: "TS2367",
             13: "TS2322"}
"""The line of each deliberate error in BAD_TS and the error tsc must report there."""


@pytest.mark.timeout(240)
def test_node_tsc_rejects_misuse_of_the_declarations(tsc: list[str], tmp_path: Path) -> None:
    """The same tsc, in a scratch project whose node_modules/alfred-client is the package:
    each deliberate misuse of the API in BAD_TS is an error on its line, so the typecheck
    above really checks against the declarations (and a narrowed event has only its
    fields)."""
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "alfred-client").symlink_to(NODE_DIR, target_is_directory=True)
    (tmp_path / "package.json").write_text('{"name": "scratch", "private": true, '
                                           '"type": "commonjs"}\n')
    (tmp_path / "bad.ts").write_text(BAD_TS)
    (tmp_path / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {"strict": True, "noEmit": True, "target": "es2022",
                            "lib": ["es2022"], "module": "node16",
                            "moduleResolution": "node16"},
        "files": ["bad.ts"]}))
    run = _run([*tsc, "--noEmit", "-p", str(tmp_path), "--pretty", "false"], tmp_path,
               TOOL_TIMEOUT_S)
    assert run.returncode != 0, f"tsc accepted bad.ts:\n{run.stdout}{run.stderr}"
    errors: dict[int, set[str]] = {}  # line -> the error codes tsc reported there
    for out in run.stdout.splitlines():
        if out.startswith("bad.ts("):
            where, _, rest = out.partition("): error ")
            errors.setdefault(int(where[len("bad.ts("):].split(",")[0]), set()).add(
                rest.split(":")[0])
    assert set(errors) == set(BAD_LINES), run.stdout
    for line, code in BAD_LINES.items():
        assert code in errors[line], (line, errors[line], run.stdout)


def _pack_files(npm: str, args: list[str]) -> tuple[dict[str, Any], set[str]]:
    run = _run([npm, "pack", "--json", *args], NODE_DIR, TOOL_TIMEOUT_S)
    out = _ok(run)
    packs = json.loads(out[out.index("["):])  # after prepack's output, if any
    assert len(packs) == 1, packs
    return packs[0], {f["path"] for f in packs[0]["files"]}


@pytest.mark.timeout(240)
def test_node_npm_pack_contents(npm: str) -> None:
    """The tarball holds the code, its declarations, the proto it loads and the examples;
    not the tests, scripts or build configuration."""
    pack, files = _pack_files(npm, ["--dry-run"])
    assert pack["name"] == "alfred-client"
    assert files == {
        "package.json", "index.js", "index.d.ts", "proto/alfred/v1/alfred.proto",
        "examples/stream_wav.js", "examples/transcript.ts",
    }, sorted(files)


# ----------------------------------------------------------------------------- as installed


def _install_packed_client(npm: str, project: Path) -> Path:
    """`npm pack` the client and `npm install` the tarball (and the @types/node the client
    is developed with) into the scratch `project`, as a user would; the installed package
    directory."""
    pack_dir = project.parent / "pack"
    pack_dir.mkdir()
    pack, _ = _pack_files(npm, ["--pack-destination", str(pack_dir)])
    tarball = pack_dir / pack["filename"]
    assert tarball.is_file(), list(pack_dir.iterdir())
    dev = json.loads((NODE_DIR / "package.json").read_text())["devDependencies"]
    project.mkdir()
    (project / "package.json").write_text(json.dumps(
        {"name": "alfred-client-user", "version": "1.0.0", "private": True,
         "type": "commonjs"}))
    _ok(_run([npm, "install", "--prefer-offline", "--no-save", str(tarball),
              f"@types/node@{dev['@types/node']}"], project, INSTALL_TIMEOUT_S))
    installed = project / "node_modules" / "alfred-client"
    assert installed.is_dir() and not installed.is_symlink(), installed
    return installed


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_node_client_installed_from_its_tarball_streams_jfk(
        node: str, npm: str, tsc: list[str], tmp_path: Path) -> None:
    """The package as a user gets it: packed, installed from the tarball into a scratch
    project, the TypeScript example it ships compiled there by tsc (strict) against the
    installed declarations -- `require('alfred-client')` resolving to the installed copy,
    which loads the proto it carries -- and run against a live daemon: the finals are
    jfk.wav's words, the turn ends, the session closes."""
    project = tmp_path / "project"
    installed = _install_packed_client(npm, project)
    assert (installed / "proto" / "alfred" / "v1" / "alfred.proto").read_bytes() == \
        PROTO.read_bytes()
    source = installed / TS_EXAMPLE
    assert source.is_file(), f"{source}: the example is not in the installed package"
    (project / "transcript.ts").write_bytes(source.read_bytes())
    (project / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {"strict": True, "target": "es2022", "lib": ["es2022"],
                            "module": "node16", "moduleResolution": "node16",
                            "types": ["node"], "skipLibCheck": False,
                            "exactOptionalPropertyTypes": True, "outDir": "out"},
        "files": ["transcript.ts"]}))
    run = _run([*tsc, "-p", str(project), "--traceResolution"], project, TOOL_TIMEOUT_S)
    trace = _ok(run)
    resolved = ("'alfred-client' was successfully resolved to "
                f"'{installed.resolve() / 'index.d.ts'}'")
    assert resolved in trace, [ln for ln in trace.splitlines() if "'alfred-client'" in ln]
    script = project / "out" / "transcript.js"
    assert script.is_file(), sorted(str(p) for p in project.rglob("*.js")
                                    if "node_modules" not in p.parts)
    # Where the compiled example's require lands, from the project: the installed copy.
    where = _ok(_run([node, "-e", "process.stdout.write(require.resolve('alfred-client'))"],
                     project, TOOL_TIMEOUT_S))
    assert where == str(installed.resolve() / "index.js"), where

    with running_daemon(tmp_path / "daemon") as d:
        run = _run([node, str(script), str(WAV), "--realtime", "--target", d.target],
                   project, STREAM_TIMEOUT_S, env={"ALFRED_TOKEN": ""})
        assert run.returncode == 0, (f"transcript.js exited {run.returncode}\n"
                                     f"stderr:\n{run.stderr}\ndaemon log:\n{d.log_tail()}")
        # The JavaScript example as shipped, run from the installed package.
        js = _run([node, str(installed / "examples" / "stream_wav.js"), str(WAV), "--json",
                   "--no-partials", "--target", d.target], project, STREAM_TIMEOUT_S,
                  env={"ALFRED_TOKEN": ""})
        assert js.returncode == 0, (f"stream_wav.js exited {js.returncode}\n"
                                    f"stderr:\n{js.stderr}\ndaemon log:\n{d.log_tail()}")
    js_events = [json.loads(ln) for ln in js.stdout.splitlines() if ln]
    js_text = " ".join(e["text"] for e in js_events if e["type"] == "final_transcription")
    assert wer(REFERENCE, js_text) <= 0.10, js_text
    assert js_events[-1]["type"] == "session_closed", js_events[-1]
    lines: list[dict[str, Any]] = [json.loads(ln) for ln in run.stdout.splitlines() if ln]
    kinds = [ln["kind"] for ln in lines]
    finals = [ln for ln in lines if ln["kind"] == "final"]
    assert finals, run.stdout
    text = " ".join(ln["text"] for ln in finals)
    error = wer(REFERENCE, text)
    assert error <= 0.10, f"WER {error:.3f}: {text!r}"
    last_final = len(kinds) - 1 - kinds[::-1].index("final")
    assert "turn" in kinds[last_final + 1 :], kinds
    turns = " ".join(ln["transcript"] for ln in lines if ln["kind"] == "turn")
    assert wer(REFERENCE, turns) <= 0.10, turns
    assert kinds[-1] == "closed" and kinds.count("closed") == 1, kinds
    assert lines[-1]["reason"] == "finished" and lines[-1]["resumed"] == 0, lines[-1]
    assert lines[-1]["session_id"], lines[-1]
