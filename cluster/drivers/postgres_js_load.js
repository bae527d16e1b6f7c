// postgres.js (porsager/postgres) through causeway while servers die (see
// cluster/drivers.sh): one connection per worker with several queries in
// flight on it at once, every statement prepared by name (the driver's
// default: Parse and Describe, then Bind and Execute behind a Flush),
// blocks with sql.begin. Results match their statements, a write read back
// right after is there, errors carry a SQLSTATE, no worker hangs.
//   node postgres_js_load.js PORT SECONDS
const postgres = require('postgres');
const port = Number(process.argv[2]);
const secs = Number(process.argv[3]);
const stop = Date.now() + secs * 1000;
const stats = { ok: 0, wrong: 0, closed: 0, err: {}, other: {} };
const bump = (d, k) => { d[k] = (d[k] || 0) + 1; };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function worker(n) {
  const sql = postgres({
    host: '127.0.0.1', port, user: 'app', password: 'app', database: 'app',
    max: 1, idle_timeout: 0, onnotice: () => {},
  });
  while (Date.now() < stop) {
    const k = Math.floor(Math.random() * 1e6) + 1;
    const r = Math.random();
    try {
      if (r < 0.5) {
        const all = await Promise.all([1, 2, 3, 4].map((i) => sql`SELECT ${k + i}::int AS v`));
        all.forEach((rows, i) => { if (rows[0].v !== k + i + 1) stats.wrong++; else stats.ok++; });
      } else if (r < 0.8) {
        const [row] = await sql`INSERT INTO pipe_chaos (who, v) VALUES (${n}, ${k}) RETURNING id`;
        const back = await sql`SELECT v FROM pipe_chaos WHERE id = ${row.id}`;
        if (back.length !== 1 || back[0].v !== k) stats.wrong++; else stats.ok++;
      } else {
        const v = await sql.begin(async (tx) => {
          const [row] = await tx`INSERT INTO pipe_chaos (who, v) VALUES (${n}, ${k}) RETURNING id`;
          const [back] = await tx`SELECT v FROM pipe_chaos WHERE id = ${row.id}`;
          return back.v;
        });
        if (v !== k) stats.wrong++; else stats.ok++;
      }
    } catch (e) {
      if (typeof e.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code)) bump(stats.err, e.code);
      else {
        bump(stats.other, `${e.code || ''} ${String(e.message).slice(0, 80)}`);
        if (e.code === 'CONNECTION_CLOSED' || e.code === 'CONNECTION_ENDED') stats.closed++;
      }
      await sleep(20);
    }
  }
  await sql.end({ timeout: 1 });
}
// A worker still waiting well past the end is a hang: say so, and fail.
const watchdog = setTimeout(() => {
  console.log(`postgres.js: ok ${stats.ok} wrong ${stats.wrong} closed ${stats.closed} errors ${JSON.stringify(stats.err)} other ${JSON.stringify(stats.other)} HUNG`);
  process.exit(1);
}, secs * 1000 + 15000);
(async () => {
  await Promise.all([0, 1, 2, 3, 4, 5].map(worker));
  clearTimeout(watchdog);
  console.log(`postgres.js: ok ${stats.ok} wrong ${stats.wrong} closed ${stats.closed} errors ${JSON.stringify(stats.err)} other ${JSON.stringify(stats.other)}`);
})();
