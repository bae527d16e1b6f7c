"""asyncpg through causeway while servers die (see cluster/drivers.sh):
results match their statements, errors are SQLSTATE errors, no connection
is closed.

    python3 asyncpg_load.py PORT SECONDS"""
import asyncio, random, sys, time
import asyncpg

DSN = f"postgresql://app:app@127.0.0.1:{sys.argv[1]}/app"
STOP = time.time() + float(sys.argv[2])
stats = {"ok": 0, "err": {}, "wrong": 0, "closed": 0, "other": {}}

def bump(d, k):
    d[k] = d.get(k, 0) + 1

async def worker(n):
    conn = await asyncpg.connect(DSN)
    while time.time() < STOP:
        try:
            k = random.randint(1, 10**6)
            r = random.random()
            if r < 0.5:
                v = await conn.fetchval("SELECT $1::int + 0", k)
            elif r < 0.7:
                v = await conn.fetchval("INSERT INTO pipe_chaos (who, v) VALUES ($1, $2) RETURNING v", n, k)
            elif r < 0.85:
                async with conn.transaction():
                    await conn.execute("INSERT INTO pipe_chaos (who, v) VALUES ($1, $2)", n, k)
                    v = await conn.fetchval("SELECT v FROM pipe_chaos WHERE who = $1 AND v = $2 LIMIT 1", n, k)
            else:
                async with conn.transaction(readonly=True):
                    v = await conn.fetchval("SELECT $1::int + 0", k)
            if v != k:
                stats["wrong"] += 1
            else:
                stats["ok"] += 1
        except asyncpg.PostgresError as e:
            bump(stats["err"], e.sqlstate)
            await asyncio.sleep(0.02)
        except Exception as e:
            bump(stats["other"], type(e).__name__ + ": " + str(e)[:100])
            if conn.is_closed():
                stats["closed"] += 1
                while time.time() < STOP:
                    try:
                        conn = await asyncpg.connect(DSN)
                        break
                    except Exception:
                        await asyncio.sleep(0.2)
            await asyncio.sleep(0.02)
    await conn.close()

async def main():
    await asyncio.gather(*(worker(n) for n in range(6)))
    print(f"asyncpg: ok {stats['ok']} wrong {stats['wrong']} closed {stats['closed']} errors {stats['err']} other {stats['other']}")

asyncio.run(main())
