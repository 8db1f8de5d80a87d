#!/usr/bin/env node
'use strict';
/**
 * Stream a WAV file to a running alfred-daemon and print its events.
 *
 *   node stream_wav.js FILE.wav [--target host:port] [--realtime] [--json] [--no-partials]
 *
 * Readable lines by default; with --json one JSON object per event per line (the shape of
 * `alfred-daemon stream --json`). A daemon that requires a bearer token gets $ALFRED_TOKEN. Exit code 0 when the session closes normally, 1 with the
 * gRPC status on stderr when the stream fails, 2 on bad arguments or an unreadable file.
 */

const { createClient, StreamError, DEFAULT_TARGET } = require('..');

const USAGE = 'usage: node stream_wav.js FILE.wav [--target host:port] [--realtime] [--json] '
  + '[--no-partials]';

function parseArgs(argv) {
  const args = { file: null, target: DEFAULT_TARGET, realtime: false, json: false, partials: true };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    if (a === '--realtime') args.realtime = true;
    else if (a === '--json') args.json = true;
    else if (a === '--no-partials') args.partials = false;
    else if (a === '--target') {
      if (i + 1 >= argv.length) throw new Error('--target needs host:port');
      args.target = argv[++i];
    } else if (a.startsWith('--target=')) args.target = a.slice('--target='.length);
    else if (a === '-h' || a === '--help') { console.log(USAGE); process.exit(0); }
    else if (a.startsWith('-')) throw new Error(`unknown option ${a}`);
    else if (args.file === null) args.file = a;
    else throw new Error(`unexpected argument ${a}`);
  }
  if (args.file === null) throw new Error('missing FILE.wav');
  return args;
}

function readable(ev) {
  const t = `[${(ev.audio_offset_ms / 1000).toFixed(2).padStart(7)}s]`;
  switch (ev.type) {
    case 'partial_transcription': {
      const stable = ev.stable_text || '';
      return `${t} partial   ${stable}|${(ev.text || '').slice(stable.length)}`;
    }
    case 'final_transcription':
      return `${t} final     ${ev.text}   (${Math.round(ev.processing_ms)} ms)`;
    case 'turn_ended': {
      const p = ev.probability === undefined ? '-' : ev.probability.toFixed(2);
      return `${t} turn end  ${ev.reason} p=${p}: ${ev.transcript}`;
    }
    case 'pipeline_health':
      return null; // periodic; shown with --json
    case 'session_started':
      return `${t} session   ${ev.session_id}`;
    case 'session_closed':
      return `${t} closed    ${ev.reason}`;
    case 'error':
      return `${t} error     ${ev.code}: ${ev.message}`;
    default:
      return `${t} ${ev.type.replace(/_/g, ' ')}`;
  }
}

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`stream_wav: ${err.message}\n${USAGE}`);
    return 2;
  }
  const client = createClient(args.target, { token: process.env.ALFRED_TOKEN });
  let closed = null;
  try {
    const events = client.streamWav(args.file, {
      realtime: args.realtime, options: args.partials ? {} : { partials: false },
    });
    for await (const ev of events) {
      if (ev.type === 'session_closed') closed = ev;
      const line = args.json ? JSON.stringify(ev) : readable(ev);
      if (line !== null) process.stdout.write(`${line}\n`);
    }
  } catch (err) {
    if (err instanceof StreamError) {
      console.error(`stream_wav: gRPC status ${err.codeName} (${err.code}): ${err.details}`);
      return 1;
    }
    console.error(`stream_wav: ${err.message}`);
    return 2;
  } finally {
    client.close();
  }
  if (closed === null) {
    console.error('stream_wav: the stream ended without session_closed');
    return 1;
  }
  return 0;
}

main().then((code) => { process.exitCode = code; }, (err) => {
  console.error(`stream_wav: ${err && err.stack ? err.stack : err}`);
  process.exitCode = 1;
});
