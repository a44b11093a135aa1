// Serve one step of an activity (docs/FORMAT.md §15), or a step's compensation, from its
// queue: claim the instances waiting there and acknowledge each with a result made from
// what they carry, until `count` are served. The acknowledgement is the client's own move.
import { main } from './common.js';

await main(async (client, { queue, count = 1, timeoutMs = 30000 }) => {
  const q = client.queue(queue, { maxAttempts: 2, backoff: () => 0 });
  const served = [];
  const deadline = Date.now() + timeoutMs;
  while (served.length < count && Date.now() < deadline) {
    const messages = await q.read({ visibilityTimeout: 30, limit: 5 });
    if (!messages.length) await new Promise((resolve) => { setTimeout(resolve, 50); });
    for (const message of messages) {
      const { key, previous, result } = message.body;
      if (previous !== undefined) await message.delete({ charged: previous.reserved * 10, by: 'node' });
      else await message.delete({ refunded: result.charged, by: 'node' }); // a compensation
      served.push({ key, attempts: message.attempts });
    }
  }
  return { served };
});
