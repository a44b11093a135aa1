// The storage format of docs/FORMAT.md, version 2: names, ids, partitions and events.
//
// Everything a document or an event must look like is built here, so the rest of the
// client only decides *when* to write it. Section numbers (§) refer to docs/FORMAT.md.

import { randomBytes } from 'node:crypto';
import { Double } from 'mongodb';

export const FORMAT_VERSION = 2;
export const FORMAT_DOCUMENT = 'format';

export const MESSAGES = 'messages';
export const EVENTS = 'events';
export const WORKERS = 'workers';
export const HISTORY = 'history';
export const SETTINGS = 'settings';
export const DOORBELLS = 'doorbells';

// Message states (§3).
export const PENDING = 'pending';
export const INFLIGHT = 'inflight';
export const DEAD = 'dead';
export const DONE = 'done';
export const EXPIRED = 'expired';
export const REMOVED = 'removed';
export const TERMINAL_STATES = [DONE, EXPIRED, REMOVED];

// Event kinds and the suffix each gives its event id (§5).
export const SUFFIX = {
  written: 'w', claimed: 'c', acked: 'a', failed: 'f', dead: 'd', reclaimed: 'r',
  expired: 'x', deleted: 'rm', retried: 'rt',
};

// expire_at of a message that never expires (§3): a date, never null.
export const NEVER = new Date(Date.UTC(9999, 11, 31));

export const PARTITIONS = 16;
export const MAX_QUEUE_NAME_LENGTH = 120;
export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;
export const LOG_LINES_KEPT = 100;
export const ERRORS_KEPT = 20;
export const MAX_ERROR_CHARS = 2000;
export const MAX_EVENT_ERROR_CHARS = 200;
export const MAX_TRACEBACK_CHARS = 20000;
export const MAX_LOG_LINE_CHARS = 2000;
export const MAX_RESULT_BYTES = 64 * 1024;
export const DUPLICATE_KEY = 11000;

// Claim order: highest priority, then oldest; the claim index's last keys.
export const CLAIM_ORDER = { priority: -1, _id: 1 };

// The indexes of §10, exactly as the Python library names them (a client that creates
// them must use the same names and keys, or the server refuses the second definition).
export const INDEXES = {
  [MESSAGES]: [
    { key: { queue: 1, state: 1, ...CLAIM_ORDER }, name: 'claim' },
    { key: { queue: 1, state: 1, visible_at: 1 }, name: 'queue_state_visible' },
    { key: { dedupe: 1 }, name: 'dedupe', unique: true, sparse: true },
    { key: { expire_at: 1 }, name: 'expire_at', sparse: true },
    { key: { 'outbox.id': 1 }, name: 'outbox', sparse: true },
    { key: { leased_by: 1 }, name: 'leased_by', sparse: true },
    { key: { activity: 1, state: 1 }, name: 'activity', sparse: true },
    { key: { 'sequence.name': 1, 'sequence.key': 1 }, name: 'sequence', sparse: true },
  ],
  [EVENTS]: [{ key: { partition: 1, at: 1 }, name: 'partition_at' }],
  [HISTORY]: [
    { key: { done_at: 1 }, name: 'done_at' },
    { key: { queue: 1, done_at: -1 }, name: 'queue_done_at' },
    { key: { once: 1 }, name: 'once', unique: true, sparse: true },
    { key: { 'sequence.name': 1, 'sequence.key': 1 }, name: 'sequence', sparse: true },
  ],
  [WORKERS]: [{ key: { heartbeat_at: 1 }, name: 'heartbeat_at' }],
};

export class MopqError extends Error {
  constructor(message) {
    super(message);
    this.name = this.constructor.name;
  }
}
export class InvalidInput extends MopqError {}
export class LeaseLost extends MopqError {}
export class FormatMismatch extends MopqError {}

// -- partitions: zlib's CRC-32 of the key's UTF-8 bytes, mod 16 (§5.2) ------------------

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n += 1) {
    let c = n;
    for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

export function crc32(text) {
  let crc = 0xffffffff;
  for (const byte of Buffer.from(text, 'utf8')) crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

export function partitionOf(key) {
  return crc32(key) % PARTITIONS;
}

// -- events (§5) -----------------------------------------------------------------------

export function seconds(value) {
  return new Double(value);
}

export function eventId(kind, messageId, token = null) {
  const hex = String(messageId);
  return token ? `${hex}:${token}:${SUFFIX[kind]}` : `${hex}:${SUFFIX[kind]}`;
}

// The full event of one transition of `message` ({_id, queue, routing_key, activity}).
// `token` is the lease token (or retry epoch) that makes the transition unique.
export function messageEvent(kind, message, at, token = null, extra = {}) {
  const messageId = String(message._id);
  const event = {
    id: eventId(kind, messageId, token),
    kind,
    partition: partitionOf(messageId),
    at,
    queue: message.queue,
    routing_key: message.routing_key ?? null,
    message: messageId,
  };
  if (message.activity !== undefined && message.activity !== null) event.activity = message.activity;
  return Object.assign(event, extra);
}

// An emit() event: a random id fixed once, so a re-sent copy is recognised (§8).
export function businessEvent(name, value, tags, at) {
  const id = randomBytes(16).toString('hex');
  return { id, kind: 'business', partition: partitionOf(id), at, name, value: new Double(value), tags };
}

// The `events` document of an event: `id` becomes `_id`.
export function asDocument(event) {
  const { id, ...rest } = event;
  return { _id: id, ...rest };
}

export function newToken() {
  return randomBytes(8).toString('hex');
}

// -- checks done before anything is written --------------------------------------------

export function queueName(name) {
  if (typeof name !== 'string' || name.length === 0) {
    throw new InvalidInput(`A queue name must be a non-empty string, got ${JSON.stringify(name)}.`);
  }
  if (name.length > MAX_QUEUE_NAME_LENGTH) {
    throw new InvalidInput(`Queue name is ${name.length} characters; the limit is ${MAX_QUEUE_NAME_LENGTH}.`);
  }
  if (/[$/\x00]/.test(name)) {
    throw new InvalidInput(`Queue name ${JSON.stringify(name)} holds '$', '/' or NUL.`);
  }
  return name;
}

export function optionalKey(what, value) {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'string' || value.length === 0 || value.length > 512 || value.includes('\x00')) {
    throw new InvalidInput(`${what} must be a non-empty string of at most 512 characters without NUL.`);
  }
  return value;
}

export function nonNegative(what, value, { allowNull = false } = {}) {
  if ((value === undefined || value === null) && allowNull) return null;
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new InvalidInput(`${what} must be a number of seconds, got ${JSON.stringify(value)}.`);
  }
  if (value < 0) throw new InvalidInput(`${what} must not be negative, got ${value}.`);
  return value;
}

export function integer(what, value, low, high) {
  if (!Number.isInteger(value) || value < low || value > high) {
    throw new InvalidInput(`${what} must be a whole number from ${low} to ${high}, got ${JSON.stringify(value)}.`);
  }
  return value;
}

function checkKeys(value, path, depth) {
  if (depth > 64) throw new InvalidInput(`Body nests deeper than 64 levels at ${path}.`);
  if (Array.isArray(value)) {
    value.forEach((inner, index) => checkKeys(inner, `${path}[${index}]`, depth + 1));
  } else if (value !== null && typeof value === 'object' && !(value instanceof Date)) {
    for (const [key, inner] of Object.entries(value)) {
      if (key.startsWith('$') || key.includes('\x00')) {
        throw new InvalidInput(`Body key ${path}.${key} starts with '$' or holds NUL; rename it.`);
      }
      checkKeys(inner, `${path}.${key}`, depth + 1);
    }
  } else if (typeof value === 'number' && !Number.isFinite(value)) {
    throw new InvalidInput(`Body value at ${path} is ${value}; JSON has no NaN or infinity.`);
  } else if (typeof value === 'function' || typeof value === 'symbol' || value === undefined) {
    throw new InvalidInput(`Body value at ${path} is a ${typeof value}; bodies hold JSON-like values only.`);
  }
}

export function body(value, maxBytes, calculateSize) {
  if (value === null || typeof value !== 'object' || Array.isArray(value) || value instanceof Date) {
    throw new InvalidInput('A message body must be an object (a JSON-like document).');
  }
  checkKeys(value, 'body', 0);
  const size = calculateSize({ body: value });
  if (size > maxBytes) {
    throw new InvalidInput(`Body is ${size} bytes encoded; the limit is ${maxBytes} bytes.`);
  }
  return value;
}

// An exponential backoff like the Python library's default: about `first` seconds after
// the first failed attempt, doubling, capped, with +-10% jitter.
export function exponentialBackoff({ first = 1, factor = 2, cap = 300, jitter = 0.1 } = {}) {
  return (failedAttempts) => {
    const base = Math.min(cap, first * factor ** Math.max(0, failedAttempts - 1));
    return Math.max(0, base * (1 + (Math.random() * 2 - 1) * jitter));
  };
}

export function sleep(ms) {
  return new Promise((resolve) => { setTimeout(resolve, ms); });
}
