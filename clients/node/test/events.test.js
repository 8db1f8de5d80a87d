'use strict';
/** toEvent: the event objects' shape (what `alfred-daemon stream --json` prints). */

const test = require('node:test');
const assert = require('node:assert/strict');
const { toEvent, sessionConfig } = require('alfred-client');

test('an error event keeps its message field; the decoded message is ev.raw', () => {
  const raw = { event: 'error', error: { code: 'INTERNAL', message: 'worker lost' },
    audio_offset_ms: 640, processing_ms: 0, event_sequence: 7, server_receive_time: 1.5 };
  const ev = toEvent(raw);
  assert.deepEqual(JSON.parse(JSON.stringify(ev)), { type: 'error', audio_offset_ms: 640,
    processing_ms: 0, code: 'INTERNAL', message: 'worker lost' });
  assert.equal(ev.message, 'worker lost');
  assert.equal(ev.raw, raw);
  assert.equal(ev.event_sequence, 7);
  assert.equal(ev.server_receive_time, 1.5);
  assert.deepEqual(Object.keys(ev), ['type', 'audio_offset_ms', 'processing_ms', 'code', 'message']);
});

test('an unset optional field is absent, floats are shortest, messages nest', () => {
  const turn = toEvent({ event: 'turn_ended', audio_offset_ms: 3000, processing_ms: 12.345,
    turn_ended: { turn_id: 1, reason: 'silence_fallback', transcript: 'hi' } });
  assert.deepEqual({ ...turn }, { type: 'turn_ended', audio_offset_ms: 3000, processing_ms: 12.35,
    turn_id: 1, reason: 'silence_fallback', transcript: 'hi' });
  const withP = toEvent({ event: 'turn_ended', turn_ended: { turn_id: 2, probability: Math.fround(0.9381),
    reason: 'model', transcript: 'x' } });
  assert.equal(withP.probability, 0.9381);
  const none = toEvent({ audio_offset_ms: 1 });
  assert.equal(none.type, 'unknown');
});

test('sessionConfig names last_event_sequence only on a resume', () => {
  assert.equal('last_event_sequence' in sessionConfig(16000, {}), false);
  assert.equal('last_event_sequence' in sessionConfig(16000, {}, '', 4), false);
  const resume = sessionConfig(16000, { partials: false }, 'tok', 0);
  assert.equal(resume.resume_token, 'tok');
  assert.equal(resume.last_event_sequence, 0);
  assert.equal(resume.partials, false);
});
