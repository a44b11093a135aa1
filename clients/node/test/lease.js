// A holder whose lease ran out is refused (ack, fail, extend) and the message is claimed
// again (attempt 2); a pending message past its expiry is expired by the claim that
// finds it, not delivered.
import { LeaseLost } from '../src/index.js';
import { main } from './common.js';

await main(async (client, { queue }) => {
  const q = client.queue(queue);
  const late = await q.write({ late: true });
  const [message] = await q.read({ visibilityTimeout: 0.3 });
  await new Promise((resolve) => { setTimeout(resolve, 600); });
  const refused = [];
  for (const [what, act] of [['ack', () => message.delete()], ['fail', () => message.fail('late')],
    ['extend', () => message.extend(30)]]) {
    try {
      await act();
    } catch (error) {
      if (error instanceof LeaseLost) refused.push(what);
      else throw error;
    }
  }
  const short = await q.write({ short: true }, { expire: 0.2 });
  await new Promise((resolve) => { setTimeout(resolve, 400); });
  const again = await q.read({ visibilityTimeout: 30, limit: 10 });
  for (const m of again) await m.delete();
  return { late: String(late), token: message.leaseToken, refused, short: String(short),
    claimedAgain: again.map((m) => ({ id: String(m.id), attempts: m.attempts })) };
});
