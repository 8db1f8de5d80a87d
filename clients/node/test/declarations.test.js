'use strict';
/**
 * index.d.ts against what it declares: the runtime exports of index.js, and the proto's
 * ServerEvent members and message fields (names, and which are `optional`), read from the
 * package's proto as loaded. A proto change that adds an event or a field fails here until
 * the declarations follow. (tsc checks the declarations' own consistency: tsconfig.json.)
 */

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const client = require('alfred-client');

const DTS = fs.readFileSync(path.join(__dirname, '..', 'index.d.ts'), 'utf8');

/** interface name -> {fields: {name: optional?}, extends} of the top-level interfaces. */
function interfaces() {
  const out = {};
  const re = /^export interface (\w+)(?: extends (\w+))? \{\n([\s\S]*?)^\}/gm;
  for (const m of DTS.matchAll(re)) {
    const fields = {};
    for (const line of m[3].split('\n')) {
      const f = /^ {2}(?:readonly )?(\w+)(\?)?: /.exec(line);
      if (f) fields[f[1]] = Boolean(f[2]);
    }
    out[m[1]] = { fields, extends: m[2] || null };
  }
  return out;
}

/**
 * The proto message `name`'s fields: {field: proto3 optional?}. (proto-loader's
 * descriptors leave proto3Optional false and oneofIndex 0 on every field; an optional
 * field is the one member of a synthetic oneof named `_<field>`.)
 */
function protoFields(name) {
  const def = client.loadProto().packageDefinition[`alfred.v1.${name}`];
  assert.ok(def && def.type, `alfred.v1.${name} is not in the proto`);
  const synthetic = new Set(def.type.oneofDecl.map((o) => o.name));
  return Object.fromEntries(def.type.field.map((f) => [f.name, synthetic.has(`_${f.name}`)]));
}

const EVENT_BASE = new Set(['type']);

test('every ServerEvent member has an event interface with its fields', () => {
  const ifaces = interfaces();
  // The members of oneof `event`: ServerEvent's message-typed fields (its others are
  // scalars).
  const serverEvent = client.loadProto().packageDefinition['alfred.v1.ServerEvent'].type;
  assert.deepEqual(serverEvent.oneofDecl.map((o) => o.name).filter((n) => !n.startsWith('_')),
    ['event']);
  const members = serverEvent.field.filter((f) => f.type === 'TYPE_MESSAGE');
  assert.ok(members.length >= 17, `${members.length} members`);
  const declared = {};
  for (const [name, iface] of Object.entries(ifaces)) {
    const m = new RegExp(`^export interface ${name} extends EventBase \\{\\n  type: '(\\w+)';`, 'm')
      .exec(DTS);
    if (m) declared[m[1]] = name;
  }
  const expected = members.map((f) => f.name).sort();
  assert.deepEqual(Object.keys(declared).filter((t) => t !== 'unknown').sort(), expected);
  for (const f of members) {
    const iface = ifaces[declared[f.name]];
    const fields = Object.fromEntries(Object.entries(iface.fields)
      .filter(([k]) => !EVENT_BASE.has(k)));
    const message = f.typeName.replace(/^\.?(alfred\.v1\.)?/, '');
    const want = protoFields(message);
    // A message-typed field is absent when unset (plain() leaves nulls out): optional too.
    for (const pf of client.loadProto().packageDefinition[`alfred.v1.${message}`].type.field) {
      if (pf.type === 'TYPE_MESSAGE') want[pf.name] = true;
    }
    assert.deepEqual(fields, want, `${declared[f.name]} vs alfred.v1.${message}`);
    // The shape puts the event's fields beside these: none may share a name.
    for (const base of ['type', 'audio_offset_ms', 'processing_ms', 'raw', 'event_sequence',
      'server_receive_time']) {
      assert.equal(base in want, false, `alfred.v1.${message}.${base} would collide`);
    }
    // Each member is in the AlfredEvent union.
    assert.match(DTS, new RegExp(`\\| ${declared[f.name]}\\n`), `${declared[f.name]} in AlfredEvent`);
  }
});

test('SessionConfig, its VAD/turn parameters and effective_config match the proto', () => {
  const ifaces = interfaces();
  const config = protoFields('SessionConfig');
  const asSent = { ...config, vad: true, turn: true }; // messages: absent unless given
  assert.deepEqual(ifaces.SessionConfigMessage.fields, asSent);
  assert.deepEqual(ifaces.EffectiveConfig.fields, asSent);
  // The options: every SessionConfig field but the audio format, which the client sets.
  const options = Object.fromEntries(Object.keys(config)
    .filter((k) => !['encoding', 'sample_rate_hz', 'channels'].includes(k))
    .map((k) => [k, true]));
  assert.deepEqual(ifaces.SessionOptions.fields, options);
  assert.deepEqual(ifaces.VadParams.fields, protoFields('VadParams'));
  assert.deepEqual(ifaces.TurnParams.fields, protoFields('TurnParams'));
  const optimize = Object.fromEntries(Object.keys(protoFields('OptimizeRequest'))
    .map((k) => [k, true]));
  assert.deepEqual(ifaces.OptimizeRequest.fields, optimize);
});

test('the declarations name exactly the values index.js exports', () => {
  const declared = [...DTS.matchAll(/^export declare (?:const|function|class) (\w+)/gm)]
    .map((m) => m[1]);
  assert.deepEqual([...new Set(declared)].sort(), Object.keys(client).sort());
  const methods = Object.getOwnPropertyNames(client.AlfredClient.prototype)
    .filter((k) => k !== 'constructor' && !k.startsWith('_'));
  const body = /^export declare class AlfredClient \{\n([\s\S]*?)^\}/m.exec(DTS)[1];
  for (const m of methods) assert.match(body, new RegExp(`^ {2}${m}\\(`, 'm'), `AlfredClient.${m}`);
  const instance = client.createClient('127.0.0.1:1');
  try {
    for (const k of Object.keys(instance)) {
      assert.match(body, new RegExp(`^ {2}(?:readonly )?${k}: `, 'm'), `AlfredClient.${k}`);
    }
  } finally {
    instance.close();
  }
});
