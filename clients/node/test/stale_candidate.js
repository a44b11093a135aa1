// A candidate read in one step's queue, tried after the instance moved to the next step
// (same _id, now pending in another queue): the claim must change nothing (FORMAT §4.3).
import { main } from './common.js';

await main(async (client, { queue }) => {
  const q = client.queue(queue);
  const [stale] = await q.candidates(null, 16);
  const [held] = await q.read({ visibilityTimeout: 30 });
  await held.delete({ reserved: 1, by: 'node' });
  const claimed = await q.claim(stale, 30);
  return { candidate: String(stale._id), held: String(held.id), claimedStale: claimed !== null };
});
