'use strict';
/** The package as it resolves by name (its `exports`), from CommonJS and from ESM. */

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.join(__dirname, '..');

test("require('alfred-client') is index.js; the proto it loads is the package's own", () => {
  assert.equal(require.resolve('alfred-client'), path.join(ROOT, 'index.js'));
  const client = require('alfred-client');
  assert.equal(client.PROTO_PATH, path.join(ROOT, 'proto', 'alfred', 'v1', 'alfred.proto'));
  assert.equal(require.resolve('alfred-client/proto/alfred/v1/alfred.proto'), client.PROTO_PATH);
  assert.ok(fs.statSync(client.PROTO_PATH).isFile());
  assert.equal(client.loadProto().protoPath, client.PROTO_PATH);
});

test('ESM import gets the named exports', async () => {
  const mod = await import('alfred-client');
  assert.equal(typeof mod.createClient, 'function');
  assert.equal(typeof mod.StreamError, 'function');
  assert.equal(mod.default.createClient, mod.createClient);
});

test('package.json: types, exports with a types condition first, files, engines', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  assert.equal(pkg.main, './index.js');
  assert.equal(pkg.types, './index.d.ts');
  assert.deepEqual(Object.keys(pkg.exports['.']), ['types', 'require', 'default']);
  for (const f of ['index.js', 'index.d.ts', 'proto/', 'examples/']) assert.ok(pkg.files.includes(f), f);
  assert.match(pkg.engines.node, /^>=\d+/);
  for (const target of [pkg.exports['.'].types, pkg.exports['.'].require]) {
    assert.ok(fs.existsSync(path.join(ROOT, target)), target);
  }
});
