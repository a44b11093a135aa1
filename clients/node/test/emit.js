// Business events: emit() returns at once (true, or false when refused).
import { main } from './common.js';

await main(async (client, { events }) => ({
  accepted: events.map(([name, value, tags]) => client.emit(name, value, tags)),
}));
