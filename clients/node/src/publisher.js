// The publisher: moves outbox events and emitted events into the business log (§6, way a).
//
// A transition's events are already durable in its message's outbox when they reach
// this buffer, so the buffer is only a shortcut: if this process dies, the sweep of the
// monitor publishes them from the document (§6, way b). Emitted events live only here
// until inserted, so their buffer is bounded and drops are reported (§8).
//
// Publishing one batch (one outbox per message, its events in order):
//   1. insert the events into `events`, unordered; a duplicate _id means "already there";
//   2. copy the done messages among them into `history` (duplicate _id: already copied);
//   3. $pull the published ids from each outbox, then delete each message that is
//      terminal with an empty outbox (done only if this publisher copied it in step 2).
// An event goes out unflagged only on its first attempt and within FRESH_MS of its
// transition; a retry, or a late first attempt that may race the sweep's copy, carries
// `republished: true` so collectors check it against their receipts.

import { MongoBulkWriteError, MongoNetworkError, MongoServerError } from 'mongodb';
import {
  DONE, DUPLICATE_KEY, EVENTS, EXPIRED, HISTORY, MESSAGES, REMOVED,
  asDocument, businessEvent, seconds, sleep,
} from './format.js';

export const BATCH = 5000;
export const MAX_BUFFERED_EVENTS = 100000;
export const MAX_PENDING_OUTBOXES = 100000;
export const FRESH_MS = 2000;
export const MAX_OUTBOX_ATTEMPTS = 5;
// An outbox copy still unpublished this long after its transition is given up: the sweep
// has long published it from the message, and collectors recognise a repeat only while
// they keep its receipt (an hour).
export const MAX_OUTBOX_AGE_MS = 10 * 60 * 1000;
export const DROPPED_EVENT_NAME = 'mopq.events_dropped';
const RETRY_WAIT_MAX_MS = 5000;
const HISTORY_FIELDS = ['queue', 'routing_key', 'body', 'priority', 'activity', 'dedupe_key', 'attempts',
  'created_at', 'claimed_at', 'done_at', 'result', 'acked_lease', 'errors', 'once', 'sequence'];

// The indexes of a bulk write's operations refused as duplicates; rethrow anything else.
export function duplicatesOnly(error) {
  if (error instanceof MongoBulkWriteError) {
    const failures = Array.isArray(error.writeErrors) ? error.writeErrors : [error.writeErrors];
    const concern = error.result?.getWriteConcernError?.();
    if (failures.length && !concern && failures.every((failure) => failure?.code === DUPLICATE_KEY)) {
      return failures.map((failure) => failure.index);
    }
  }
  throw error;
}

export async function insertEvents(db, documents) {
  if (!documents.length) return;
  try {
    await db.collection(EVENTS).insertMany(documents, { ordered: false });
  } catch (error) {
    duplicatesOnly(error);
  }
}

// The history document of a done message (§9).
export function historyDocument(message) {
  const document = { _id: message._id };
  for (const key of HISTORY_FIELDS) if (key in message) document[key] = message[key];
  document.worker = message.leased_by ?? null;
  if (message.claimed_at && message.done_at) {
    document.duration = seconds((message.done_at - message.claimed_at) / 1000);
  }
  return document;
}

export async function archive(db, messageIds) {
  if (!messageIds.length) return 0;
  const done = await db.collection(MESSAGES)
    .find({ _id: { $in: messageIds }, state: DONE }, { projection: { outbox: 0, dedupe: 0 } })
    .toArray();
  if (done.length) {
    try {
      await db.collection(HISTORY).insertMany(done.map(historyDocument), { ordered: false });
    } catch (error) {
      duplicatesOnly(error);
    }
  }
  return done.length;
}

// One outbox per message: its events in order, and the state its last transition left.
function merged(outboxes) {
  const byMessage = new Map();
  for (const outbox of outboxes) {
    const key = String(outbox.messageId);
    const earlier = byMessage.get(key);
    if (!earlier) {
      byMessage.set(key, { messageId: outbox.messageId, state: outbox.state, events: [...outbox.events] });
      continue;
    }
    const known = new Set(earlier.events.map((event) => event.id));
    earlier.events.push(...outbox.events.filter((event) => !known.has(event.id)));
    earlier.state = outbox.state;
  }
  return [...byMessage.values()];
}

export async function publishOutboxes(db, outboxes) {
  const batch = merged(outboxes.filter((outbox) => outbox.events.length));
  if (!batch.length) return;
  const now = Date.now();
  const documents = [];
  for (const outbox of batch) {
    for (const event of outbox.events) {
      const document = asDocument(event);
      if (event.republished || now - event.at.getTime() > FRESH_MS) document.republished = true;
      documents.push(document);
    }
  }
  await insertEvents(db, documents);
  await archive(db, batch.filter((outbox) => outbox.state === DONE).map((outbox) => outbox.messageId));
  const pulls = batch.map((outbox) => ({
    updateOne: {
      filter: { _id: outbox.messageId },
      update: { $pull: { outbox: { id: { $in: outbox.events.map((event) => event.id) } } } },
    },
  }));
  // A done message goes only by a publisher that copied it into history (above). One
  // still carrying a write intent's `batch` is left to the sweep (FORMAT §6.4).
  const deletes = batch.map((outbox) => ({
    deleteOne: {
      filter: {
        _id: outbox.messageId,
        state: { $in: outbox.state === DONE ? [DONE, EXPIRED, REMOVED] : [EXPIRED, REMOVED] },
        'outbox.0': { $exists: false },
        batch: { $exists: false },
      },
    },
  }));
  await db.collection(MESSAGES).bulkWrite([...pulls, ...deletes], { ordered: true });
}

function retriable(error) {
  return error instanceof MongoNetworkError || !(error instanceof MongoServerError);
}

export class Publisher {
  constructor(db, { maxBuffered = MAX_BUFFERED_EVENTS, log = console } = {}) {
    this.db = db;
    this.maxBuffered = maxBuffered;
    this.log = log;
    this.outboxes = [];
    this.business = [];
    this.dropped = 0;
    this.droppedUnreported = 0;
    this.lastError = null;
    this.closed = false;
    this.running = null;
    this.idleWaiters = [];
  }

  addOutbox(outbox) {
    if (!outbox.events.length || this.closed) return; // closed: the sweep publishes it
    this.outboxes.push({ ...outbox, attempts: 0 });
    if (this.outboxes.length > MAX_PENDING_OUTBOXES) this.outboxes.shift(); // still in its message
    this.kick();
  }

  addBusiness(event) {
    if (this.closed) {
      this.dropped += 1;
      return;
    }
    if (this.business.length >= this.maxBuffered) {
      this.business.shift();
      this.dropped += 1;
      this.droppedUnreported += 1;
    }
    this.business.push(event);
    this.kick();
  }

  pending() {
    return this.outboxes.length + this.business.length;
  }

  kick() {
    if (this.running) return;
    this.running = this.drain().finally(() => {
      this.running = null;
      if (this.pending() && !this.closed) {
        this.kick();
        return;
      }
      for (const resolve of this.idleWaiters.splice(0)) resolve(true);
    });
  }

  // Resolves true once everything buffered is published, false if `timeoutMs` passed first.
  flush(timeoutMs = 10000) {
    if (!this.running && !this.pending()) return Promise.resolve(true);
    this.kick();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.idleWaiters = this.idleWaiters.filter((waiter) => waiter !== done);
        resolve(false);
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        resolve(true);
      };
      this.idleWaiters.push(done);
    });
  }

  async drain() {
    let waitMs = 100;
    await new Promise((resolve) => { setImmediate(resolve); }); // let a burst gather
    while (this.pending() && !this.closed) {
      const outboxes = this.outboxes.splice(0, BATCH);
      const business = this.business.splice(0, BATCH);
      try {
        await publishOutboxes(this.db, outboxes);
        outboxes.length = 0;
        await insertEvents(this.db, business.map(asDocument));
        business.length = 0;
        await this.reportDrops();
        this.lastError = null;
        waitMs = 100;
      } catch (error) {
        this.lastError = String(error);
        this.giveBack(outboxes, business, error);
        this.log.warn?.(`mopq: cannot publish events yet (${error.message}); retrying in ${waitMs} ms`);
        await sleep(waitMs);
        waitMs = Math.min(waitMs * 2, RETRY_WAIT_MAX_MS);
      }
    }
  }

  // A failed attempt may have inserted some events: every copy sent again is flagged.
  giveBack(outboxes, business, error) {
    const kept = [];
    for (const outbox of outboxes) {
      const attempts = outbox.attempts + 1;
      if (!retriable(error) && attempts >= MAX_OUTBOX_ATTEMPTS) continue; // left to the sweep
      if (Date.now() - outbox.events[0].at.getTime() > MAX_OUTBOX_AGE_MS) continue; // likewise
      kept.push({ ...outbox, attempts, events: outbox.events.map((event) => ({ ...event, republished: true })) });
    }
    this.outboxes.unshift(...kept);
    this.business.unshift(...business.map((event) => ({ ...event, republished: true })));
    while (this.business.length > this.maxBuffered) {
      this.business.shift();
      this.dropped += 1;
      this.droppedUnreported += 1;
    }
  }

  async reportDrops() {
    const dropped = this.droppedUnreported;
    if (!dropped) return;
    await insertEvents(this.db, [asDocument(businessEvent(DROPPED_EVENT_NAME, dropped, {}, new Date()))]);
    this.droppedUnreported -= dropped;
  }

  // Stop publishing: what is still buffered stays in the outboxes for the sweep; emitted
  // events not yet inserted are counted as dropped.
  close() {
    this.closed = true;
    this.dropped += this.business.length;
    this.business = [];
    this.outboxes = [];
    for (const resolve of this.idleWaiters.splice(0)) resolve(false);
  }
}
