'use strict';
/**
 * Node.js client of alfred-daemon's gRPC streaming API (package alfred.v1).
 *
 * Nothing is generated ahead of time: the stubs are built at load time by
 * @grpc/proto-loader from the package's copy of the proto the daemon and the Python client
 * use, proto/alfred/v1/alfred.proto (a byte-for-byte copy of the repository's
 * proto/alfred/v1/alfred.proto, kept in step by `npm run sync-proto`).
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
 * snake_case name of the ServerEvent oneof member (`final_transcription`...): the same
 * names as the Python client's Event.type. The raw decoded message is attached as the
 * non-enumerable property `raw` (not `message`: the `error` event has a `message` field),
 * its `event_sequence` and `server_receive_time` as non-enumerable properties of those
 * names.
 *
 * Resume, as the Python client does it: a stream that breaks with UNAVAILABLE, INTERNAL or
 * UNKNOWN after session_started reconnects (up to `maxResumes` times, default 3) with the
 * session's resume token and the highest event_sequence it yielded, re-sends the frames
 * the daemon had not confirmed, and drops the events the daemon sends again; so no audio is
 * lost or analysed twice and every event is yielded once. Types: index.d.ts.
 */

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

/** The proto shipped inside the package (a copy of the repository's; see sync-proto). */
const PROTO_PATH = path.join(__dirname, 'proto', 'alfred', 'v1', 'alfred.proto');
const LOADER_OPTIONS = Object.freeze({
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});
const DEFAULT_TARGET = '127.0.0.1:50051';
const FRAME_MS = 20;
/** Frames (30 s at 20 ms) kept for re-sending after a resume, as in the Python client. */
const REPLAY_FRAMES = 1500;
/** Statuses after which a stream resumes (the Python client's RESUMABLE). */
const RESUMABLE_CODES = Object.freeze([
  grpc.status.UNAVAILABLE, grpc.status.INTERNAL, grpc.status.UNKNOWN,
]);
const DEFAULT_MAX_RESUMES = 3;
/** Pause before a resume's reconnect. */
const RESUME_DELAY_MS = 200;

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
  // Not enumerable: the JSON-lines shape is the type, the offsets and the event's fields.
  Object.defineProperty(ev, 'raw', { value: msg, enumerable: false });
  Object.defineProperty(ev, 'server_receive_time', {
    value: Number(msg.server_receive_time || 0), enumerable: false,
  });
  // The event's number in its session (1, 2, ...; 0 on session_started and on the
  // events_shed a resumed stream may start with): what a resume passes as
  // SessionConfig.last_event_sequence.
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

/**
 * SessionConfig for `sampleRate` and the options (undefined = daemon default). A resume
 * passes the session's token and the highest event_sequence received, so the daemon
 * re-sends what came after it; a new session leaves `last_event_sequence` unset.
 */
function sessionConfig(sampleRate, options = {}, resumeToken = '', lastEventSequence = undefined) {
  const cfg = {
    encoding: 'LINEAR16',
    sample_rate_hz: sampleRate,
    channels: 1,
    language: options.language || 'en',
    frame_event_every: options.frame_event_every || 0,
    resume_token: resumeToken || options.resume_token || '',
  };
  if (options.partials !== undefined) cfg.partials = options.partials;
  if (options.partial_interval_ms !== undefined) cfg.partial_interval_ms = options.partial_interval_ms;
  if (options.vad) cfg.vad = { ...options.vad };
  if (options.turn) cfg.turn = { ...options.turn };
  const last = lastEventSequence !== undefined ? lastEventSequence : options.last_event_sequence;
  if (cfg.resume_token && last !== undefined) cfg.last_event_sequence = last;
  return cfg;
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/** An (async) iterable -> its async iterator. */
function asyncIterator(frames) {
  if (frames && typeof frames[Symbol.asyncIterator] === 'function') {
    return frames[Symbol.asyncIterator]();
  }
  if (frames && typeof frames[Symbol.iterator] === 'function') {
    const it = frames[Symbol.iterator]();
    return { next: async () => it.next() };
  }
  throw new TypeError('frames must be an iterable or async iterable of Buffers');
}

/**
 * The audio source of one stream() call, shared by the calls a resume makes: each frame is
 * pulled from the source once, numbered, and kept (the latest REPLAY_FRAMES) so that a
 * resumed call can re-send what the daemon had not confirmed. A pull still pending when a
 * call breaks is shared with the next call's writer, so no frame is lost or sent twice.
 */
class FrameSource {
  constructor(frames) {
    this.iterator = asyncIterator(frames);
    this.seq = 0; // the last sequence number given
    this.replay = []; // [{sequence, pcm}], contiguous sequences, the latest REPLAY_FRAMES
    this.pending = null;
    this.done = false;
    this.error = null; // what the source threw; every later pull throws it again
  }

  /** The kept frame numbered `sequence`, or the first kept one after it; null if none. */
  after(sequence) {
    if (!this.replay.length) return null;
    const first = this.replay[0].sequence;
    const index = Math.max(0, sequence + 1 - first);
    return index < this.replay.length ? this.replay[index] : null;
  }

  /**
   * Number the frames still to come after `sequence`, if nothing was taken from the source
   * yet: a stream that resumes a session another one started (options.resume_token)
   * continues that session's numbering, or the daemon would ignore its frames.
   */
  startAfter(sequence) {
    if (!this.replay.length && !this.pending && this.seq < sequence) this.seq = sequence;
  }

  /** Pull the next frame from the source into the replay buffer; false when it is done. */
  pull() {
    if (this.error) return Promise.reject(this.error);
    if (this.done) return Promise.resolve(false);
    if (!this.pending) {
      this.pending = this.iterator.next().then((r) => {
        this.pending = null;
        if (r.done) {
          this.done = true;
          return false;
        }
        this.seq += 1;
        this.replay.push({ sequence: this.seq, pcm: r.value });
        if (this.replay.length > REPLAY_FRAMES) this.replay.shift();
        return true;
      }, (err) => {
        this.pending = null;
        this.error = err;
        throw err;
      });
    }
    return this.pending;
  }
}

class AlfredClient {
  /**
   * @param {string} target host:port of the daemon's gRPC listener
   * @param {object} [opts] {credentials, channelOptions, protoPath, token: the daemon's
   *   bearer token if it requires one, maxResumes: resumes per stream (default 3)}
   */
  constructor(target = DEFAULT_TARGET, opts = {}) {
    const proto = loadProto(opts.protoPath || PROTO_PATH);
    this.target = target;
    this.maxResumes = opts.maxResumes !== undefined ? opts.maxResumes : DEFAULT_MAX_RESUMES;
    this.metadata = new grpc.Metadata();
    if (opts.token) this.metadata.set('authorization', `Bearer ${opts.token}`);
    this.types = proto.types;
    this.stub = new proto.alfred.Alfred(
      target, opts.credentials || grpc.credentials.createInsecure(), opts.channelOptions || {},
    );
    this.sessionId = '';
    this.resumeToken = '';
    // The highest event_sequence yielded by the latest stream (for information: each
    // stream dedupes with its own count, so streams may share a client).
    this.lastEventSequence = 0;
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
   *   fields (partials, partial_interval_ms, vad, turn, frame_event_every, language),
   *   resume, maxResumes (see stream)}
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
   * until the daemon closes the stream. Throws StreamError on a non-OK status that is not
   * resumed.
   *
   * @param {object} [opts] {options: SessionConfig fields, resume: false to never resume
   *   (default true), maxResumes: resumes of this stream (default: the client's)}
   */
  async* stream(frames, sampleRate, opts = {}) {
    const options = opts.options || {};
    const resume = opts.resume !== false;
    const maxResumes = opts.maxResumes !== undefined ? opts.maxResumes : this.maxResumes;
    const source = new FrameSource(frames);
    let token = options.resume_token || '';
    let highest = options.last_event_sequence || 0; // the highest event_sequence yielded
    let confirmed = 0; // SessionStarted.last_sequence of the current call's session
    let resumes = 0;
    let closed = false;
    this.lastEventSequence = highest;
    for (;;) {
      const call = this.stub.StreamSession(this.metadata);
      const attempt = { stopped: false, writeError: null, started: null, onStarted: null };
      attempt.started = new Promise((resolve) => { attempt.onStarted = resolve; });
      const config = sessionConfig(sampleRate, options, token, token ? highest : undefined);
      // The write side runs beside the reads; its failure cancels the call, so it surfaces
      // (as attempt.writeError) instead of hanging. Not awaited: it may be waiting on the
      // source, whose pending frame the next call's writer takes over.
      this._writer(call, attempt, config, source, () => confirmed);
      try {
        for await (const msg of call) {
          const sequence = Number(msg.event_sequence || 0);
          if (sequence) { // 0: outside the sequence, never a re-send
            if (sequence <= highest) continue; // re-sent after a resume; yielded already
            highest = sequence;
            this.lastEventSequence = sequence;
          }
          const ev = toEvent(msg, this.types);
          if (ev.type === 'session_started') {
            this.sessionId = ev.session_id;
            this.resumeToken = ev.resume_token;
            token = ev.resume_token;
            confirmed = ev.last_sequence;
            attempt.onStarted();
          }
          if (ev.type === 'session_closed') {
            closed = true;
            // Nothing more goes to this session: half-close, so that the daemon ends the
            // call with both sides closed. A call it ends while the client still sends is
            // reset, which a proxy (HAProxy) may report as CANCELLED ahead of the last events.
            attempt.stopped = true;
            if (!call.writableEnded && !call.destroyed) call.end();
          }
          yield ev;
        }
        if (attempt.writeError) throw attempt.writeError;
        return;
      } catch (err) {
        if (attempt.writeError) throw attempt.writeError;
        if (closed) return; // the session's last event arrived: nothing is left to resume
        const error = StreamError.from(err);
        if (!(resume && token && error instanceof StreamError
              && RESUMABLE_CODES.includes(error.code) && resumes < maxResumes)) {
          throw error;
        }
        resumes += 1; // the shared source continues where the broken call left it
      } finally {
        attempt.stopped = true;
        attempt.onStarted(); // a writer waiting for session_started gives up
        call.cancel(); // a no-op once the call has ended; stops it if the caller broke off
      }
      await sleep(RESUME_DELAY_MS);
    }
  }

  /**
   * One call's write side: the config, then every kept frame after the one the daemon
   * confirmed (`confirmed()`), then the rest of the source; half-closes when the source
   * ends. A resume waits for its session_started first, whose last_sequence says which
   * frames the daemon already has (it would ignore them, but up to 30 s of audio need not
   * travel again).
   */
  async _writer(call, attempt, config, source, confirmed) {
    const live = () => !attempt.stopped && !call.destroyed && !call.writableEnded;
    const write = async (msg) => {
      if (!live()) return false;
      if (!call.write(msg)) {
        await new Promise((resolve) => {
          const events = ['drain', 'close', 'error', 'status'];
          const done = () => {
            for (const e of events) call.off(e, done);
            resolve();
          };
          for (const e of events) call.on(e, done);
        });
      }
      return live();
    };
    try {
      if (!await write({ config })) return;
      if (config.resume_token) {
        await attempt.started;
        if (!live()) return;
        source.startAfter(confirmed());
      }
      let sent = 0; // the highest sequence written on this call
      for (;;) {
        const frame = source.after(Math.max(sent, confirmed()));
        if (frame) {
          if (!await write({ audio: { sequence: frame.sequence, pcm: frame.pcm } })) return;
          sent = frame.sequence;
        } else if (!await source.pull()) {
          break;
        } else if (!live()) {
          return; // the frame stays kept for the next call
        }
      }
      if (live()) call.end(); // half-close: the session finishes
    } catch (err) {
      attempt.writeError = err;
      call.cancel();
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
  REPLAY_FRAMES,
  RESUMABLE_CODES,
};
