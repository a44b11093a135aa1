// Activity steps (docs/FORMAT.md §15): acknowledging a step moves its instance on.
//
// An activity instance is one message that moves from step queue to step queue. A Node
// worker that claims it from a step's queue serves that step like any message, but its
// acknowledgement is the move of §15.3: the one findOneAndUpdate that records the step
// done (filtered on the lease *and* the position the holder was given) is the one that
// makes the next step claimable, so a step can be neither skipped nor recorded twice.
// What follows a move outside any lease (writing a fan-out's children, counting them,
// starting compensation after a dead step) is left to the sweep of a Python collector's
// monitor (§15.4, §15.5); fan-out children themselves are plain messages (§4.5).

import { ObjectId } from 'mongodb';
import { DONE, InvalidInput, PENDING, messageEvent, seconds } from './format.js';

export const WAITING = 'waiting';
const FORWARD = 'forward';
const LEFT_BEHIND = { lease_token: '', progress: '', last_error: '', traceback: '', errors: '', dead_at: '' };

function snapshot(document, queue) {
  return { _id: document._id, queue, routing_key: document.routing_key ?? null, activity: document.activity ?? null };
}

function finished(document, outcome, now) {
  return { set: { state: DONE, done_at: now, updated_at: now, 'sequence.phase': 'finished',
    'sequence.outcome': outcome, 'sequence.finished_at': now },
  unset: { ...LEFT_BEHIND, dedupe: '' }, events: [], state: DONE };
}

// ENTER(index, previous) of §15.3: the next step, a fan-out's wait, or the end.
export function entering(document, index, previous, now) {
  const { sequence } = document;
  const { steps } = sequence;
  if (index >= steps.length) {
    const end = finished(document, 'completed', now);
    end.set['sequence.at'] = steps.length;
    if (previous !== null && previous !== undefined) end.set.result = previous;
    return end;
  }
  const step = steps[index];
  const prefix = `sequence.steps.${index}`;
  if (step.fan_out) {
    if (!Array.isArray(previous)) {
      throw new InvalidInput(`step ${step.name} fans out over the result of the step before it, `
        + 'which must be an array (one child per item).');
    }
    if (!previous.length) {
      const empty = { results: [], dead: [] };
      const later = entering(document, index + 1, empty, now);
      Object.assign(later.set, { [`${prefix}.started_at`]: now, [`${prefix}.done_at`]: now,
        [`${prefix}.result`]: empty, [`${prefix}.children`]: { total: 0, dead: 0 } });
      return later;
    }
    const ids = previous.map(() => new ObjectId());
    return { set: { state: WAITING, queue: step.queue, updated_at: now, 'sequence.at': index,
      'sequence.children': { ids, total: ids.length, finished: 0, counted: [], results: {}, dead: [],
        spawned: false, since: now },
      [`${prefix}.started_at`]: now },
    unset: { ...LEFT_BEHIND }, events: [], state: WAITING };
  }
  const written = messageEvent('written', snapshot(document, step.queue), now, `s${index}`, { delayed: false });
  return { set: { state: PENDING, queue: step.queue, visible_at: now, updated_at: now, attempts: 0,
    body: { key: sequence.key, input: sequence.input, previous }, 'sequence.at': index,
    [`${prefix}.started_at`]: now },
  unset: { ...LEFT_BEHIND }, events: [written], state: PENDING };
}

// UNDO(below) of §15.5: the compensation of the last compensable step before `below`, or the end.
export function compensating(document, below, now) {
  const { sequence } = document;
  let index = below - 1;
  while (index >= 0 && !sequence.steps[index].compensation) index -= 1;
  if (index < 0) return finished(document, 'compensated', now);
  const queue = sequence.steps[index].compensation;
  const failed = sequence.steps[sequence.failed_step] ?? {};
  const written = messageEvent('written', snapshot(document, queue), now, `c${index}`, { delayed: false });
  return { set: { state: PENDING, queue, visible_at: now, updated_at: now, attempts: 0,
    body: { key: sequence.key, input: sequence.input, result: sequence.steps[index].result ?? null,
      failed_step: failed.name ?? null, error: failed.error ?? null },
    'sequence.phase': 'compensating', 'sequence.at': index,
    [`sequence.steps.${index}.compensation_started_at`]: now },
  unset: { ...LEFT_BEHIND }, events: [written], state: PENDING };
}

// Acknowledge the held step (or compensation) of `message` with `result`: the move of §15.3.
export async function acknowledgeStep(message, result) {
  const { document } = message;
  const { at: index, phase } = document.sequence;
  const now = new Date();
  const prefix = `sequence.steps.${index}`;
  let recorded;
  let move;
  if (phase === FORWARD) {
    recorded = { [`${prefix}.result`]: result, [`${prefix}.done_at`]: now,
      [`${prefix}.attempts`]: message.attempts, [`${prefix}.acked_lease`]: message.leaseToken,
      [`${prefix}.worker`]: document.leased_by ?? null };
    if (document.errors?.length) recorded[`${prefix}.errors`] = document.errors;
    move = entering(document, index + 1, result, now);
  } else {
    recorded = { [`${prefix}.compensation_result`]: result, [`${prefix}.compensated_at`]: now,
      [`${prefix}.compensation_attempts`]: message.attempts };
    move = compensating(document, index, now);
  }
  recorded.acked_lease = message.leaseToken;
  const unset = { ...move.unset };
  for (const path of Object.keys(move.set)) delete unset[path];
  const acked = message.event('acked', now, { duration: seconds((now - message.claimedAt) / 1000),
    attempts: message.attempts });
  await message.transition(
    { $set: { ...recorded, ...move.set }, $unset: unset, $push: { 'sequence.leases': message.leaseToken } },
    'acknowledge', [acked, ...move.events], { 'sequence.phase': phase, 'sequence.at': index },
  );
}
