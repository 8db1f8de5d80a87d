#!/usr/bin/env node
/**
 * Stream a WAV file to a running alfred-daemon and print its transcript: one JSON line per
 * final transcript, per ended turn, and the session's end. The typed API of alfred-client
 * (index.d.ts): events narrowed on `type`, resume options, StreamError.
 *
 *   npx tsc -p tsconfig.json --noEmit false --outDir out   # or any TypeScript setup
 *   node out/examples/transcript.js FILE.wav [--target host:port] [--realtime]
 *
 * Output lines:
 *   {"kind":"final","utterance_id":0,"text":"...","start_ms":352,"offset_ms":2240}
 *   {"kind":"turn","turn_id":0,"reason":"model","probability":0.93,"transcript":"..."}
 *   {"kind":"closed","reason":"finished","session_id":"...","resumed":0,"events":41}
 * Exit code 0 when the session closes normally, 1 with the gRPC status on stderr when the
 * stream fails, 2 on bad arguments.
 */

import { createClient, DEFAULT_TARGET, StreamError } from 'alfred-client';
import type { AlfredEvent, EventOf, SessionOptions } from 'alfred-client';

interface Args {
  file: string;
  target: string;
  realtime: boolean;
}

type Line =
  | { kind: 'final'; utterance_id: number; text: string; start_ms: number; offset_ms: number }
  | { kind: 'turn'; turn_id: number; reason: string; probability: number | null; transcript: string }
  | { kind: 'closed'; reason: string; session_id: string; resumed: number; events: number };

function parseArgs(argv: readonly string[]): Args {
  let file: string | undefined;
  let target: string = DEFAULT_TARGET;
  let realtime = false;
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    if (a === '--realtime') realtime = true;
    else if (a === '--target') {
      const value = argv[i + 1];
      if (value === undefined) throw new Error('--target needs host:port');
      target = value;
      i += 1;
    } else if (a !== undefined && a.startsWith('-')) throw new Error(`unknown option ${a}`);
    else if (file === undefined) file = a;
    else throw new Error(`unexpected argument ${a}`);
  }
  if (file === undefined) throw new Error('missing FILE.wav');
  return { file, target, realtime };
}

function turnLine(ev: EventOf<'turn_ended'>): Line {
  // `probability` is an optional field: absent when Smart Turn never ran.
  return { kind: 'turn', turn_id: ev.turn_id, reason: ev.reason,
    probability: ev.probability ?? null, transcript: ev.transcript };
}

/** The line an event prints, or null; every event type is named, so a new one fails tsc. */
function toLine(ev: AlfredEvent, sessionId: string, starts: number, count: number): Line | null {
  switch (ev.type) {
    case 'final_transcription':
      return { kind: 'final', utterance_id: ev.utterance_id, text: ev.text,
        start_ms: ev.start_ms, offset_ms: ev.audio_offset_ms };
    case 'turn_ended':
      return turnLine(ev);
    case 'session_closed':
      return { kind: 'closed', reason: ev.reason, session_id: sessionId,
        resumed: starts - 1, events: count };
    case 'error':
      process.stderr.write(`transcript: daemon error ${ev.code}: ${ev.message}\n`);
      return null;
    case 'session_started':
    case 'frame_processed':
    case 'speech_started':
    case 'speech_ended':
    case 'partial_transcription':
    case 'turn_resumed':
    case 'interruption':
    case 'pipeline_health':
    case 'backpressure_triggered':
    case 'backpressure_recovered':
    case 'frames_dropped':
    case 'worker_recovered':
    case 'events_shed':
    case 'unknown':
      return null;
    default: {
      const unhandled: never = ev;
      return unhandled;
    }
  }
}

async function main(): Promise<number> {
  let args: Args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`transcript: ${(err as Error).message}\n`
      + 'usage: transcript FILE.wav [--target host:port] [--realtime]\n');
    return 2;
  }
  // A daemon that requires a bearer token gets $ALFRED_TOKEN. A broken stream resumes up
  // to 3 times (the default, written out here).
  const client = createClient(args.target, { token: process.env['ALFRED_TOKEN'], maxResumes: 3 });
  const options: SessionOptions = { partials: false, turn: { enabled: true } };
  let closed = false;
  let starts = 0;
  let count = 0;
  try {
    for await (const ev of client.streamWav(args.file, { realtime: args.realtime, options })) {
      count += 1;
      if (ev.type === 'session_started') starts += 1;
      if (ev.type === 'session_closed') closed = true;
      const line = toLine(ev, client.sessionId, starts, count);
      if (line !== null) process.stdout.write(`${JSON.stringify(line)}\n`);
    }
  } catch (err) {
    if (err instanceof StreamError) {
      process.stderr.write(`transcript: gRPC status ${err.codeName} (${err.code}): ${err.details}\n`);
      return 1;
    }
    throw err;
  } finally {
    client.close();
  }
  if (!closed) {
    process.stderr.write('transcript: the stream ended without session_closed\n');
    return 1;
  }
  return 0;
}

main().then((code) => { process.exitCode = code; }, (err: unknown) => {
  process.stderr.write(`transcript: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
