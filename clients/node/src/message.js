// A claimed message and what its holder may do with it (§4.4-§4.6).
//
// Every method is one findOneAndUpdate whose filter is the lease: the message id, state
// "inflight", the lease token this claim handed out, and a lease deadline still ahead
// (visible_at > now). If the lease ran out (whether or not anyone claimed the message
// since) or the message was already acknowledged or failed, nothing matches, nothing
// changes, and LeaseLost says so.

import { BSON } from 'mongodb';
import { acknowledgeStep } from './activity.js';
import {
  DEAD, DONE, ERRORS_KEPT, INFLIGHT, InvalidInput, LOG_LINES_KEPT, LeaseLost, MAX_ERROR_CHARS,
  MAX_EVENT_ERROR_CHARS, MAX_LOG_LINE_CHARS, MAX_RESULT_BYTES, MAX_TRACEBACK_CHARS, PENDING,
  messageEvent, nonNegative, seconds,
} from './format.js';

export function checkedResult(result) {
  if (result === undefined || result === null) return null;
  let size;
  try {
    size = BSON.calculateObjectSize({ result });
  } catch (error) {
    throw new InvalidInput(`a result must be JSON-like: ${error.message}`);
  }
  if (size > MAX_RESULT_BYTES) {
    throw new InvalidInput(`a result is ${size} bytes encoded; at most ${MAX_RESULT_BYTES} are kept.`);
  }
  return result;
}

export class Message {
  constructor(queue, document) {
    this.queue = queue;
    this.document = document;
    this.id = document._id;
    this.body = document.body;
    this.routingKey = document.routing_key ?? null;
    this.attempts = document.attempts;
    this.priority = document.priority ?? 0;
    this.activity = document.activity ?? null;
    this.leaseToken = document.lease_token;
    this.claimedAt = document.claimed_at;
    this.visibilityTimeout = Number(document.visibility_timeout);
    this.leaseExpiresAt = document.visible_at;
    this.result = null;
  }

  toString() {
    return `Message(${this.id}, queue=${this.queue.name}, attempts=${this.attempts})`;
  }

  held() {
    return { _id: this.id, state: INFLIGHT, lease_token: this.leaseToken, visible_at: { $gt: new Date() } };
  }

  event(kind, now, extra = {}) {
    const snapshot = { _id: this.id, queue: this.queue.name, routing_key: this.routingKey, activity: this.activity };
    return messageEvent(kind, snapshot, now, this.leaseToken, extra);
  }

  // Apply `update` if the lease is still ours (and `where` holds); `events` go into the
  // outbox in the same update.
  async transition(update, what, events = [], where = {}) {
    if (events.length) {
      update.$push = { ...(update.$push ?? {}), outbox: { $each: events } };
    }
    const document = await this.queue.messages.findOneAndUpdate({ ...this.held(), ...where }, update, {
      projection: { state: 1, visible_at: 1 }, returnDocument: 'after',
    });
    if (!document) {
      throw new LeaseLost(
        `Cannot ${what} message ${this.id} of queue ${JSON.stringify(this.queue.name)}: its lease `
        + `(token ${this.leaseToken}) is no longer held. It expired, or the message was already `
        + 'acknowledged or failed. Nothing was changed.',
      );
    }
    if (events.length) this.queue.publisher.addOutbox({ messageId: this.id, state: document.state, events });
    return document;
  }

  // Acknowledge: the work is done (§4.5). `result` (JSON-like, at most 64 KiB) goes to history.
  async delete(result = this.result) {
    const kept = checkedResult(result);
    if (this.document.sequence) return acknowledgeStep(this, kept); // an activity's step (§15.3)
    const now = new Date();
    const finished = { state: DONE, updated_at: now, done_at: now, acked_lease: this.leaseToken };
    if (kept !== null) finished.result = kept;
    const duration = seconds((now - this.claimedAt) / 1000);
    await this.transition(
      { $set: finished, $unset: { lease_token: '', dedupe: '' } },
      'acknowledge',
      [this.event('acked', now, { duration, attempts: this.attempts })],
    );
  }

  ack(result) {
    return this.delete(result);
  }

  // A failed attempt (§4.6): back to pending after the queue's backoff, or dead once
  // attempts reach the queue's maxAttempts. Returns the new state.
  async fail(reason = 'failed', traceback = null) {
    if (reason instanceof Error) {
      traceback = traceback ?? reason.stack ?? null;
      reason = `${reason.name}: ${reason.message}`;
    }
    if (typeof reason !== 'string') throw new InvalidInput('fail() takes a reason string or an Error.');
    reason = reason.slice(0, MAX_ERROR_CHARS);
    traceback = traceback ? String(traceback).slice(-MAX_TRACEBACK_CHARS) : null;
    const now = new Date();
    const dead = this.attempts >= this.queue.maxAttempts;
    const error = { attempt: this.attempts, at: now, error: reason, traceback,
      worker: this.document.leased_by ?? null };
    const events = [this.event('failed', now, { error: reason.slice(0, MAX_EVENT_ERROR_CHARS),
      attempts: this.attempts, duration: seconds((now - this.claimedAt) / 1000) })];
    const update = {
      $set: { updated_at: now, last_error: reason, traceback },
      $unset: { lease_token: '' },
      $push: { errors: { $each: [error], $slice: -ERRORS_KEPT } },
    };
    if (dead) {
      Object.assign(update.$set, { state: DEAD, dead_at: now });
      events.push(this.event('dead', now, { error: reason.slice(0, MAX_EVENT_ERROR_CHARS) }));
    } else {
      const delay = Number(this.queue.backoff(this.attempts));
      Object.assign(update.$set, { state: PENDING, visible_at: new Date(now.getTime() + delay * 1000) });
    }
    const document = await this.transition(update, 'fail', events);
    return document.state;
  }

  // Hold the lease `s` seconds from now (default: the visibility timeout) (§4.4).
  async extend(s = null) {
    const span = nonNegative('seconds', s, { allowNull: true }) ?? this.visibilityTimeout;
    const now = new Date();
    const deadline = new Date(now.getTime() + span * 1000);
    await this.transition({ $set: { visible_at: deadline, updated_at: now } }, 'extend');
    this.leaseExpiresAt = deadline;
    return deadline;
  }

  // Report progress (0..1) and renew the lease for at least the visibility timeout.
  async progress(fraction, note = null) {
    if (typeof fraction !== 'number' || !(fraction >= 0 && fraction <= 1)) {
      throw new InvalidInput('progress fraction must be a number from 0 to 1.');
    }
    if (note !== null && typeof note !== 'string') throw new InvalidInput('progress note must be a string.');
    const now = new Date();
    const document = await this.transition({
      $set: { progress: { fraction: seconds(fraction), note, at: now }, updated_at: now },
      $max: { visible_at: new Date(now.getTime() + this.visibilityTimeout * 1000) },
    }, 'report progress on');
    this.leaseExpiresAt = document.visible_at;
  }

  // Append a line to the message's log (the last 100 are kept).
  async log(line) {
    if (typeof line !== 'string') throw new InvalidInput('log() takes a string.');
    const entry = { at: new Date(), line: line.slice(0, MAX_LOG_LINE_CHARS) };
    await this.transition({ $push: { log: { $each: [entry], $slice: -LOG_LINES_KEPT } } }, 'log on');
  }
}
