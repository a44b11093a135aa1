// A named queue: write messages (§4.1), claim them under a lease (§4.2, §4.3).

import { BSON, Double, MongoServerError, ObjectId } from 'mongodb';
import {
  CLAIM_ORDER, DEFAULT_MAX_BODY_BYTES, DUPLICATE_KEY, EXPIRED, INFLIGHT, InvalidInput, MESSAGES, NEVER, PENDING,
  body as checkedBody, eventId, exponentialBackoff, integer, messageEvent, newToken, nonNegative,
  optionalKey, queueName,
} from './format.js';
import { Message } from './message.js';
import { duplicatesOnly } from './publisher.js';

export const MAX_LIMIT = 1000;
export const MAX_VISIBILITY_TIMEOUT = 12 * 3600;
export const MAX_PRIORITY = 2 ** 31 - 1;
const CANDIDATE_FIELDS = { _id: 1, queue: 1, routing_key: 1, activity: 1, state: 1, lease_token: 1,
  expire_at: 1, priority: 1 };
const CLAIM_ROUNDS = 3;

// A body with its own options, for Queue.writeMany.
export class Envelope {
  constructor(body, { routingKey, expire, delay, priority, dedupeKey, activity } = {}) {
    Object.assign(this, { body, routingKey, expire, delay, priority, dedupeKey, activity });
  }
}

export function envelope(body, options) {
  return new Envelope(body, options);
}

function pick(own, fallback) {
  return own === undefined ? fallback : own;
}

function shuffledWithinPriority(candidates) {
  const spread = [...candidates];
  for (let i = spread.length - 1; i > 0; i -= 1) {
    const j = Math.floor(Math.random() * (i + 1));
    [spread[i], spread[j]] = [spread[j], spread[i]];
  }
  return spread.sort((a, b) => (b.priority ?? 0) - (a.priority ?? 0));
}

export class Queue {
  constructor(client, name, { maxAttempts = 5, backoff = null, maxBodyBytes = DEFAULT_MAX_BODY_BYTES,
    worker = null } = {}) {
    this.client = client;
    this.name = queueName(name);
    this.maxAttempts = integer('maxAttempts', maxAttempts, 1, 1000);
    if (backoff !== null && typeof backoff !== 'function') {
      throw new InvalidInput('backoff must be a function of the failed attempts that returns seconds.');
    }
    this.backoff = backoff ?? exponentialBackoff();
    this.maxBodyBytes = integer('maxBodyBytes', maxBodyBytes, 1, 15 * 1024 * 1024);
    this.worker = worker;
    this.foundNone = new Map(); // routing key -> the last candidate read found nothing
  }

  get messages() {
    return this.client.db.collection(MESSAGES);
  }

  get publisher() {
    return this.client.publisher;
  }

  // -- writing (§4.1) ------------------------------------------------------------------

  document(item, now) {
    const delay = nonNegative('delay', pick(item.delay, 0));
    const expire = nonNegative('expire', pick(item.expire, null), { allowNull: true });
    const priority = integer('priority', pick(item.priority, 0), -MAX_PRIORITY, MAX_PRIORITY);
    const routingKey = optionalKey('routingKey', item.routingKey);
    const activity = optionalKey('activity', item.activity);
    const dedupeKey = optionalKey('dedupeKey', item.dedupeKey);
    const id = new ObjectId();
    const document = {
      _id: id,
      body: checkedBody(item.body, this.maxBodyBytes, BSON.calculateObjectSize),
      queue: this.name,
      routing_key: routingKey,
      priority,
      state: PENDING,
      created_at: now,
      updated_at: now,
      attempts: 0,
      visible_at: new Date(now.getTime() + delay * 1000),
      expire_at: expire === null ? NEVER : new Date(now.getTime() + expire * 1000),
    };
    if (activity !== null) document.activity = activity;
    if (dedupeKey !== null) {
      document.dedupe_key = dedupeKey;
      document.dedupe = `${this.name}\x00${dedupeKey}`;
    }
    // The "written" event in its outbox, in the same insert as the message (§5.3).
    const written = messageEvent('written', document, now, null, { delayed: delay > 0 });
    document.outbox = [written];
    return document;
  }

  // Insert one; for a dedupe key an unfinished message already holds, its id instead.
  async insertOne(document) {
    for (;;) {
      try {
        await this.messages.insertOne(document);
        break;
      } catch (error) {
        if (!(error instanceof MongoServerError) || error.code !== DUPLICATE_KEY) throw error;
        if (await this.messages.findOne({ _id: document._id }, { projection: { _id: 1 } })) break;
        if (document.dedupe === undefined) throw error;
        const existing = await this.messages.findOne({ dedupe: document.dedupe }, { projection: { _id: 1 } });
        if (existing) return { id: existing._id, inserted: false };
        // The holder finished between our insert and our look: write anew.
      }
    }
    return { id: document._id, inserted: true };
  }

  published(documents) {
    for (const document of documents) {
      this.publisher.addOutbox({ messageId: document._id, state: PENDING, events: document.outbox });
    }
    if (documents.some((document) => document.visible_at <= document.created_at)) {
      this.client.ring(this.name);
    }
  }

  // Write one message; return its id (the first one's, for a dedupe key already waiting).
  async write(body, { routingKey, expire, delay, priority, dedupeKey, activity } = {}) {
    const document = this.document({ body, routingKey, expire, delay, priority, dedupeKey, activity }, new Date());
    const { id, inserted } = await this.insertOne(document);
    if (inserted) this.published([document]);
    return id;
  }

  // Write many in one round trip; each item is a body or an Envelope; return the ids in order.
  async writeMany(items, defaults = {}) {
    const now = new Date();
    const documents = [...items].map((item) => {
      const own = item instanceof Envelope ? item : { body: item };
      const merged = { body: own.body };
      for (const key of ['routingKey', 'expire', 'delay', 'priority', 'activity']) {
        merged[key] = pick(own[key], defaults[key]);
      }
      merged.dedupeKey = own.dedupeKey;
      return this.document(merged, now);
    });
    if (!documents.length) return [];
    const ids = documents.map((document) => document._id);
    let inserted = documents;
    try {
      await this.messages.insertMany(documents, { ordered: false });
    } catch (error) {
      const duplicates = new Set(duplicatesOnly(error));
      inserted = documents.filter((_, index) => !duplicates.has(index));
      for (const index of [...duplicates].sort((a, b) => a - b)) {
        const { id, inserted: fresh } = await this.insertOne(documents[index]);
        ids[index] = id;
        if (fresh) inserted.push(documents[index]);
      }
    }
    this.published(inserted);
    return ids;
  }

  // -- claiming (§4.2, §4.3) -----------------------------------------------------------

  candidateFilter(routingKey, now) {
    const filter = { queue: this.name, state: { $in: [PENDING, INFLIGHT] }, visible_at: { $lte: now } };
    if (routingKey !== null) filter.routing_key = routingKey;
    return filter;
  }

  async candidates(routingKey, size) {
    return this.messages.find(this.candidateFilter(routingKey, new Date()), { projection: CANDIDATE_FIELDS })
      .sort(CLAIM_ORDER).limit(size).toArray();
  }

  // Claim up to `limit` visible messages, each hidden for `visibilityTimeout` seconds.
  async read({ routingKey = null, visibilityTimeout = 30, limit = 1 } = {}) {
    routingKey = optionalKey('routingKey', routingKey);
    const timeout = nonNegative('visibilityTimeout', visibilityTimeout);
    if (timeout === 0 || timeout > MAX_VISIBILITY_TIMEOUT) {
      throw new InvalidInput(`visibilityTimeout must be more than 0 and at most ${MAX_VISIBILITY_TIMEOUT} seconds.`);
    }
    integer('limit', limit, 1, MAX_LIMIT);
    const claimed = [];
    // Unless the last look found the queue empty (an idle look then costs one candidate read,
    // not a claim that finds nothing and a read), the engine picks each message.
    while (!this.foundNone.get(routingKey) && claimed.length < limit) {
      const message = await this.claimFirst(routingKey, timeout);
      if (!message) break;
      claimed.push(message);
    }
    // Candidates: what is left, expired leases, and what is due to expire.
    for (let round = 0; round < CLAIM_ROUNDS && claimed.length < limit; round += 1) {
      let candidates = await this.candidates(routingKey, Math.max(16, (limit - claimed.length) * 4));
      if (round === 0) this.foundNone.set(routingKey, !claimed.length && !candidates.length);
      let lost = false;
      while (candidates.length && claimed.length < limit) {
        const message = await this.claim(candidates.shift(), timeout);
        if (message) {
          claimed.push(message);
        } else if (!lost) {
          lost = true; // another consumer is here too: stop walking in its footsteps
          candidates = shuffledWithinPriority(candidates);
        }
      }
      if (!lost) break; // every candidate there was is taken, or the limit is reached
    }
    return claimed;
  }

  // The first pending message in claim order, in one sorted findOneAndUpdate (§4.3, "The first
  // in order"): consumers in other processes never lose a race for it. Null when none is pending.
  // Its claimed event is named by a fresh ObjectId (§5.2): the message's id is not known before.
  async claimFirst(routingKey, timeout) {
    const now = new Date();
    const filter = { ...this.candidateFilter(routingKey, now), state: PENDING, expire_at: { $gt: now } };
    const entry = { id: eventId('claimed', new ObjectId().toHexString()), kind: 'claimed', at: now, worker: this.worker };
    const document = await this.messages.findOneAndUpdate(filter, this.leaseUpdate(newToken(), timeout, now, [entry]),
      { sort: CLAIM_ORDER, returnDocument: 'after' });
    if (!document) return null;
    const event = { ...messageEvent('claimed', document, now, null, { worker: this.worker }), id: entry.id };
    this.publisher.addOutbox({ messageId: document._id, state: INFLIGHT, events: [event] });
    return new Message(this, document);
  }

  // The update of a claim under `token`, pushing `events` (§4.3).
  leaseUpdate(token, timeout, now, events) {
    return {
      $set: { state: INFLIGHT, lease_token: token, leased_by: this.worker, claimed_at: now, updated_at: now,
        visibility_timeout: new Double(timeout), visible_at: new Date(now.getTime() + timeout * 1000) },
      $inc: { attempts: 1 },
      $push: { outbox: { $each: events } },
    };
  }

  // One compare-and-set on the candidate as it was read: null if another consumer won.
  async claim(candidate, timeout) {
    const now = new Date();
    if (candidate.state === PENDING && (candidate.expire_at ?? NEVER) <= now) {
      await this.expire(candidate, now);
      return null;
    }
    const token = newToken();
    const filter = { _id: candidate._id, queue: this.name, state: candidate.state, visible_at: { $lte: now } };
    const events = [];
    if (candidate.state === INFLIGHT) {
      filter.lease_token = candidate.lease_token ?? null;
      events.push(messageEvent('reclaimed', candidate, now, candidate.lease_token ?? null,
        { reason: 'lease expired' }));
    } else {
      filter.expire_at = { $gt: now };
    }
    events.push(messageEvent('claimed', candidate, now, token, { worker: this.worker }));
    const document = await this.messages.findOneAndUpdate(filter, this.leaseUpdate(token, timeout, now, events),
      { returnDocument: 'after' });
    if (!document) return null;
    this.publisher.addOutbox({ messageId: document._id, state: INFLIGHT, events });
    return new Message(this, document);
  }

  // A pending message past its expiry becomes expired (§4.9); true if this call did it.
  async expire(candidate, now) {
    const event = messageEvent('expired', candidate, now);
    const document = await this.messages.findOneAndUpdate(
      { _id: candidate._id, queue: this.name, state: PENDING, expire_at: { $lte: now } },
      { $set: { state: EXPIRED, updated_at: now }, $unset: { dedupe: '' }, $push: { outbox: event } },
      { projection: { state: 1 }, returnDocument: 'after' },
    );
    if (!document) return false;
    this.publisher.addOutbox({ messageId: document._id, state: EXPIRED, events: [event] });
    return true;
  }

  // -- looking -------------------------------------------------------------------------

  async get(id) {
    return this.messages.findOne({ _id: new ObjectId(String(id)), queue: this.name });
  }

  async count(state = null) {
    const states = state ? [state] : [PENDING, INFLIGHT, 'dead'];
    return this.messages.countDocuments({ queue: this.name, state: { $in: states } });
  }
}
