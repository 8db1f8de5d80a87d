'use strict';
/**
 * Node.js client of alfred-daemon's gRPC streaming API (package alfred.v1).
 *
 * Nothing is generated ahead of time: the stubs are built at load time by
 * @grpc/proto-loader from the same proto the daemon and the Python client use,
 * ../../proto/alfred/v1/alfred.proto.
 *
 *   const { createClient } = require('alfred-client');
 *   const client = createClient('127.0.0.1:50051');
 *   for await (const ev of client.streamWav('call.wav', { realtime: true })) {
 *     console.log(ev.type, ev);
 *   }
 *   client.close();
 *
 * Events are plain objects in the shape `alfred-daemon stream --json` prints:
 * `{type, audio_offset_ms, processing_ms, ...the event's fields}` where `type` is the
 * snake_case name of the ServerEvent oneof member (`final_transcription`...). The raw
 * decoded message is attached as the non-enumerable property `message`, its
 * `event_sequence` as the non-enumerable property of that name.
 */

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_PATH = path.resolve(__dirname, '..', '..', 'proto', 'alfred', 'v1', 'alfred.proto');
const LOADER_OPTIONS = Object.freeze({
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});
const DEFAULT_TARGET = '127.0.0.1:50051';
const FRAME_MS = 20;

// ------------------------------------------------------------------------------ proto

let cached = null;

/** The loaded proto: {packageDefinition, alfred (the alfred.v1 namespace), floatFields}. */
function loadProto(protoPath = PROTO_PATH) {
  if (cached && cached.protoPath === protoPath) return cached;
  const packageDefinition = protoLoader.loadSync(protoPath, LOADER_OPTIONS);
  const alfred = grpc.loadPackageDefinition(packageDefinition).alfred.v1;
  // Per message type: which fields are 32-bit floats (printed in shortest form, as the
  // protobuf JSON mapping does) and which are nested messages (recursed into).
  const types = {};
  for (const [name, def] of Object.entries(packageDefinition)) {
    if (!def || !def.type || !Array.isArray(def.type.field)) continue;
    const floats = new Set();
    const nested = {};
    for (const f of def.type.field) {
      if (f.type === 'TYPE_FLOAT') floats.add(f.name);
      if (f.type === 'TYPE_MESSAGE') nested[f.name] = f.typeName.replace(/^\./, '');
    }
    types[name] = { floats, nested };
  }
  // typeName may be relative to the referring message ("SessionStarted"): resolve it the
  // way protoc does, innermost scope first.
  for (const [name, info] of Object.entries(types)) {
    for (const [field, ref] of Object.entries(info.nested)) {
      const scope = name.split('.');
      let resolved = ref;
      while (scope.length) {
        const candidate = `${scope.join('.')}.${ref}`;
        if (types[candidate]) { resolved = candidate; break; }
        scope.pop();
      }
      info.nested[field] = resolved;
    }
  }
  cached = { protoPath, packageDefinition, alfred, types };
  return cached;
}

// ------------------------------------------------------------------------------ events

/** A float32 value in its shortest round-tripping decimal form (0.9381, not 0.93809998). */
function shortestFloat(v) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return v;
  for (let p = 6; p <= 9; p += 1) {
    const c = Number(v.toPrecision(p));
    if (Math.fround(c) === Math.fround(v)) return c;
  }
  return v;
}

/**
 * A decoded message -> plain JSON-able object shaped like protobuf's JSON mapping with
 * field names kept: unset sub-messages and unset `optional` fields are left out, scalars
 * without presence are always there, enums are names, 64-bit ints are numbers.
 */
function plain(obj, typeName, types) {
  const info = types[typeName] || { floats: new Set(), nested: {} };
  const out = {};
  for (const [k, v] of Object.entries(obj)) {
    // proto-loader's synthetic-oneof discriminators of proto3 `optional` fields.
    if (k.startsWith('_')) continue;
    if (v === null || v === undefined) continue; // unset message / optional field
    if (info.nested[k] && typeof v === 'object') out[k] = plain(v, info.nested[k], types);
    else if (info.floats.has(k)) out[k] = shortestFloat(v);
    else if (Buffer.isBuffer(v)) out[k] = v.toString('base64');
    else out[k] = v;
  }
  return out;
}

function round2(x) {
  return Math.round(x * 100) / 100;
}

/** ServerEvent (decoded) -> {type, audio_offset_ms, processing_ms, ...fields}. */
function toEvent(msg, types = loadProto().types) {
  const type = msg.event || 'unknown';
  const body = type !== 'unknown' && msg[type] ? msg[type] : {};
  const nestedType = (types['alfred.v1.ServerEvent'] || { nested: {} }).nested[type];
  const ev = {
    type,
    audio_offset_ms: Number(msg.audio_offset_ms || 0),
    processing_ms: round2(Number(msg.processing_ms || 0)),
    ...plain(body, nestedType, types),
  };
  Object.defineProperty(ev, 'message', { value: msg, enumerable: false });
  Object.defineProperty(ev, 'server_receive_time', {
    value: Number(msg.server_receive_time || 0), enumerable: false,
  });
  // The event's number in its session (0 on session_started): what a resume would pass as
  // SessionConfig.last_event_sequence. This client does not resume, so it never sees one
  // twice.
  Object.defineProperty(ev, 'event_sequence', {
    value: Number(msg.event_sequence || 0), enumerable: false,
  });
  return ev;
}

// ------------------------------------------------------------------------------ audio

/**
 * A 16-bit PCM mono WAV file (Buffer or path) -> {pcm: Buffer, sampleRate}.
 * Walks the RIFF chunks (LIST/fact chunks before `data` are skipped); WAVE_FORMAT_PCM or
 * WAVE_FORMAT_EXTENSIBLE with the PCM subformat. Any rate: the daemon resamples.
 */
function parseWav(input) {
  const buf = Buffer.isBuffer(input) ? input : fs.readFileSync(input);
  const where = Buffer.isBuffer(input) ? 'WAV data' : String(input);
  if (buf.length < 12 || buf.toString('ascii', 0, 4) !== 'RIFF'
      || buf.toString('ascii', 8, 12) !== 'WAVE') {
    throw new Error(`${where}: not a RIFF/WAVE file`);
  }
  let fmt = null;
  let pcm = null;
  let off = 12;
  while (off + 8 <= buf.length) {
    const id = buf.toString('ascii', off, off + 4);
    let size = buf.readUInt32LE(off + 4);
    const start = off + 8;
    if (id === 'data' && (size === 0xffffffff || start + size > buf.length)) {
      size = buf.length - start; // streamed / truncated header: take what is there
    }
    if (id === 'fmt ') {
      if (size < 16) throw new Error(`${where}: short fmt chunk`);
      let format = buf.readUInt16LE(start);
      if (format === 0xfffe && size >= 26) format = buf.readUInt16LE(start + 24); // extensible
      fmt = {
        format,
        channels: buf.readUInt16LE(start + 2),
        sampleRate: buf.readUInt32LE(start + 4),
        bits: buf.readUInt16LE(start + 14),
      };
    } else if (id === 'data') {
      pcm = buf.subarray(start, start + size);
      break;
    }
    off = start + size + (size % 2); // chunks are word-aligned
  }
  if (!fmt) throw new Error(`${where}: no fmt chunk`);
  if (!pcm) throw new Error(`${where}: no data chunk`);
  if (fmt.format !== 1 || fmt.bits !== 16 || fmt.channels !== 1) {
    throw new Error(`${where}: need 16-bit mono PCM WAV (got format ${fmt.format}, `
      + `${fmt.channels} channels, ${fmt.bits}-bit)`);
  }
  if (!fmt.sampleRate) throw new Error(`${where}: sample rate 0`);
  if (pcm.length % 2) pcm = pcm.subarray(0, pcm.length - 1);
  return { pcm, sampleRate: fmt.sampleRate };
}

/** LINEAR16 bytes -> frames of `frameMs` (the last one may be shorter). */
function pcmFrames(pcm, sampleRate, frameMs = FRAME_MS) {
  const step = Math.max(2, Math.floor((sampleRate * frameMs) / 1000) * 2);
  const frames = [];
  for (let i = 0; i < pcm.length; i += step) frames.push(pcm.subarray(i, i + step));
  return frames;
}

// ------------------------------------------------------------------------------ errors

const STATUS_NAMES = Object.fromEntries(
  Object.entries(grpc.status).map(([name, code]) => [code, name]),
);

/** The daemon (or the transport) ended the stream with a non-OK gRPC status. */
class StreamError extends Error {
  constructor(code, details) {
    const codeName = STATUS_NAMES[code] || `STATUS_${code}`;
    super(`${codeName}: ${details}`);
    this.name = 'StreamError';
    this.code = code;
    this.codeName = codeName;
    this.details = details;
  }

  static from(err) {
    if (err instanceof StreamError) return err;
    if (err && typeof err.code === 'number') return new StreamError(err.code, err.details || err.message || '');
    return err;
  }
}

// ------------------------------------------------------------------------------ client

/** SessionConfig for `sampleRate` and the options (undefined = daemon default). */
function sessionConfig(sampleRate, options = {}) {
  const cfg = {
    encoding: 'LINEAR16',
    sample_rate_hz: sampleRate,
    channels: 1,
    language: options.language || 'en',
    frame_event_every: options.frame_event_every || 0,
    resume_token: options.resume_token || '',
  };
  if (options.partials !== undefined) cfg.partials = options.partials;
  if (options.partial_interval_ms !== undefined) cfg.partial_interval_ms = options.partial_interval_ms;
  if (options.vad) cfg.vad = { ...options.vad };
  if (options.turn) cfg.turn = { ...options.turn };
  return cfg;
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

class AlfredClient {
  /**
   * @param {string} target host:port of the daemon's gRPC listener
   * @param {object} [opts] {credentials, channelOptions, protoPath, token: the daemon's
   *   bearer token if it requires one}
   */
  constructor(target = DEFAULT_TARGET, opts = {}) {
    const proto = loadProto(opts.protoPath || PROTO_PATH);
    this.target = target;
    this.metadata = new grpc.Metadata();
    if (opts.token) this.metadata.set('authorization', `Bearer ${opts.token}`);
    this.types = proto.types;
    this.stub = new proto.alfred.Alfred(
      target, opts.credentials || grpc.credentials.createInsecure(), opts.channelOptions || {},
    );
    this.sessionId = '';
    this.resumeToken = '';
  }

  close() {
    this.stub.close();
  }

  _unary(method, request) {
    return new Promise((resolve, reject) => {
      this.stub[method](request, this.metadata, (err, doc) => {
        if (err) reject(StreamError.from(err));
        else resolve(JSON.parse(doc.json));
      });
    });
  }

  /** The daemon's status document (GetPipelineStatus), parsed. */
  status() {
    return this._unary('GetPipelineStatus', {});
  }

  /** One session's status document (GetSessionStatus), parsed. */
  sessionStatus(sessionId) {
    return this._unary('GetSessionStatus', { session_id: sessionId });
  }

  /** Optimize: {trigger_gc, cleanup_sessions, optimize_buffers}. */
  optimize(request = {}) {
    return this._unary('Optimize', request);
  }

  /** Stream a 16-bit mono PCM WAV file; async iterator of events. */
  streamWav(file, opts = {}) {
    const { pcm, sampleRate } = parseWav(file);
    return this.streamPcm(pcm, sampleRate, opts);
  }

  /**
   * Stream LINEAR16 `pcm` at `sampleRate` in 20 ms frames.
   * @param {object} [opts] {realtime: pace frames at real time, options: SessionConfig
   *   fields (partials, partial_interval_ms, vad, turn, frame_event_every, language)}
   */
  streamPcm(pcm, sampleRate, opts = {}) {
    const frames = pcmFrames(pcm, sampleRate, FRAME_MS);
    const realtime = Boolean(opts.realtime);
    async function* paced() {
      const t0 = performance.now();
      for (let k = 0; k < frames.length; k += 1) {
        yield frames[k];
        if (realtime) {
          const delay = t0 + (k + 1) * FRAME_MS - performance.now();
          if (delay > 0) await sleep(delay);
        }
      }
    }
    return this.stream(paced(), sampleRate, opts);
  }

  /**
   * Send `frames` (an (async) iterable of LINEAR16 Buffers) and yield the session's events
   * until the daemon closes the stream. Throws StreamError on a non-OK status.
   */
  async* stream(frames, sampleRate, opts = {}) {
    const call = this.stub.StreamSession(this.metadata);
    let stopped = false;
    let writeError = null;
    // The outcome of the write side, so a failure there surfaces instead of hanging.
    const writer = (async () => {
      const write = async (msg) => {
        if (stopped || call.destroyed || call.writableEnded) return false;
        if (!call.write(msg)) {
          await new Promise((resolve) => {
            const done = () => {
              call.off('drain', done); call.off('close', done); call.off('error', done);
              resolve();
            };
            call.on('drain', done); call.on('close', done); call.on('error', done);
          });
        }
        return !stopped;
      };
      try {
        if (!await write({ config: sessionConfig(sampleRate, opts.options) })) return;
        let seq = 0;
        for await (const pcm of frames) {
          seq += 1;
          if (!await write({ audio: { sequence: seq, pcm } })) return;
        }
        if (!stopped && !call.writableEnded) call.end(); // half-close: the session finishes
      } catch (err) {
        writeError = err;
        call.cancel();
      }
    })();
    try {
      for await (const msg of call) {
        const ev = toEvent(msg, this.types);
        if (ev.type === 'session_started') {
          this.sessionId = ev.session_id;
          this.resumeToken = ev.resume_token;
        }
        yield ev;
      }
      if (writeError) throw writeError;
    } catch (err) {
      throw writeError || StreamError.from(err);
    } finally {
      stopped = true;
      call.cancel(); // a no-op once the call has ended; stops it if the caller broke off
      await writer;
    }
  }
}

/** A client of the daemon at `target` (default 127.0.0.1:50051). */
function createClient(target = DEFAULT_TARGET, opts = {}) {
  return new AlfredClient(target, opts);
}

module.exports = {
  createClient,
  AlfredClient,
  StreamError,
  loadProto,
  parseWav,
  pcmFrames,
  sessionConfig,
  toEvent,
  PROTO_PATH,
  LOADER_OPTIONS,
  DEFAULT_TARGET,
  FRAME_MS,
};
