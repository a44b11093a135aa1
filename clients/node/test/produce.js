// Write messages the way a Node service would: write() with options, a repeated dedupe
// key, and writeMany() with defaults and per-message envelopes.
import { envelope } from '../src/index.js';
import { main } from './common.js';

await main(async (client, { queue, count = 10 }) => {
  const q = client.queue(queue);
  const ids = [];
  ids.push(await q.write({ n: 0, text: 'plain' }));
  ids.push(await q.write({ n: 1 }, { routingKey: 'welcome', priority: 5, activity: 'signup', expire: 3600 }));
  const deduped = await q.write({ n: 2 }, { dedupeKey: 'order-2' });
  const again = await q.write({ n: 2, again: true }, { dedupeKey: 'order-2' });
  ids.push(deduped);
  const many = [];
  for (let n = 3; n < count - 1; n += 1) many.push(n % 2 ? { n } : envelope({ n }, { priority: 1, activity: 'batch' }));
  many.push(envelope({ n: count - 1, later: true }, { delay: 3600 }));
  ids.push(...await q.writeMany(many, { routingKey: 'bulk' }));
  return { ids: ids.map(String), deduped: String(deduped), again: String(again) };
});
