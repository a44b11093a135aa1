// Write + claim + acknowledge cycles with the Node.js client, for bench/bench_clients.py.
// Usage: node bench/node_cycles.mjs QUEUE CONCURRENCY SECONDS  (MOPQ_MONGODB_URI, MOPQ_DATABASE)
// Prints {"cycles": n, "seconds": s} once every loop has stopped.
import { connect } from '../clients/node/src/index.js';

const [queueName, concurrency, seconds] = [process.argv[2], Number(process.argv[3]),
  Number(process.argv[4])];
const mopq = await connect();
const queue = mopq.queue(queueName);
let cycles = 0;
const started = Date.now();
const until = started + seconds * 1000;

async function loop() {
  while (Date.now() < until) {
    await queue.write({ n: cycles });
    for (const message of await queue.read({ visibilityTimeout: 30, limit: 1 })) {
      await message.delete();
      cycles += 1;
    }
  }
}

await Promise.all(Array.from({ length: concurrency }, loop));
const elapsed = (Date.now() - started) / 1000;
await mopq.close();
console.log(JSON.stringify({ cycles, seconds: elapsed }));
