// mopq for Node.js: the storage format of docs/FORMAT.md (version 2), so messages this
// client writes, claims and acknowledges, its heartbeats and its business events are
// counted exactly like the Python library's.

export { Client, DEFAULT_DATABASE, DEFAULT_URI } from './client.js';
export { Envelope, Queue, envelope } from './queue.js';
export { Message } from './message.js';
export { Worker, hostIp, processStartTime } from './worker.js';
export {
  FORMAT_VERSION, FormatMismatch, InvalidInput, LeaseLost, MopqError, NEVER, exponentialBackoff,
  partitionOf,
} from './format.js';

import { Client } from './client.js';

// Shorthand: `const mopq = await connect()` (MOPQ_MONGODB_URI / MOPQ_DATABASE from the env).
export function connect(options) {
  return Client.connect(options);
}
