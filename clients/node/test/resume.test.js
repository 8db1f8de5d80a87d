'use strict';
/**
 * Resume and dedupe of AlfredClient.stream against a scripted server (test/fake_server.js),
 * mirroring tests/test_grpc.py's test_python_client_resumes_with_last_event_sequence_and_
 * drops_resends for the Python client; and the cases that must not resume.
 */

const test = require('node:test');
const assert = require('node:assert/strict');
const grpc = require('@grpc/grpc-js');
const { createClient, StreamError } = require('alfred-client');
const {
  startServer, readCall, started, final, closed, abort, silence,
} = require('./fake_server');

const TIMEOUT = { timeout: 20_000 };
const RATE = 16_000;

/** Run `body(client, server)` against a server of `script`; always closes both. */
async function withServer(script, clientOptions, body) {
  const server = await startServer(script);
  const client = createClient(server.target, clientOptions);
  try {
    return await body(client, server);
  } finally {
    client.close();
    server.close();
  }
}

async function collect(iterable) {
  const out = [];
  for await (const ev of iterable) out.push(ev);
  return out;
}

/** Whether a decoded SessionConfig has the proto3 `optional` last_event_sequence set. */
function hasLastEventSequence(config) {
  return config._last_event_sequence === 'last_event_sequence';
}

test('a broken stream resumes with last_event_sequence, re-sends unconfirmed frames, drops re-sent events', TIMEOUT, async () => {
  const FRAMES = 50;
  const BREAK_AFTER = 20; // frames the first stream reads before it breaks
  const CONFIRMED = 10; // what the resumed session says it had processed
  // Stream 1 sends events 1-5 and breaks (UNAVAILABLE); stream 2, the resume, re-sends 3-5
  // (as a daemon does with events it cannot know arrived), then 6-8 and session_closed (9).
  function script(call, stream) {
    readCall(call, stream, {
      onConfig(config) {
        const resume = Boolean(config.resume_token);
        call.write(started({ resumed: resume, lastSequence: resume ? CONFIRMED : 0 }));
        stream.resume = resume;
      },
      onFrame() {
        if (!stream.resume && stream.frames.length === BREAK_AFTER) {
          for (let s = 1; s <= 5; s += 1) call.write(final(s));
          abort(call, grpc.status.UNAVAILABLE, 'connection lost');
        }
      },
      onEnd() {
        if (!stream.resume) return;
        for (let s = 3; s <= 8; s += 1) call.write(final(s));
        call.write(closed(9));
        call.end();
      },
    });
  }
  await withServer(script, { maxResumes: 1 }, async (client, server) => {
    const events = await collect(client.stream(silence(FRAMES), RATE));
    assert.equal(client.lastEventSequence, 9);
    assert.equal(server.streams.length, 2, 'one stream and one resume');
    const [fresh, resume] = server.streams;
    assert.equal(hasLastEventSequence(fresh.config), false, 'a new session has nothing to name');
    assert.equal(fresh.config.resume_token, '');
    assert.equal(resume.config.resume_token, 'token-1');
    assert.equal(hasLastEventSequence(resume.config), true);
    assert.equal(Number(resume.config.last_event_sequence), 5);

    const numbered = events.filter((ev) => ev.event_sequence).map((ev) => [ev.type, ev.event_sequence]);
    assert.deepEqual(numbered, [
      ...[1, 2, 3, 4, 5, 6, 7, 8].map((s) => ['final_transcription', s]), ['session_closed', 9]]);
    assert.equal(events.filter((ev) => ev.type === 'session_started').length, 2);
    assert.equal(events[events.length - 1].type, 'session_closed');

    // Audio: the first stream got a prefix of the frames; the resume the frames after the
    // confirmed one, each once, in order, through the end of the source.
    const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);
    assert.deepEqual(fresh.frames, range(1, fresh.frames.length));
    assert.ok(fresh.frames.length >= BREAK_AFTER, fresh.frames.length);
    assert.deepEqual(resume.frames, range(CONFIRMED + 1, FRAMES));
    assert.equal(resume.ended, true, 'the resumed stream was half-closed');
  });
});

test("options.resume_token continues another stream's session and its numbering", TIMEOUT, async () => {
  function script(call, stream) {
    readCall(call, stream, {
      onConfig() { call.write(started({ resumed: true, lastSequence: 100 })); },
      onEnd() {
        for (let s = 3; s <= 6; s += 1) call.write(final(s)); // 3 and 4: the caller has them
        call.write(closed(7));
        call.end();
      },
    });
  }
  await withServer(script, {}, async (client, server) => {
    const options = { resume_token: 'token-0', last_event_sequence: 4 };
    const events = await collect(client.stream(silence(3), RATE, { options }));
    const [only] = server.streams;
    assert.equal(server.streams.length, 1);
    assert.equal(only.config.resume_token, 'token-0');
    assert.equal(hasLastEventSequence(only.config), true);
    assert.equal(Number(only.config.last_event_sequence), 4);
    assert.deepEqual(only.frames, [101, 102, 103]);
    assert.deepEqual(events.map((ev) => [ev.type, ev.event_sequence]), [
      ['session_started', 0], ['final_transcription', 5], ['final_transcription', 6],
      ['session_closed', 7]]);
    assert.equal(client.lastEventSequence, 7);
  });
});

test('a failure after session_closed is not resumed', TIMEOUT, async () => {
  function script(call, stream) {
    readCall(call, stream, {
      onConfig() {
        call.write(started());
        call.write(closed(1));
        abort(call, grpc.status.UNAVAILABLE, 'gone after the close');
      },
    });
  }
  await withServer(script, {}, async (client, server) => {
    const events = await collect(client.stream(silence(3), RATE));
    assert.deepEqual(events.map((ev) => ev.type), ['session_started', 'session_closed']);
    assert.equal(server.streams.length, 1);
  });
});

test('resumes are bounded by maxResumes, then the status is thrown', TIMEOUT, async () => {
  function script(call, stream) {
    readCall(call, stream, {
      onConfig() {
        call.write(started());
        abort(call, grpc.status.UNAVAILABLE, 'always breaks');
      },
    });
  }
  await withServer(script, { maxResumes: 2 }, async (client, server) => {
    await assert.rejects(collect(client.stream(silence(5), RATE)), (err) => {
      assert.ok(err instanceof StreamError, String(err));
      assert.equal(err.code, grpc.status.UNAVAILABLE);
      assert.equal(err.codeName, 'UNAVAILABLE');
      assert.equal(err.details, 'always breaks');
      return true;
    });
    assert.equal(server.streams.length, 3, 'the stream and two resumes');
    assert.equal(server.streams[1].config.resume_token, 'token-1');
    assert.equal(server.streams[2].config.resume_token, 'token-1');
  });
});

test('resume: false, a status that is not resumable, or no session yet: no resume', TIMEOUT, async () => {
  const cases = [
    { name: 'resume false', code: grpc.status.UNAVAILABLE, start: true, opts: { resume: false } },
    { name: 'INVALID_ARGUMENT', code: grpc.status.INVALID_ARGUMENT, start: true, opts: {} },
    { name: 'NOT_FOUND', code: grpc.status.NOT_FOUND, start: true, opts: {} },
    { name: 'before session_started', code: grpc.status.UNAVAILABLE, start: false, opts: {} },
    { name: 'maxResumes 0 on the stream', code: grpc.status.INTERNAL, start: true,
      opts: { maxResumes: 0 } },
  ];
  for (const c of cases) {
    const script = (call, stream) => {
      readCall(call, stream, {
        onConfig() {
          if (c.start) call.write(started());
          abort(call, c.code, `scripted ${c.name}`);
        },
      });
    };
    await withServer(script, { maxResumes: 3 }, async (client, server) => {
      await assert.rejects(collect(client.stream(silence(3), RATE, c.opts)), (err) => {
        assert.ok(err instanceof StreamError, `${c.name}: ${err}`);
        assert.equal(err.code, c.code, c.name);
        assert.equal(err.details, `scripted ${c.name}`);
        return true;
      });
      assert.equal(server.streams.length, 1, c.name);
    });
  }
});

test('an error of the audio source ends the stream with that error, not a resume', TIMEOUT, async () => {
  function script(call, stream) {
    readCall(call, stream, { onConfig() { call.write(started()); } });
  }
  async function* failing() {
    yield Buffer.alloc(640);
    yield Buffer.alloc(640);
    throw new Error('microphone unplugged');
  }
  await withServer(script, {}, async (client, server) => {
    await assert.rejects(collect(client.stream(failing(), RATE)), /microphone unplugged/);
    // The cancel can reach the server before its handler ran: at most the one call.
    assert.ok(server.streams.length <= 1, `${server.streams.length} calls`);
  });
});

test('breaking off the loop cancels the call', TIMEOUT, async () => {
  function script(call, stream) {
    readCall(call, stream, {
      onConfig() {
        call.write(started());
        for (let s = 1; s <= 3; s += 1) call.write(final(s));
      },
    });
  }
  async function* endless() {
    for (let i = 0; i < 10_000; i += 1) {
      yield Buffer.alloc(640);
      await new Promise((resolve) => { setTimeout(resolve, 5); });
    }
  }
  await withServer(script, {}, async (client, server) => {
    let seen = 0;
    for await (const ev of client.stream(endless(), RATE)) {
      if (ev.type === 'final_transcription') seen += 1;
      if (seen === 2) break;
    }
    assert.equal(client.sessionId, 's1');
    assert.equal(client.resumeToken, 'token-1');
    assert.equal(client.lastEventSequence, 2);
    const deadline = Date.now() + 5_000;
    while (!server.streams[0].cancelled && Date.now() < deadline) {
      await new Promise((resolve) => { setTimeout(resolve, 20); });
    }
    assert.equal(server.streams[0].cancelled, true, 'the server saw the cancel');
  });
});

test('unary calls parse the status document; their failures are StreamErrors', TIMEOUT, async () => {
  await withServer(() => {}, {}, async (client) => {
    assert.deepEqual(await client.status(), { health: 'healthy' });
  });
  const server = await startServer(() => {});
  server.close();
  const client = createClient(server.target, {
    channelOptions: { 'grpc.initial_reconnect_backoff_ms': 50 },
  });
  try {
    await assert.rejects(client.status(), (err) => err instanceof StreamError
      && err.code === grpc.status.UNAVAILABLE);
  } finally {
    client.close();
  }
});

test('at a session_closed the daemon sent first, the client stops sending and half-closes', TIMEOUT, async () => {
  // The daemon ends a session itself (idle, drain) and waits for the half-close before it
  // ends the call: ended first, the call is reset, which HAProxy may report as CANCELLED
  // ahead of the last events. Frames come every 10 ms, so the client is still sending.
  const CLOSE_AFTER = 5;
  async function* paced(count) {
    for (let i = 0; i < count; i += 1) {
      await new Promise((resolve) => { setTimeout(resolve, 10); });
      yield Buffer.alloc(640);
    }
  }
  function script(call, stream) {
    readCall(call, stream, {
      onConfig() { call.write(started()); },
      onFrame() {
        if (stream.frames.length === CLOSE_AFTER) call.write(closed(1, 'idle'));
      },
      onEnd() { call.end(); },
    });
  }
  await withServer(script, {}, async (client, server) => {
    const events = await collect(client.stream(paced(1000), RATE));
    assert.deepEqual(events.map((ev) => ev.type), ['session_started', 'session_closed']);
    assert.equal(server.streams.length, 1);
    const [stream] = server.streams;
    assert.equal(stream.ended, true, 'the client half-closed');
    assert.ok(stream.frames.length < 100, `${stream.frames.length} frames: it kept sending`);
  });
});
