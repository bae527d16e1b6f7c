"""psycopg 3 pipeline mode through causeway while servers die (see
cluster/drivers.sh): every result must be the right one for its statement,
errors only ERRORs with a SQLSTATE, and no connection closed.

    python3 psycopg_pipeline.py PORT SECONDS sync|flush

`sync` sends each pipeline's Sync before reading (libpq then sends a Flush
alone as it leaves pipeline mode); `flush` reads inside the pipeline, reads
only (psycopg sends a Flush after the batch, so the batch stays open on a
replica while its answers are read)."""
import os, random, sys, threading, time
import psycopg

PORT, SECONDS, MODE = sys.argv[1], float(sys.argv[2]), sys.argv[3]
DSN = f"host=127.0.0.1 port={PORT} user=app password=app dbname=app"
STOP = time.time() + SECONDS
stats = {"ok": 0, "err": {}, "wrong": 0, "closed": 0, "other": {}}
lock = threading.Lock()

def bump(key, sub=None):
    with lock:
        if sub is None:
            stats[key] += 1
        else:
            stats[key][sub] = stats[key].get(sub, 0) + 1

def worker(n):
    conn = psycopg.connect(DSN, autocommit=True)
    while time.time() < STOP:
        try:
            with conn.pipeline() as p:
                curs = []
                for i in range(6):
                    cur = conn.cursor()
                    k = random.randint(1, 10**6)
                    if MODE == "sync" and i % 3 == 2:
                        cur.execute("INSERT INTO pipe_chaos (who, v) VALUES (%s, %s) RETURNING v", (n, k))
                    else:
                        cur.execute("SELECT %s::int + 0 AS v, pg_is_in_recovery()", (k,))
                    curs.append((cur, k))
                if MODE == "sync":
                    p.sync()
                for cur, k in curs:
                    row = cur.fetchone()
                    if row[0] != k:
                        bump("wrong")
                    else:
                        bump("ok")
        except psycopg.errors.Error as e:
            code = getattr(e, "sqlstate", None)
            if code:
                bump("err", code)
            else:
                bump("other", type(e).__name__ + ": " + str(e)[:80])
            if conn.closed or conn.broken:
                bump("closed")
                conn = psycopg.connect(DSN, autocommit=True)
            time.sleep(0.02)
        except Exception as e:
            bump("other", type(e).__name__ + ": " + str(e)[:80])
            if conn.closed or conn.broken:
                bump("closed")
                try:
                    conn = psycopg.connect(DSN, autocommit=True)
                except Exception:
                    time.sleep(0.2)
            time.sleep(0.02)

with psycopg.connect(DSN, autocommit=True) as c:
    c.execute("CREATE TABLE IF NOT EXISTS pipe_chaos (id bigserial primary key, who int, v int)")
threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
for t in threads: t.start()
for t in threads: t.join()
print(f"psycopg pipeline {MODE}: ok {stats['ok']} wrong {stats['wrong']} closed {stats['closed']} errors {stats['err']} other {stats['other']}")
