// Two consumers with a client each, as two processes would be, take turns claiming one
// message at a time: strict claim order, every claim command finds its message, and no
// candidate read comes before it (one round trip per claim).
import { connect } from '../src/index.js';
import { main, quiet } from './common.js';

function counted(client) {
  const seen = { claims: 0, candidateReads: 0 };
  client.mongo.on('commandStarted', (event) => {
    if (event.commandName === 'findAndModify' && event.command.update?.$inc?.attempts) seen.claims += 1;
    if (event.commandName === 'find' && event.command.filter?.visible_at) seen.candidateReads += 1;
  });
  return seen;
}

await main(async (writer, { queue, count }) => {
  const consumers = [];
  try {
    for (let i = 0; i < 2; i += 1) {
      consumers.push(await connect({ log: quiet, mongoOptions: { monitorCommands: true } }));
    }
    const claims = consumers.map(counted);
    const queues = consumers.map((client) => client.queue(queue));
    const got = [];
    for (let turn = 0; turn < count; turn += 1) {
      const [message] = await queues[turn % 2].read({ visibilityTimeout: 30 });
      got.push(message.body.n);
      await message.delete();
    }
    return { got, claims: claims.map((seen) => seen.claims),
      candidateReads: claims.map((seen) => seen.candidateReads) };
  } finally {
    for (const client of consumers) await client.close();
  }
});
