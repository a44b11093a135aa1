// Doorbells and rings (§11): optional for a client, and never needed for correctness.
//
// A consumer that waits listens on a UDP port and registers it in `doorbells`; a
// writer sends "<database>\0<queue>" to each live doorbell of the queue it wrote to.
// A ring only says "look now": the consumer claims by compare-and-set as always, so a
// lost, late, repeated or forged ring costs a query, never a message.

import dgram from 'node:dgram';
import { DOORBELLS } from './format.js';

export const RENEW_MS = 5000;
export const EXPIRE_MS = 15000;
export const TARGETS_MAX_AGE_MS = 1000;
export const MAX_EMPTY_RINGS_PER_SECOND = 50;

export function ringsEnabled() {
  const raw = (process.env.MOPQ_RINGS ?? '1').trim().toLowerCase();
  return !['0', 'false', 'no'].includes(raw);
}

// The waiting half without a socket: the loops of one process wake each other (a stop,
// a claim that may leave more behind). A Worker without rings uses this alone.
export class LocalBell {
  constructor() {
    this.rung = new Map(); // queue -> rings so far
    this.empty = new Map(); // queue -> [second, rings that found nothing]
    this.waiters = new Set();
    this.closed = false;
  }

  flooded(queue) {
    const [second, count] = this.empty.get(queue) ?? [0, 0];
    return second === Math.floor(Date.now() / 1000) && count >= MAX_EMPTY_RINGS_PER_SECOND;
  }

  // A ring led to no claim: count it against the flood limit.
  foundNothing(queue) {
    const now = Math.floor(Date.now() / 1000);
    const [second, count] = this.empty.get(queue) ?? [now, 0];
    this.empty.set(queue, [now, second === now ? count + 1 : 1]);
  }

  // A number that grows with every ring of these queues (compare before and after).
  rings(queues) {
    return queues.reduce((sum, queue) => sum + (this.rung.get(queue) ?? 0), 0);
  }

  ringLocally(queues) {
    for (const queue of queues) this.rung.set(queue, (this.rung.get(queue) ?? 0) + 1);
    for (const waiter of [...this.waiters]) waiter();
  }

  async listen() {}

  // Wait until one of `queues` rings after `seen` (see rings()), or `timeoutMs` passes.
  async wait(queues, seen, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      await this.listen(queues);
      if (this.rings(queues) !== seen) return true;
      const remaining = deadline - Date.now();
      if (remaining <= 0 || this.closed) return false;
      await new Promise((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.waiters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, Math.min(remaining, RENEW_MS));
        this.waiters.add(done);
      });
      if (this.rings(queues) !== seen) return true;
    }
  }

  async close() {
    this.closed = true;
    this.ringLocally([]);
  }
}

// A UDP socket writers can ring, registered in `doorbells` while the process waits.
export class Doorbell extends LocalBell {
  // `identity(port)` names this process once the port is known (ip:port:start_time:pid).
  static async open(db, identity, { port = 0, ip } = {}) {
    const socket = dgram.createSocket('udp4');
    await new Promise((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(port, '0.0.0.0', () => {
        socket.off('error', reject);
        resolve();
      });
    });
    socket.unref();
    const bound = socket.address().port;
    return new Doorbell(db, socket, bound, ip, identity(bound));
  }

  constructor(db, socket, port, ip, identity) {
    super();
    this.db = db;
    this.socket = socket;
    this.port = port;
    this.ip = ip;
    this.identity = identity;
    this.registered = '';
    this.renewedAt = 0;
    const prefix = Buffer.from(`${db.databaseName}\x00`, 'utf8');
    socket.on('message', (datagram) => {
      if (datagram.length < prefix.length || !datagram.subarray(0, prefix.length).equals(prefix)) return;
      const queue = datagram.subarray(prefix.length).toString('utf8');
      if (this.flooded(queue)) return;
      this.ringLocally([queue]);
    });
    socket.on('error', () => {});
  }

  // Say (at most every RENEW_MS) that this process waits on `queues`.
  async listen(queues) {
    const wanted = [...new Set(queues)].sort();
    const key = JSON.stringify(wanted);
    const now = Date.now();
    if (key === this.registered && now - this.renewedAt < RENEW_MS) return;
    this.registered = key;
    this.renewedAt = now;
    try {
      await this.db.collection(DOORBELLS).updateOne(
        { _id: this.identity },
        { $set: { ip: this.ip, port: this.port, database: this.db.databaseName, queues: wanted,
          expires_at: new Date(now + EXPIRE_MS) } },
        { upsert: true },
      );
    } catch {
      this.renewedAt = 0; // try again at the next wait; rings may be missed meanwhile
    }
  }

  async close() {
    await super.close();
    try { this.socket.close(); } catch { /* already closed */ }
    try { await this.db.collection(DOORBELLS).deleteOne({ _id: this.identity }); } catch { /* it expires */ }
  }
}

export class Ringer {
  constructor(db) {
    this.db = db;
    this.socket = dgram.createSocket('udp4');
    this.socket.unref();
    this.socket.on('error', () => {});
    this.targets = new Map();
    this.readAt = 0;
    this.reading = null;
  }

  async currentTargets() {
    if (Date.now() - this.readAt < TARGETS_MAX_AGE_MS) return this.targets;
    if (!this.reading) {
      this.reading = (async () => {
        const targets = new Map();
        try {
          const bells = this.db.collection(DOORBELLS).find(
            { database: this.db.databaseName, expires_at: { $gt: new Date() } },
            { projection: { ip: 1, port: 1, queues: 1 } },
          );
          for await (const bell of bells) {
            for (const queue of bell.queues ?? []) {
              if (!targets.has(queue)) targets.set(queue, []);
              targets.get(queue).push([bell.ip, Number(bell.port)]);
            }
          }
        } catch { /* no rings this time; consumers still look every second */ }
        this.targets = targets;
        this.readAt = Date.now();
      })().finally(() => { this.reading = null; });
    }
    await this.reading;
    return this.targets;
  }

  // Ring every live doorbell of `queue`; never throws. Returns how many were rung.
  async ring(queue, local = null) {
    if (!ringsEnabled()) return 0;
    local?.ringLocally([queue]);
    try {
      const targets = (await this.currentTargets()).get(queue) ?? [];
      const datagram = Buffer.from(`${this.db.databaseName}\x00${queue}`, 'utf8');
      for (const [ip, port] of targets) this.socket.send(datagram, port, ip, () => {});
      return targets.length;
    } catch {
      return 0;
    }
  }

  close() {
    try { this.socket.close(); } catch { /* already closed */ }
  }
}
