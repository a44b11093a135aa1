// Consume what another client wrote: ack some (with a result), fail some, one until dead.
// body.fail: "always" fails every attempt; "once" fails the first attempt only.
// body.extend: extend the lease first. Stops once `settle` messages are done or dead.
import { main } from './common.js';

await main(async (client, { queue, maxAttempts = 2, settle, timeoutMs = 30000 }) => {
  const q = client.queue(queue, { maxAttempts, backoff: () => 0 });
  const actions = [];
  let settled = 0;
  const deadline = Date.now() + timeoutMs;
  while (settled < settle && Date.now() < deadline) {
    const messages = await q.read({ visibilityTimeout: 30, limit: 5 });
    if (!messages.length) await new Promise((resolve) => { setTimeout(resolve, 50); });
    for (const message of messages) {
      const { n, fail } = message.body;
      if (fail === 'always' || (fail === 'once' && message.attempts === 1)) {
        const state = await message.fail(new Error(`refused ${n}`));
        actions.push({ n, attempt: message.attempts, action: 'fail', state });
        if (state === 'dead') settled += 1;
        continue;
      }
      let extendedBy = null;
      if (message.body.extend) {
        const before = message.leaseExpiresAt;
        await message.extend(120);
        extendedBy = (message.leaseExpiresAt - before) / 1000;
        await message.progress(0.5, 'half way');
        await message.log('extended');
      }
      await message.delete({ by: 'node', n });
      actions.push({ n, attempt: message.attempts, action: 'ack', extendedBy });
      settled += 1;
    }
  }
  return { actions, settled };
});
