'use strict';
/**
 * A stand-in for the daemon in Node unit tests: a grpc-js server of service alfred.v1.Alfred
 * built from the package's proto, whose StreamSession is a test's script. No models, no
 * daemon: what the client does around a stream (resume, dedupe, errors) is checked against
 * what the script sends.
 */

const grpc = require('@grpc/grpc-js');
const { loadProto } = require('alfred-client');

/**
 * Serve `streamSession(call, stream)` on 127.0.0.1 (a free port). `stream` is the record of
 * one call, pushed to `server.streams`: {config, frames: [sequence...], ended, cancelled}.
 * Resolves to {target, streams, close()}.
 */
function startServer(streamSession) {
  const { alfred } = loadProto();
  const server = new grpc.Server();
  const streams = [];
  const unused = (call, callback) => callback(null, { json: '{}' });
  server.addService(alfred.Alfred.service, {
    GetPipelineStatus: (call, callback) => callback(null, { json: '{"health":"healthy"}' }),
    GetSessionStatus: unused,
    Optimize: unused,
    StreamSession(call) {
      const stream = { config: null, frames: [], ended: false, cancelled: false, call };
      streams.push(stream);
      call.on('cancelled', () => { stream.cancelled = true; });
      call.on('error', () => {}); // a client's cancel; recorded by 'cancelled'
      streamSession(call, stream);
    },
  });
  return new Promise((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
      if (err) { reject(err); return; }
      resolve({
        target: `127.0.0.1:${port}`,
        streams,
        close: () => server.forceShutdown(),
      });
    });
  });
}

/**
 * Read a call's messages into `stream`: the first is its config (`onConfig()`), then audio
 * frames (`onFrame(sequence)`) until the client half-closes (`onEnd()`).
 */
function readCall(call, stream, { onConfig = () => {}, onFrame = () => {}, onEnd = () => {} }) {
  call.on('data', (msg) => {
    if (msg.message === 'config' && stream.config === null) {
      stream.config = msg.config;
      onConfig(msg.config);
    } else if (msg.message === 'audio') {
      stream.frames.push(Number(msg.audio.sequence));
      onFrame(Number(msg.audio.sequence));
    }
  });
  call.on('end', () => { stream.ended = true; onEnd(); });
}

function started({ resumed = false, lastSequence = 0 } = {}) {
  return {
    session_started: {
      session_id: 's1', resume_token: 'token-1', resume_window_s: 30, resumed,
      last_sequence: lastSequence,
      effective_config: { encoding: 'LINEAR16', sample_rate_hz: 16000, channels: 1 },
    },
  };
}

function final(sequence) {
  return {
    audio_offset_ms: 100 * sequence, event_sequence: sequence,
    final_transcription: { utterance_id: sequence, text: `final ${sequence}`, start_ms: 0 },
  };
}

function closed(sequence, reason = 'finished') {
  return { audio_offset_ms: 100 * sequence, event_sequence: sequence, session_closed: { reason } };
}

/** End the call with a non-OK status, after what was written before it. */
function abort(call, code, details) {
  call.emit('error', { code, details });
}

/** `count` frames of 20 ms of 16 kHz silence, yielded as fast as they are taken. */
async function* silence(count) {
  for (let i = 0; i < count; i += 1) yield Buffer.alloc(640);
}

module.exports = { startServer, readCall, started, final, closed, abort, silence };
