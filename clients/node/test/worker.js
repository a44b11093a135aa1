// A Node Worker: heartbeats, a doorbell, and a handler that acks, fails, hangs or waits
// for a gate (until the file body.gate names exists).
// Prints its identity as a JSON line once started; runs until SIGTERM (or SIGKILL).
// With countCommands, SIGUSR2 makes it print how many commands it sent since it started.
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker, connect } from '../src/index.js';
import { quiet } from './common.js';

const args = JSON.parse(process.argv[2] ?? '{}');
const client = await connect({ log: quiet, mongoOptions: { monitorCommands: Boolean(args.countCommands) } });
const worker = new Worker(client, args.queues, async (message) => {
  if (message.body.hang) return new Promise(() => {}); // holds its message until killed
  while (message.body.gate && !existsSync(message.body.gate)) await sleep(20);
  if (message.body.fail) throw new Error(`refused ${message.body.n}`);
  return { by: 'node-worker', n: message.body.n ?? null };
}, { heartbeatInterval: args.heartbeatInterval ?? 0.2, visibilityTimeout: args.visibilityTimeout ?? 60,
  concurrency: args.concurrency ?? 2, maxAttempts: args.maxAttempts ?? 5, rings: args.rings ?? true,
  log: quiet });
await worker.start();
let commands = 0;
client.mongo.on('commandStarted', () => { commands += 1; });
const started = Date.now();
process.on('SIGUSR2', () => {
  console.log(JSON.stringify({ commands, seconds: (Date.now() - started) / 1000 }));
});
console.log(JSON.stringify({ identity: worker.identity, port: worker.port }));
await worker.done;
const seconds = (Date.now() - started) / 1000;
const flushed = await client.close();
console.log(JSON.stringify({ stopped: true, processed: worker.processed, failed: worker.failed, commands,
  seconds, flushed }));
