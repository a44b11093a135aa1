// The connection: durable writes, the format check, the indexes, the publisher, emit().

import { MongoClient, MongoServerError } from 'mongodb';
import {
  FORMAT_DOCUMENT, FORMAT_VERSION, FormatMismatch, INDEXES, SETTINGS, businessEvent,
} from './format.js';
import { Publisher } from './publisher.js';
import { Queue } from './queue.js';
import { Ringer } from './doorbell.js';

export const DEFAULT_URI = 'mongodb://127.0.0.1:27017/';
export const DEFAULT_DATABASE = 'mopq';
const MAX_NAME_LENGTH = 200;
const MAX_TAGS = 16;
const MAX_TAG_CHARS = 200;

// Why an emit() is refused, or null (the same rules as the Python library's emit()).
export function emitProblem(name, value, tags) {
  if (typeof name !== 'string' || !name || name.length > MAX_NAME_LENGTH || name.includes('$')
      || name.includes('\x00') || name === '.' || name === '..') {
    return `event name must be a non-empty string of at most ${MAX_NAME_LENGTH} characters without '$' or NUL`;
  }
  if (typeof value !== 'number' || !Number.isFinite(value)) return 'value must be a finite number';
  if (tags === null || typeof tags !== 'object' || Array.isArray(tags) || Object.keys(tags).length > MAX_TAGS) {
    return `tags must be an object of at most ${MAX_TAGS} string pairs`;
  }
  for (const [key, tag] of Object.entries(tags)) {
    if (typeof tag !== 'string' || !key || key.startsWith('$') || key.includes('.')
        || (key + tag).includes('\x00') || key.length > MAX_TAG_CHARS || tag.length > MAX_TAG_CHARS) {
      return `tag ${key}=${tag} must be short strings without '$', '.' or NUL`;
    }
  }
  return null;
}

export class Client {
  // Connect, check the database's format version (§12) and create missing indexes (§10).
  static async connect({ uri = process.env.MOPQ_MONGODB_URI || DEFAULT_URI,
    database = process.env.MOPQ_DATABASE || DEFAULT_DATABASE, log = console, indexes = true,
    mongoOptions = {} } = {}) {
    const given = uri.toLowerCase();
    const options = { appName: 'mopq-node', ignoreUndefined: true, ...mongoOptions };
    for (const name of ['serverSelectionTimeoutMS', 'connectTimeoutMS']) {
      if (!given.includes(`${name.toLowerCase()}=`) && !(name in options)) options[name] = 5000;
    }
    // Acknowledged means durable (invariant 7), unless the URI or the caller says otherwise.
    if (!given.includes('w=') && !given.includes('journal=') && !('writeConcern' in options)) {
      options.writeConcern = { w: 'majority', journal: true };
    }
    const mongo = new MongoClient(uri, options);
    await mongo.connect();
    const client = new Client(mongo, mongo.db(database), log);
    try {
      await client.checkFormat();
      if (indexes) await client.ensureIndexes();
    } catch (error) {
      await mongo.close();
      throw error;
    }
    return client;
  }

  constructor(mongo, db, log = console) {
    this.mongo = mongo;
    this.db = db;
    this.log = log;
    this.publisher = new Publisher(db, { log });
    this.ringer = new Ringer(db);
    this.doorbell = null; // set by a Worker that listens in this process
    this.rejected = 0;
  }

  // The format version the database speaks, recorded as ours if it has none or an older one
  // (raised, so that older clients refuse what they would get wrong: docs/FORMAT.md §12).
  async checkFormat() {
    const settings = this.db.collection(SETTINGS);
    await settings.updateOne({ _id: FORMAT_DOCUMENT }, { $setOnInsert: { version: FORMAT_VERSION } },
      { upsert: true });
    await settings.updateOne({ _id: FORMAT_DOCUMENT, version: { $lt: FORMAT_VERSION } },
      { $set: { version: FORMAT_VERSION } });
    const stored = Number((await settings.findOne({ _id: FORMAT_DOCUMENT }))?.version ?? 1);
    if (stored > FORMAT_VERSION) {
      throw new FormatMismatch(`Database ${this.db.databaseName} speaks mopq storage format ${stored}; `
        + `this client speaks format ${FORMAT_VERSION} (docs/FORMAT.md). Upgrade the client first.`);
    }
    return stored;
  }

  // Create only the indexes not there yet (by name), as the Python library does.
  async ensureIndexes() {
    for (const [name, wanted] of Object.entries(INDEXES)) {
      let existing = [];
      try {
        existing = await this.db.collection(name).listIndexes().toArray();
      } catch (error) {
        if (!(error instanceof MongoServerError) || error.code !== 26) throw error; // 26: no collection yet
      }
      const names = new Set(existing.map((index) => index.name));
      const missing = wanted.filter((index) => !names.has(index.name));
      if (missing.length) await this.db.collection(name).createIndexes(missing);
    }
  }

  queue(name, options = {}) {
    return new Queue(this, name, options);
  }

  // A business event (§8). Returns at once: false (and logs why) if refused; never throws.
  emit(name, value = 1, tags = {}) {
    try {
      const problem = emitProblem(name, value, tags ?? {});
      if (problem) {
        this.rejected += 1;
        this.log.warn?.(`mopq emit refused an event: ${problem}`);
        return false;
      }
      this.publisher.addBusiness(businessEvent(name, value, { ...(tags ?? {}) }, new Date()));
      return true;
    } catch (error) {
      this.log.error?.(`mopq emit failed; the event was dropped: ${error}`);
      return false;
    }
  }

  ring(queue) {
    this.ringer.ring(queue, this.doorbell).catch(() => {});
  }

  // Wait until every buffered event is published; false if `timeoutMs` passed first.
  flush(timeoutMs = 10000) {
    return this.publisher.flush(timeoutMs);
  }

  async close({ timeoutMs = 10000 } = {}) {
    const flushed = await this.flush(timeoutMs);
    this.publisher.close();
    this.ringer.close();
    await this.mongo.close();
    return flushed;
  }
}
