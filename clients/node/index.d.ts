// Type declarations of alfred-client (index.js), written by hand from
// proto/alfred/v1/alfred.proto and the event shaping in index.js (toEvent, plain).
// test/declarations.test.js checks every event interface and SessionConfig against the
// bundled proto (names, fields, which fields are optional); tsconfig.json type-checks
// these declarations and examples/transcript.ts with `strict`.
//
// Shapes follow the loader options (LOADER_OPTIONS): field names as in the proto
// (snake_case), 64-bit integers as numbers, enums as their names. Optional inputs accept
// `undefined` (= absent), for callers with exactOptionalPropertyTypes; optional event fields
// are absent when unset, never undefined-valued.

/// <reference types="node" />

import type {
  ChannelCredentials, ChannelOptions, Client, GrpcObject, Metadata, ServiceClientConstructor,
  status,
} from '@grpc/grpc-js';
import type { Options as LoaderOptions, PackageDefinition } from '@grpc/proto-loader';

// ------------------------------------------------------------------------------ constants

/** The proto the package loads: its own copy, `<package>/proto/alfred/v1/alfred.proto`. */
export declare const PROTO_PATH: string;
/** The @grpc/proto-loader options the proto is loaded with (frozen). */
export declare const LOADER_OPTIONS: Readonly<LoaderOptions>;
export declare const DEFAULT_TARGET: '127.0.0.1:50051';
/** Milliseconds of audio per frame that streamWav and streamPcm send. */
export declare const FRAME_MS: 20;
/** Frames kept for re-sending after a resume (30 s of 20 ms frames). */
export declare const REPLAY_FRAMES: 1500;
/** The statuses after which a stream resumes: UNAVAILABLE, INTERNAL, UNKNOWN. */
export declare const RESUMABLE_CODES: readonly status[];

// ------------------------------------------------------------------------------ session config

export type AudioEncoding = 'AUDIO_ENCODING_UNSPECIFIED' | 'LINEAR16';

/** VAD parameters (SessionConfig.vad); an absent field keeps the daemon's default. */
export interface VadParams {
  /** Speech probability threshold, 0.05 .. 0.99. */
  threshold?: number | undefined;
  /** Speech must last this long before speech_started. */
  min_speech_ms?: number | undefined;
  /** Silence must last this long before speech_ended. */
  min_silence_ms?: number | undefined;
}

/** Turn detection parameters (SessionConfig.turn); absent = the daemon's default. */
export interface TurnParams {
  /** Smart Turn on (default) or off. */
  enabled?: boolean | undefined;
  /** Smart Turn probability threshold. */
  threshold?: number | undefined;
  /** Pause before Smart Turn is asked. */
  silence_ms?: number | undefined;
  /** Pause after which the turn ends regardless. */
  fallback_silence_ms?: number | undefined;
}

/**
 * What a stream's SessionConfig carries besides the audio format (which the client fills
 * in: LINEAR16, the source's rate, mono); an absent field keeps the daemon's default.
 */
export interface SessionOptions {
  /** Streaming partial transcripts (default on). */
  partials?: boolean | undefined;
  /** Interval of partials (default 500 ms). */
  partial_interval_ms?: number | undefined;
  vad?: VadParams | undefined;
  turn?: TurnParams | undefined;
  /** A frame_processed event every n-th 32 ms VAD window (0 = off, the default). */
  frame_event_every?: number | undefined;
  /** BCP-47 language (default 'en'). */
  language?: string | undefined;
  /**
   * Resume a session another stream started (its session_started.resume_token): this
   * stream's frames are numbered after that session's last_sequence. A stream's own
   * resumes need no option: they use the token they received.
   */
  resume_token?: string | undefined;
  /**
   * With resume_token: the highest event_sequence already received of that session (the
   * daemon re-sends the events after it; the stream yields none at or below it).
   */
  last_event_sequence?: number | undefined;
}

/** The SessionConfig message as sent (sessionConfig's result). */
export interface SessionConfigMessage {
  encoding: AudioEncoding;
  sample_rate_hz: number;
  channels: number;
  language: string;
  partials?: boolean;
  partial_interval_ms?: number;
  vad?: VadParams;
  turn?: TurnParams;
  frame_event_every: number;
  resume_token: string;
  last_event_sequence?: number;
}

/** SessionStarted.effective_config: the configuration in effect (the SessionConfig fields). */
export interface EffectiveConfig {
  encoding: AudioEncoding;
  sample_rate_hz: number;
  channels: number;
  language: string;
  partials?: boolean;
  partial_interval_ms?: number;
  vad?: VadParams;
  turn?: TurnParams;
  frame_event_every: number;
  resume_token: string;
  last_event_sequence?: number;
}

// ------------------------------------------------------------------------------ events

/** A ServerEvent as @grpc/proto-loader decodes it (the `raw` of an event). */
export interface ServerEventMessage {
  audio_offset_ms: number;
  server_receive_time: number;
  processing_ms: number;
  capture_time?: number;
  event_sequence: number;
  /** The name of the oneof member that is set (absent: one this proto does not know). */
  event?: Exclude<EventType, 'unknown'>;
  /** The members: the set one's decoded message, null for the others. */
  readonly [member: string]: unknown;
}

/** What every event has. The last three properties are not enumerable (not in JSON). */
export interface EventBase {
  /** The point in the session's audio (ms from its first sample) the event refers to. */
  audio_offset_ms: number;
  /** Model time spent producing the event, rounded to 0.01 ms. */
  processing_ms: number;
  /** The decoded ServerEvent. Not enumerable. */
  readonly raw: ServerEventMessage;
  /** When the daemon received the audio at audio_offset_ms (Unix s; 0 if not known). */
  readonly server_receive_time: number;
  /**
   * The event's number in its session: 1, 2, ... across resumes; 0 on session_started and
   * on an events_shed that starts a resumed stream. Not enumerable.
   */
  readonly event_sequence: number;
}

export interface SessionStartedEvent extends EventBase {
  type: 'session_started';
  session_id: string;
  /** Resumes this session after a disconnect within resume_window_s. */
  resume_token: string;
  resume_window_s: number;
  /** The configuration in effect, after defaults and validation. */
  effective_config?: EffectiveConfig;
  resumed: boolean;
  /** Highest audio sequence already processed (a resume re-sends only frames after it). */
  last_sequence: number;
}

export interface FrameProcessedEvent extends EventBase {
  type: 'frame_processed';
  probability: number;
  is_speech: boolean;
}

export interface SpeechStartedEvent extends EventBase {
  type: 'speech_started';
  utterance_id: number;
}

export interface SpeechEndedEvent extends EventBase {
  type: 'speech_ended';
  utterance_id: number;
  duration_ms: number;
}

export interface PartialTranscriptionEvent extends EventBase {
  type: 'partial_transcription';
  utterance_id: number;
  text: string;
  /** A prefix of text, of every later partial of the utterance, and of its final. */
  stable_text: string;
}

export interface FinalTranscriptionEvent extends EventBase {
  type: 'final_transcription';
  utterance_id: number;
  text: string;
  start_ms: number;
}

export interface TurnEndedEvent extends EventBase {
  type: 'turn_ended';
  turn_id: number;
  /** Smart Turn's last output; absent if it never ran. */
  probability?: number;
  /** 'model', 'silence_fallback' or 'forced'. */
  reason: string;
  /** The whole turn; never sent before the turn's last final. */
  transcript: string;
}

export interface TurnResumedEvent extends EventBase {
  type: 'turn_resumed';
  turn_id: number;
}

export interface InterruptionEvent extends EventBase {
  type: 'interruption';
  utterance_id: number;
}

export interface PipelineHealthEvent extends EventBase {
  type: 'pipeline_health';
  /** 'healthy', 'stressed', 'overloaded' or 'failed'. */
  health: string;
  load: number;
  /** This session's lag behind real time. */
  lag_ms: number;
  backpressure_level: number;
}

export interface BackpressureTriggeredEvent extends EventBase {
  type: 'backpressure_triggered';
  level: number;
  /** 'reduce_quality', 'drop_frames' or 'pause_processing'. */
  action: string;
  load: number;
}

export interface BackpressureRecoveredEvent extends EventBase {
  type: 'backpressure_recovered';
  level: number;
  action: string;
  load: number;
}

export interface FramesDroppedEvent extends EventBase {
  type: 'frames_dropped';
  start_ms: number;
  end_ms: number;
  /** 32 ms VAD windows whose analysis was skipped. */
  frames: number;
  /** 'backpressure' or 'ring_full'. */
  reason: string;
}

export interface WorkerRecoveredEvent extends EventBase {
  type: 'worker_recovered';
  worker_id: number;
  reason: string;
  rerun_jobs: number;
  rerun_frames: number;
}

/** Events the daemon dropped for a slow reader, or no longer held for a resume. */
export interface EventsShedEvent extends EventBase {
  type: 'events_shed';
  partials: number;
  frame_events: number;
  other: number;
}

export interface SessionClosedEvent extends EventBase {
  type: 'session_closed';
  reason: string;
}

export interface ErrorEvent extends EventBase {
  type: 'error';
  /** A gRPC status name, e.g. 'INVALID_ARGUMENT'. */
  code: string;
  message: string;
}

/** A ServerEvent whose oneof member this proto does not know (a newer daemon's event). */
export interface UnknownEvent extends EventBase {
  type: 'unknown';
}

/**
 * An event: `type` is the snake_case name of the ServerEvent oneof member (the Python
 * client's Event.type), the event's fields beside it. Narrow on `type`.
 */
export type AlfredEvent =
  | SessionStartedEvent
  | FrameProcessedEvent
  | SpeechStartedEvent
  | SpeechEndedEvent
  | PartialTranscriptionEvent
  | FinalTranscriptionEvent
  | TurnEndedEvent
  | TurnResumedEvent
  | InterruptionEvent
  | PipelineHealthEvent
  | BackpressureTriggeredEvent
  | BackpressureRecoveredEvent
  | FramesDroppedEvent
  | WorkerRecoveredEvent
  | EventsShedEvent
  | SessionClosedEvent
  | ErrorEvent
  | UnknownEvent;

export type EventType = AlfredEvent['type'];

/** The event interface of one type: `EventOf<'final_transcription'>`. */
export type EventOf<T extends EventType> = Extract<AlfredEvent, { type: T }>;

// ------------------------------------------------------------------------------ errors

/** The daemon (or the transport) ended the stream, or a unary call, with a non-OK status. */
export declare class StreamError extends Error {
  constructor(code: status, details: string);
  readonly name: 'StreamError';
  /** The gRPC status code. */
  readonly code: status;
  /** Its name, e.g. 'INVALID_ARGUMENT' ('STATUS_<n>' for a code grpc-js does not name). */
  readonly codeName: string;
  /** The status details: the daemon's own sentence. */
  readonly details: string;
  /** A gRPC error (anything with a numeric `code`) as a StreamError; anything else as is. */
  static from(err: StreamError | { code: number; details?: string; message?: string }): StreamError;
  static from(err: unknown): unknown;
}

// ------------------------------------------------------------------------------ client

export interface ClientOptions {
  /** The daemon's bearer token, if it requires one (security.tokens_file). */
  token?: string | undefined;
  /** Default: insecure. `grpc.credentials.createSsl(ca, key, cert)` for TLS. */
  credentials?: ChannelCredentials | undefined;
  channelOptions?: ChannelOptions | undefined;
  /** Load the proto from here instead of the package's copy. */
  protoPath?: string | undefined;
  /** Resumes per stream after a resumable failure (default 3; 0 never resumes). */
  maxResumes?: number | undefined;
}

export interface StreamOptions {
  /** SessionConfig fields besides the audio format. */
  options?: SessionOptions | undefined;
  /** false: a broken stream throws instead of resuming (default true). */
  resume?: boolean | undefined;
  /** Resumes of this stream (default: the client's maxResumes). */
  maxResumes?: number | undefined;
}

export interface StreamPcmOptions extends StreamOptions {
  /** Pace the 20 ms frames at real time (default: as fast as the daemon reads). */
  realtime?: boolean | undefined;
}

/** Audio to stream: LINEAR16 mono frames (Buffers), from any sync or async iterable. */
export type FrameSource = Iterable<Uint8Array> | AsyncIterable<Uint8Array>;

/** Per message type of the proto: its 32-bit float fields and its message fields' types. */
export type ProtoTypes = Record<string, { floats: Set<string>; nested: Record<string, string> }>;

export interface LoadedProto {
  protoPath: string;
  packageDefinition: PackageDefinition;
  /** The alfred.v1 namespace. */
  alfred: GrpcObject & { Alfred: ServiceClientConstructor };
  types: ProtoTypes;
}

/** A parsed JSON status document (GetPipelineStatus, GetSessionStatus, Optimize). */
export type StatusDocument = Record<string, unknown>;

export interface OptimizeRequest {
  trigger_gc?: boolean | undefined;
  cleanup_sessions?: boolean | undefined;
  optimize_buffers?: boolean | undefined;
}

export declare class AlfredClient {
  constructor(target?: string, opts?: ClientOptions);
  readonly target: string;
  /** Resumes per stream unless a stream says otherwise. */
  maxResumes: number;
  /** Sent with every call (`authorization` when a token was given). */
  readonly metadata: Metadata;
  readonly types: ProtoTypes;
  /** The grpc-js client of service alfred.v1.Alfred. */
  readonly stub: Client;
  /** The latest session_started's session_id ('' before one). */
  sessionId: string;
  /** The latest session_started's resume_token ('' before one). */
  resumeToken: string;
  /** The highest event_sequence yielded by the latest stream. */
  lastEventSequence: number;

  /** Close the channel. */
  close(): void;
  /** GetPipelineStatus: the daemon's status document. */
  status(): Promise<StatusDocument>;
  /** GetSessionStatus: one session's status document. */
  sessionStatus(sessionId: string): Promise<StatusDocument>;
  /** Optimize: garbage collection, idle-session cleanup, buffer trimming. */
  optimize(request?: OptimizeRequest): Promise<StatusDocument>;
  /** Stream a 16-bit mono PCM WAV file (a path or its bytes), at its own rate. */
  streamWav(file: string | Buffer, opts?: StreamPcmOptions): AsyncGenerator<AlfredEvent, void, undefined>;
  /** Stream LINEAR16 mono samples at `sampleRate` in 20 ms frames. */
  streamPcm(pcm: Uint8Array, sampleRate: number, opts?: StreamPcmOptions): AsyncGenerator<AlfredEvent, void, undefined>;
  /**
   * Send `frames` and yield the session's events until the daemon closes the stream;
   * throws StreamError on a non-OK status it does not resume. Breaking off cancels the call.
   */
  stream(frames: FrameSource, sampleRate: number, opts?: StreamOptions): AsyncGenerator<AlfredEvent, void, undefined>;
}

/** A client of the daemon at `target` (default 127.0.0.1:50051). */
export declare function createClient(target?: string, opts?: ClientOptions): AlfredClient;

// ------------------------------------------------------------------------------ helpers

/** Load (once per path) the proto and index its message types. */
export declare function loadProto(protoPath?: string): LoadedProto;

/** A 16-bit PCM mono WAV file (path or bytes), any rate -> its samples and rate. */
export declare function parseWav(input: string | Buffer): { pcm: Buffer; sampleRate: number };

/** LINEAR16 bytes -> frames of `frameMs` (default 20; the last may be shorter). */
export declare function pcmFrames(pcm: Buffer, sampleRate: number, frameMs?: number): Buffer[];
export declare function pcmFrames(pcm: Uint8Array, sampleRate: number, frameMs?: number): Uint8Array[];

/**
 * The SessionConfig a stream sends: the options, LINEAR16 mono at `sampleRate`; a resume
 * adds its token and the highest event_sequence received.
 */
export declare function sessionConfig(
  sampleRate: number, options?: SessionOptions, resumeToken?: string, lastEventSequence?: number,
): SessionConfigMessage;

/** A decoded ServerEvent -> the event object the stream functions yield. */
export declare function toEvent(msg: ServerEventMessage, types?: ProtoTypes): AlfredEvent;
