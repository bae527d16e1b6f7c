// node-postgres through causeway while servers die (see cluster/drivers.sh):
// results match their statements, errors carry a SQLSTATE, no connection is
// closed.   node node_pg_load.js PORT SECONDS
const { Client } = require('pg');
const port = Number(process.argv[2]);
const secs = Number(process.argv[3]);
const stop = Date.now() + secs * 1000;
const stats = { ok: 0, err: {}, wrong: 0, closed: 0, other: {} };
const cfg = { host: '127.0.0.1', port, user: 'app', password: 'app', database: 'app' };
const bump = (d, k) => { d[k] = (d[k] || 0) + 1; };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function connect() {
  for (;;) {
    const c = new Client(cfg);
    c.on('error', () => {});
    try { await c.connect(); return c; } catch (e) { await sleep(200); }
  }
}
async function worker(n) {
  let c = await connect();
  while (Date.now() < stop) {
    const k = Math.floor(Math.random() * 1e6) + 1;
    const r = Math.random();
    try {
      let v;
      if (r < 0.4) {
        v = (await c.query({ text: 'SELECT $1::int + 0 AS v', values: [k] })).rows[0].v;
      } else if (r < 0.55) {
        v = (await c.query({ name: 'named_read', text: 'SELECT $1::int + 0 AS v', values: [k] })).rows[0].v;
      } else if (r < 0.75) {
        v = (await c.query('INSERT INTO pipe_chaos (who, v) VALUES ($1, $2) RETURNING v', [n, k])).rows[0].v;
      } else {
        await c.query('BEGIN');
        try {
          await c.query('INSERT INTO pipe_chaos (who, v) VALUES ($1, $2)', [n, k]);
          v = (await c.query('SELECT v FROM pipe_chaos WHERE who = $1 AND v = $2 LIMIT 1', [n, k])).rows[0].v;
          await c.query('COMMIT');
        } catch (e) {
          try { await c.query('ROLLBACK'); } catch (_) {}
          throw e;
        }
      }
      if (v !== k) stats.wrong++; else stats.ok++;
    } catch (e) {
      if (e.code) bump(stats.err, e.code); else bump(stats.other, String(e.message).slice(0, 100));
      if (!e.code || c._ending || !c._queryable) {
        stats.closed++;
        try { await c.end(); } catch (_) {}
        c = await connect();
      }
      await sleep(20);
    }
  }
  await c.end();
}
(async () => {
  await Promise.all([0, 1, 2, 3, 4, 5].map(worker));
  console.log(`node-postgres: ok ${stats.ok} wrong ${stats.wrong} closed ${stats.closed} errors ${JSON.stringify(stats.err)} other ${JSON.stringify(stats.other)}`);
})();
