// A Worker: run a handler over messages of one or more queues, with heartbeats (§7).
//
// Each of `concurrency` loops claims one message at a time (round-robin over the
// queues), awaits handler(message), acknowledges it if the handler returns (its value
// is the result kept in history) and records a failed attempt if it throws. The worker
// names itself ip:port:start_time:pid and claims under that name (leased_by), and
// rewrites its heartbeat document every heartbeatInterval seconds, so the monitor can
// tell alive, stale, dead and zombie workers apart and give back a dead one's messages.
//
// Idle, one loop looks every pollInterval seconds and the others wait until it finds
// something; with rings (the default, unless MOPQ_RINGS=0) every loop also wakes when a
// writer rings its doorbell (its identity's port). So an idle worker sends about one
// claim attempt per queue and pollInterval, whatever its concurrency.
//
// Control (§7.4): each beat is one findOneAndUpdate that returns the `control` an admin
// set on the worker's document; the worker honours it at once: stop is a graceful stop,
// quiet stops claiming (beats go on, state "quiet") until resume.

import { readFileSync } from 'node:fs';
import os from 'node:os';
import { Double } from 'mongodb';
import { Doorbell, LocalBell, ringsEnabled } from './doorbell.js';
import { InvalidInput, LeaseLost, WORKERS, queueName, sleep } from './format.js';
import { checkedResult } from './message.js';
import { MAX_VISIBILITY_TIMEOUT } from './queue.js';

export const RUNNING = 'running';
export const QUIET = 'quiet';
export const STOPPING = 'stopping';
export const STOPPED = 'stopped';
// What an admin may ask in the worker document's control.command (§7.4).
const COMMANDS = ['stop', 'quiet', 'resume'];
const FIRST_ERROR_WAIT_MS = 500;
const MAX_ERROR_WAIT_MS = 10000;
const SIBLING_WAIT_MS = 30000;
const MAX_SETTLE_RETRY_WAIT_MS = 2000;
const CLOCK_TICKS = 100;

// The first non-internal IPv4 address of this host's interfaces (not link-local if
// another exists), else 127.0.0.1.
export function hostIp() {
  let fallback = null;
  for (const addresses of Object.values(os.networkInterfaces())) {
    for (const address of addresses ?? []) {
      if (address.family !== 'IPv4' && address.family !== 4) continue;
      if (address.internal || address.address.startsWith('127.') || address.address === '0.0.0.0') continue;
      if (!address.address.startsWith('169.254.')) return address.address;
      fallback = fallback ?? address.address;
    }
  }
  return fallback ?? '127.0.0.1';
}

// This process's start time in whole epoch seconds, as the monitor reads it (psutil's
// create_time: boot time + the process's start in clock ticks, from /proc).
export function processStartTime() {
  const estimate = Math.floor(Date.now() / 1000 - process.uptime());
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[19]);
    const boot = Number(/^btime (\d+)$/m.exec(readFileSync('/proc/stat', 'utf8'))[1]);
    const exact = Math.floor(boot + ticks / CLOCK_TICKS);
    if (Number.isFinite(exact) && Math.abs(exact - estimate) <= 5) return exact;
  } catch { /* not Linux: the estimate is within a second of the truth */ }
  return estimate;
}

function positiveSeconds(what, value, maximum = null) {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || (maximum !== null && value > maximum)) {
    throw new InvalidInput(`${what} must be more than 0${maximum !== null ? ` and at most ${maximum}` : ''} seconds.`);
  }
  return value;
}

export class Worker {
  constructor(client, queues, handler, {
    concurrency = 1, visibilityTimeout = 30, heartbeatInterval = 5, routingKey = null, maxAttempts = 5,
    backoff = null, pollInterval = 1, port = null, rings = ringsEnabled(), handleSignals = true,
    log = client.log ?? console,
  } = {}) {
    const names = [...new Set((typeof queues === 'string' ? [queues] : [...queues]).map(queueName))];
    if (!names.length) throw new InvalidInput('A worker needs at least one queue name.');
    if (typeof handler !== 'function') throw new InvalidInput('handler must be a function taking a Message.');
    this.client = client;
    this.names = names;
    this.handler = handler;
    this.concurrency = concurrency;
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 1000) {
      throw new InvalidInput('concurrency must be a whole number from 1 to 1000.');
    }
    this.visibilityTimeout = positiveSeconds('visibilityTimeout', visibilityTimeout, MAX_VISIBILITY_TIMEOUT);
    this.heartbeatMs = positiveSeconds('heartbeatInterval', heartbeatInterval) * 1000;
    this.pollMs = positiveSeconds('pollInterval', pollInterval) * 1000;
    this.routingKey = routingKey;
    this.queueOptions = { maxAttempts, backoff };
    this.port = port;
    this.rings = rings;
    this.handleSignals = handleSignals;
    this.log = log;
    this.pid = process.pid;
    this.ip = hostIp();
    this.hostname = os.hostname();
    this.startTime = processStartTime();
    this.identity = null;
    this.queues = [];
    this.doorbell = null;
    this.bell = new LocalBell();
    this.processed = 0;
    this.failed = 0;
    this.current = new Map();
    this.startedAt = null;
    this.stopping = false;
    this.quiet = false;
    this.finished = false;
    this.lookout = false;
    this.wakers = new Set();
    this.signalHandlers = [];
    this.beatFailing = false;
    this.beating = Promise.resolve();
  }

  identityOf(port) {
    return `${this.ip}:${port}:${this.startTime}:${this.pid}`;
  }

  // -- the heartbeat (§7) ----------------------------------------------------------------

  document(state, now) {
    return {
      ip: this.ip, port: this.port, pid: this.pid, hostname: this.hostname,
      started_at: this.startedAt, heartbeat_at: now,
      queues: this.names, routing_key: this.routingKey, concurrency: this.concurrency,
      visibility_timeout: new Double(this.visibilityTimeout), state,
      current: [...this.current.values()], processed: this.processed, failed: this.failed,
      stopped_at: state === STOPPED ? now : null,
    };
  }

  beat(state = this.stopping ? STOPPING : (this.quiet ? QUIET : RUNNING)) {
    if (!this.identity) return this.beating;
    // One write at a time, in order: a late "running" never overwrites "stopped".
    this.beating = this.beating.then(async () => {
      if (this.finished) return;
      let written;
      try {
        written = await this.client.db.collection(WORKERS).findOneAndUpdate(
          { _id: this.identity }, { $set: this.document(state, new Date()) },
          { upsert: true, returnDocument: 'after', projection: { control: 1 } });
        if (state === STOPPED) this.finished = true;
        if (this.beatFailing) this.log.info?.(`mopq worker ${this.identity}: heartbeat written again`);
        this.beatFailing = false;
      } catch (error) {
        if (!this.beatFailing) this.log.warn?.(`mopq worker ${this.identity}: cannot write its heartbeat (${error.message})`);
        this.beatFailing = true;
        return;
      }
      this.obey(written?.control);
    });
    return this.beating;
  }

  // Do what an admin asked (control.command, §7.4), once per change.
  obey(control) {
    if (this.stopping || !control || typeof control !== 'object') return;
    const command = COMMANDS.includes(control.command) ? control.command : null;
    const who = control.by?.name ?? 'someone';
    if (command === 'stop') {
      this.log.info?.(`mopq worker ${this.identity}: asked by ${who} to stop; finishing current messages, then stopping`);
      this.requestStop();
    } else if (command === 'quiet' && !this.quiet) {
      this.log.info?.(`mopq worker ${this.identity}: asked by ${who} to go quiet; taking no new messages until resumed`);
      this.quiet = true;
      this.beat(); // report "quiet" now rather than at the next beat
    } else if (command !== 'quiet' && this.quiet) {
      this.log.info?.(`mopq worker ${this.identity}: asked by ${who} to resume; taking messages again`);
      this.quiet = false;
      this.beat();
      for (const wake of [...this.wakers]) wake();
    }
  }

  // -- running ---------------------------------------------------------------------------

  // Register, start beating and start the loops; resolves once the first beat is written.
  async start() {
    if (this.startedAt) throw new Error('A Worker runs once; create a new Worker to run again.');
    this.startedAt = new Date();
    if (this.rings) {
      this.doorbell = await Doorbell.open(this.client.db, (port) => this.identityOf(port),
        { port: this.port ?? 0, ip: this.ip });
      this.port = this.doorbell.port;
      this.bell = this.doorbell;
      this.client.doorbell = this.doorbell;
    } else {
      this.port = this.port ?? 0;
    }
    this.identity = this.identityOf(this.port);
    this.queues = this.names.map((name) => this.client.queue(name, { ...this.queueOptions, worker: this.identity }));
    await this.beat(RUNNING);
    this.heartbeat = setInterval(() => { this.beat(); }, this.heartbeatMs);
    if (this.handleSignals) {
      for (const signal of ['SIGTERM', 'SIGINT']) {
        const handler = () => this.onSignal(signal);
        process.on(signal, handler);
        this.signalHandlers.push([signal, handler]);
      }
    }
    const loops = Array.from({ length: this.concurrency }, (_, index) => this.loop(index));
    this.done = Promise.all(loops).then(() => this.finish());
    this.log.info?.(`mopq worker ${this.identity}: consuming ${this.names.join(', ')} with ${this.concurrency} loop(s)`);
    return this;
  }

  // Work until stopped (SIGTERM/SIGINT, or stop()).
  async run() {
    await this.start();
    await this.done;
  }

  // Stop claiming, let running handlers finish, record "stopped".
  async stop() {
    this.requestStop();
    if (this.done) await this.done;
  }

  requestStop() {
    if (this.stopping) return;
    this.stopping = true;
    this.beat();
    this.bell.ringLocally(this.names);
    for (const wake of [...this.wakers]) wake();
  }

  onSignal(signal) {
    if (this.stopping) {
      this.log.warn?.(`mopq worker ${this.identity}: second ${signal} while stopping; exiting now`);
      process.exit(128 + os.constants.signals[signal]);
    }
    this.log.info?.(`mopq worker ${this.identity}: ${signal} received; finishing current messages, then stopping`);
    this.requestStop();
  }

  async finish() {
    clearInterval(this.heartbeat);
    await this.beat(STOPPED);
    for (const [signal, handler] of this.signalHandlers) process.off(signal, handler);
    if (this.client.doorbell === this.doorbell) this.client.doorbell = null;
    await this.bell.close();
    this.log.info?.(`mopq worker ${this.identity}: stopped (${this.processed} processed, ${this.failed} failed)`);
  }

  // Sleep `ms`, or less if the worker is asked to stop.
  pause(ms) {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.wakers.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.wakers.add(wake);
    });
  }

  async loop(index) {
    let turn = index % this.queues.length;
    let errorMs = 0;
    let rang = false;
    while (!this.stopping) {
      if (this.quiet) { // take nothing until resumed (or stopped): both wake this pause
        await this.pause(SIBLING_WAIT_MS);
        continue;
      }
      const seen = this.bell.rings(this.names);
      let message;
      try {
        [message, turn] = await this.claim(turn);
      } catch (error) {
        errorMs = Math.min(MAX_ERROR_WAIT_MS, Math.max(FIRST_ERROR_WAIT_MS, errorMs * 2));
        this.log.warn?.(`mopq worker ${this.identity}: cannot claim (${error.message}); retrying in ${errorMs} ms`);
        await this.pause(errorMs);
        continue;
      }
      errorMs = 0;
      if (message) {
        rang = false; // the ring led to a claim: the next empty look is no wasted ring
        if (this.concurrency > 1) this.bell.ringLocally(this.names); // more may wait: wake a sibling
        await this.handle(index, message);
        continue;
      }
      if (rang) for (const name of this.names) this.bell.foundNothing(name);
      rang = await this.waitForRing(seen);
    }
  }

  // One idle loop at a time looks every pollInterval; the others wait for a ring.
  async waitForRing(seen) {
    if (!this.lookout) {
      this.lookout = true;
      try {
        return await this.bell.wait(this.names, seen, this.pollMs);
      } finally {
        this.lookout = false;
      }
    }
    return this.bell.wait(this.names, seen, SIBLING_WAIT_MS);
  }

  async claim(turn) {
    const count = this.queues.length;
    for (let step = 0; step < count; step += 1) {
      const position = (turn + step) % count;
      const [message] = await this.queues[position].read({ routingKey: this.routingKey,
        visibilityTimeout: this.visibilityTimeout, limit: 1 });
      if (message) return [message, (position + 1) % count];
    }
    return [null, turn];
  }

  async handle(index, message) {
    this.current.set(index, { message_id: message.id.toHexString(), queue: message.queue.name, since: new Date() });
    try {
      let returned;
      let failure = null;
      try {
        returned = await this.handler(message);
      } catch (error) {
        failure = error instanceof Error ? error : new Error(String(error));
        this.log.warn?.(`mopq worker ${this.identity}: handler failed on ${message}: ${failure.message}`);
      }
      if (failure) {
        if (await this.settle(message, failure)) this.failed += 1;
      } else {
        try {
          message.result = checkedResult(returned);
        } catch (problem) {
          this.log.warn?.(`mopq worker ${this.identity}: the result of ${message} is not kept: ${problem.message}`);
          message.result = null;
        }
        if (await this.settle(message, null)) this.processed += 1;
      }
    } finally {
      this.current.delete(index);
    }
  }

  // Acknowledge (failure null) or fail; true if recorded. A lost lease is a warning;
  // an engine that does not answer is retried until the lease would end anyway.
  async settle(message, failure) {
    const what = failure ? 'fail' : 'acknowledge';
    const deadline = Date.now() + Math.max(1000, message.leaseExpiresAt - Date.now());
    let waitMs = 200;
    for (;;) {
      try {
        if (failure) await message.fail(failure);
        else await message.delete(message.result);
        return true;
      } catch (error) {
        if (error instanceof LeaseLost) {
          this.log.warn?.(`mopq worker ${this.identity}: ${error.message}`);
          return false;
        }
        if (error instanceof InvalidInput || Date.now() + waitMs >= deadline) {
          this.log.warn?.(`mopq worker ${this.identity}: could not ${what} ${message} (${error.message}); `
            + 'it will be delivered again when its lease expires');
          return false;
        }
        await sleep(waitMs);
        waitMs = Math.min(waitMs * 2, MAX_SETTLE_RETRY_WAIT_MS);
      }
    }
  }
}
