#!/usr/bin/env node
'use strict';
/**
 * Copy the repository's proto/alfred/v1/alfred.proto into this package
 * (proto/alfred/v1/alfred.proto), which index.js loads: an installed package has no
 * ../../proto next to it.
 *
 *   node scripts/sync-proto.js           # npm run sync-proto: copy it
 *   node scripts/sync-proto.js --check   # npm run check-proto (and prepack): exit 1 if the
 *                                        # package's copy differs from the repository's
 */

const fs = require('node:fs');
const path = require('node:path');

const SOURCE = path.resolve(__dirname, '..', '..', '..', 'proto', 'alfred', 'v1', 'alfred.proto');
const COPY = path.resolve(__dirname, '..', 'proto', 'alfred', 'v1', 'alfred.proto');

function main(argv) {
  const check = argv.includes('--check');
  const unknown = argv.filter((a) => a !== '--check');
  if (unknown.length) {
    console.error(`sync-proto: unknown argument ${unknown[0]}; usage: sync-proto.js [--check]`);
    return 2;
  }
  let source;
  try {
    source = fs.readFileSync(SOURCE);
  } catch (err) {
    console.error(`sync-proto: cannot read the repository's proto ${SOURCE}: ${err.message}`);
    return 2;
  }
  let copy = null;
  try {
    copy = fs.readFileSync(COPY);
  } catch (err) {
    if (err.code !== 'ENOENT') throw err;
  }
  const same = copy !== null && copy.equals(source);
  if (check) {
    if (same) return 0;
    const what = copy === null ? 'is missing' : `differs from ${SOURCE}`;
    console.error(`sync-proto: ${COPY} ${what}; run npm run sync-proto`);
    return 1;
  }
  if (!same) {
    fs.mkdirSync(path.dirname(COPY), { recursive: true });
    fs.writeFileSync(COPY, source);
    console.log(`sync-proto: ${SOURCE} -> ${COPY}`);
  }
  return 0;
}

process.exitCode = main(process.argv.slice(2));
