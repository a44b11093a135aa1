// A ring whose message the Worker claimed is no ring that found nothing, even though the
// look after handling it finds the queue empty. Rings that find nothing are limited
// (docs/FORMAT.md §11: after 50 in a second the rest of that second's rings are ignored),
// so counting these made every pickup past the 50th in a second wait for a poll.
// Writes `count` messages one at a time, each once the worker is idle again; prints how
// many rings the worker's doorbell counted as finding nothing.
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from '../src/index.js';
import { main, quiet } from './common.js';

await main(async (client, { queue, count = 3 }) => {
  let handled = 0;
  const worker = new Worker(client, [queue], async () => { handled += 1; return null; },
    { concurrency: 1, pollInterval: 60, handleSignals: false, log: quiet });
  await worker.start();
  const idle = async (wanted) => { // handled `wanted` and waiting for a ring again
    const deadline = Date.now() + 20000;
    while (handled < wanted || worker.bell.waiters.size === 0) {
      if (Date.now() > deadline) throw new Error(`not idle after ${wanted} handled (${handled})`);
      await sleep(5);
    }
  };
  await idle(0);
  const q = client.queue(queue);
  for (let n = 1; n <= count; n += 1) {
    await q.write({ n });
    await idle(n);
  }
  const [, empty] = worker.bell.empty.get(queue) ?? [0, 0];
  await worker.stop();
  return { handled, empty };
});
