// Shared by the scripts tests/test_node_client.py runs: one JSON argument in, one JSON
// line out (the last line of stdout). MOPQ_MONGODB_URI and MOPQ_DATABASE name the database.

import { connect } from '../src/index.js';

export const quiet = { info() {}, warn: (text) => console.error(text), error: (text) => console.error(text) };

export async function main(work) {
  const args = JSON.parse(process.argv[2] ?? '{}');
  let client;
  try {
    client = await connect({ log: quiet });
    const result = await work(client, args);
    const flushed = await client.close();
    console.log(JSON.stringify({ ...result, flushed }));
  } catch (error) {
    console.log(JSON.stringify({ error: error.name, message: error.message }));
    if (client) await client.close({ timeoutMs: 1000 }).catch(() => {});
    process.exitCode = 1;
  }
}
