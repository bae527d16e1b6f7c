//! Randomized stale-read hammer. Concurrent sessions write through the proxy
//! in every way an application can (simple and extended protocol, an explicit
//! transaction, a volatile user function called from `SELECT`, `CALL`, `DO`,
//! an insert whose trigger does the write, a writable CTE), then read the
//! write straight back along a random read path (simple, extended, a prepared
//! statement reused across cycles, a `READ ONLY` block, a multi-statement
//! string). Replay keeps running on both replicas, one of them applying
//! commits a random 0-30 ms late, so reads race replay. A read that sees less
//! than the session has just written is stale; there must be none, and some
//! reads must reach the replicas (else the test proves nothing).
//!
//! The default run is small enough for CI. The big run:
//!
//! ```text
//! CAUSEWAY_HAMMER_CYCLES=100000 cargo test --release --test hammer -- --nocapture
//! ```
//!
//! - `CAUSEWAY_HAMMER_CYCLES`: write-then-read cycles over all sessions
//!   (default 4000);
//! - `CAUSEWAY_HAMMER_SESSIONS`: concurrent sessions (default 8);
//! - `CAUSEWAY_HAMMER_SEED`: the seed an earlier run printed, to repeat its
//!   choices (methods, paths, apply delay; timing differs run to run).
//!
//! It runs on a cluster of its own, so the apply delay dies with it.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{
    connect, describe_error, ClusterOptions, TestCluster, TestProxy, APP_DB, APP_PASSWORD, APP_USER,
};
use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryRow, Statement};

const DEFAULT_CYCLES: usize = 4000;
const DEFAULT_SESSIONS: usize = 8;
/// The largest `recovery_min_apply_delay` put on one replica, in ms.
const MAX_APPLY_DELAY_MS: u64 = 30;
/// Stale cycles listed in the failure message (all are counted).
const STALE_LISTED: usize = 200;

/// Tables, a volatile upserting function, a procedure and a trigger, all
/// writing `hammer_kv`, where every read looks. Session `i` owns key `i`.
fn setup_sql(sessions: usize) -> String {
    format!(
        r#"
CREATE TABLE hammer_kv (k int PRIMARY KEY, v bigint NOT NULL);
CREATE TABLE hammer_events (id bigserial PRIMARY KEY, k int NOT NULL, v bigint NOT NULL);
INSERT INTO hammer_kv (k, v) SELECT k, 0 FROM generate_series(0, {last}) AS k;

CREATE FUNCTION hammer_apply(k int, v bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO hammer_kv (k, v) VALUES (hammer_apply.k, hammer_apply.v)
        ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v;
    RETURN hammer_apply.v;
END
$$;

CREATE PROCEDURE hammer_proc(k int, v bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    UPDATE hammer_kv SET v = hammer_proc.v WHERE k = hammer_proc.k;
END
$$;

CREATE FUNCTION hammer_events_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE hammer_kv SET v = NEW.v WHERE k = NEW.k;
    RETURN NULL;
END
$$;
CREATE TRIGGER hammer_events_apply AFTER INSERT ON hammer_events
    FOR EACH ROW EXECUTE FUNCTION hammer_events_apply();
"#,
        last = sessions - 1
    )
}

/// How a cycle writes `v` to its session's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Write {
    SimpleUpdate,
    SimpleUpsert,
    ExtendedUpdate,
    Transaction,
    UserFunction,
    Procedure,
    DoBlock,
    Trigger,
    WritableCte,
}

impl Write {
    const ALL: [Write; 9] = [
        Write::SimpleUpdate,
        Write::SimpleUpsert,
        Write::ExtendedUpdate,
        Write::Transaction,
        Write::UserFunction,
        Write::Procedure,
        Write::DoBlock,
        Write::Trigger,
        Write::WritableCte,
    ];

    fn label(self) -> &'static str {
        match self {
            Write::SimpleUpdate => "simple UPDATE",
            Write::SimpleUpsert => "simple INSERT ON CONFLICT",
            Write::ExtendedUpdate => "extended UPDATE $1 $2",
            Write::Transaction => "BEGIN; UPDATE; COMMIT",
            Write::UserFunction => "SELECT hammer_apply($1,$2)",
            Write::Procedure => "CALL hammer_proc",
            Write::DoBlock => "DO block",
            Write::Trigger => "INSERT firing a trigger",
            Write::WritableCte => "WITH (UPDATE RETURNING) SELECT",
        }
    }

    fn index(self) -> usize {
        Write::ALL.iter().position(|w| *w == self).expect("listed")
    }

    /// Sets key `k` to `v`; a wrong value returned is an error too.
    async fn run(self, client: &Client, k: i32, v: i64) -> Result<(), String> {
        let returned = match self {
            Write::SimpleUpdate => {
                client
                    .simple_query(&format!("UPDATE hammer_kv SET v = {v} WHERE k = {k}"))
                    .await
                    .map_err(|e| describe_error(&e))?;
                None
            }
            Write::SimpleUpsert => {
                client
                    .batch_execute(&format!(
                        "INSERT INTO hammer_kv (k, v) VALUES ({k}, {v}) \
                         ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v"
                    ))
                    .await
                    .map_err(|e| describe_error(&e))?;
                None
            }
            Write::ExtendedUpdate => {
                update(client, k, v).await?;
                None
            }
            Write::Transaction => {
                client
                    .batch_execute("BEGIN")
                    .await
                    .map_err(|e| describe_error(&e))?;
                update(client, k, v).await?;
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| describe_error(&e))?;
                None
            }
            Write::UserFunction => Some(
                client
                    .query_one("SELECT hammer_apply($1, $2)", &[&k, &v])
                    .await
                    .map_err(|e| describe_error(&e))?
                    .get::<_, i64>(0),
            ),
            Write::Procedure => {
                client
                    .batch_execute(&format!("CALL hammer_proc({k}, {v})"))
                    .await
                    .map_err(|e| describe_error(&e))?;
                None
            }
            Write::DoBlock => {
                client
                    .batch_execute(&format!(
                        "DO $$ BEGIN UPDATE hammer_kv SET v = {v} WHERE k = {k}; END $$"
                    ))
                    .await
                    .map_err(|e| describe_error(&e))?;
                None
            }
            Write::Trigger => {
                client
                    .execute(
                        "INSERT INTO hammer_events (k, v) VALUES ($1, $2)",
                        &[&k, &v],
                    )
                    .await
                    .map_err(|e| describe_error(&e))?;
                None
            }
            Write::WritableCte => Some(
                client
                    .query_one(
                        "WITH x AS (UPDATE hammer_kv SET v = $2 WHERE k = $1 RETURNING v) \
                         SELECT v FROM x",
                        &[&k, &v],
                    )
                    .await
                    .map_err(|e| describe_error(&e))?
                    .get::<_, i64>(0),
            ),
        };
        match returned {
            Some(r) if r != v => Err(format!("the write returned {r}, not {v}")),
            _ => Ok(()),
        }
    }
}

/// An extended-protocol `UPDATE` that must hit the session's row.
async fn update(client: &Client, k: i32, v: i64) -> Result<(), String> {
    let rows = client
        .execute("UPDATE hammer_kv SET v = $2 WHERE k = $1", &[&k, &v])
        .await
        .map_err(|e| describe_error(&e))?;
    if rows == 1 {
        Ok(())
    } else {
        Err(format!("UPDATE hit {rows} rows"))
    }
}

/// Reads the key's value and the answering server's port; always one row.
const READ_SQL: &str = "SELECT (SELECT v FROM hammer_kv WHERE k = $1), inet_server_port()";

fn read_sql_literal(k: i32) -> String {
    format!("SELECT (SELECT v FROM hammer_kv WHERE k = {k}), inet_server_port()")
}

/// How a cycle reads its write back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    Simple,
    Extended,
    Prepared,
    InReadOnlyBlock,
    MultiStatement,
}

impl Read {
    const ALL: [Read; 5] = [
        Read::Simple,
        Read::Extended,
        Read::Prepared,
        Read::InReadOnlyBlock,
        Read::MultiStatement,
    ];

    fn label(self) -> &'static str {
        match self {
            Read::Simple => "simple SELECT",
            Read::Extended => "extended SELECT $1",
            Read::Prepared => "prepared statement reused",
            Read::InReadOnlyBlock => "BEGIN READ ONLY; SELECT; COMMIT",
            Read::MultiStatement => "multi-statement simple query",
        }
    }

    fn index(self) -> usize {
        Read::ALL.iter().position(|r| *r == self).expect("listed")
    }

    /// The value seen (`None`: no row) and the port of the server that answered.
    async fn run(
        self,
        client: &Client,
        prepared: &Statement,
        k: i32,
    ) -> Result<(Option<i64>, i32), String> {
        let row = match self {
            Read::Simple => {
                let messages = client
                    .simple_query(&read_sql_literal(k))
                    .await
                    .map_err(|e| describe_error(&e))?;
                return simple_answer(&messages);
            }
            Read::Extended => client.query_one(READ_SQL, &[&k]).await,
            Read::Prepared => client.query_one(prepared, &[&k]).await,
            Read::InReadOnlyBlock => {
                client
                    .batch_execute("BEGIN READ ONLY")
                    .await
                    .map_err(|e| describe_error(&e))?;
                let row = client.query_one(READ_SQL, &[&k]).await;
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| describe_error(&e))?;
                row
            }
            Read::MultiStatement => {
                let messages = client
                    .simple_query(&format!(
                        "SELECT 'before'; {}; SELECT 'after'",
                        read_sql_literal(k)
                    ))
                    .await
                    .map_err(|e| describe_error(&e))?;
                return simple_answer(&messages);
            }
        }
        .map_err(|e| describe_error(&e))?;
        Ok((row.get(0), row.get(1)))
    }
}

/// The answer of [`read_sql_literal`] among simple-query messages: the only
/// two-column row.
fn simple_answer(messages: &[SimpleQueryMessage]) -> Result<(Option<i64>, i32), String> {
    let rows: Vec<&SimpleQueryRow> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) if row.len() == 2 => Some(row),
            _ => None,
        })
        .collect();
    let [row] = rows[..] else {
        return Err(format!("expected one two-column row, got {}", rows.len()));
    };
    let value = match row.get(0) {
        None => None,
        Some(text) => Some(text.parse().map_err(|e| format!("value {text:?}: {e}"))?),
    };
    let port = row
        .get(1)
        .ok_or("inet_server_port() is NULL")?
        .parse()
        .map_err(|e| format!("port: {e}"))?;
    Ok((value, port))
}

/// Names servers by port.
#[derive(Clone)]
struct Servers {
    primary: i32,
    replicas: Vec<i32>,
}

impl Servers {
    fn of(cluster: &TestCluster) -> Servers {
        Servers {
            primary: i32::from(cluster.primary_port()),
            replicas: cluster.replica_ports().into_iter().map(i32::from).collect(),
        }
    }

    fn name(&self, port: i32) -> String {
        if port == self.primary {
            return "primary".into();
        }
        match self.replicas.iter().position(|p| *p == port) {
            Some(i) => format!("replica{i}"),
            None => format!("unknown port {port}"),
        }
    }

    fn is_replica(&self, port: i32) -> bool {
        self.replicas.contains(&port)
    }
}

#[derive(Clone, Copy, Default)]
struct Count {
    cycles: u64,
    stale: u64,
    on_replica: u64,
}

impl Count {
    fn add(&mut self, other: Count) {
        self.cycles += other.cycles;
        self.stale += other.stale;
        self.on_replica += other.on_replica;
    }

    fn line(&self, label: &str) -> String {
        format!(
            "  {label:<34} {:>7} cycles {:>6} stale {:>6.1}% on replicas",
            self.cycles,
            self.stale,
            percent(self.on_replica, self.cycles)
        )
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// What sessions saw, summed up.
#[derive(Default)]
struct Tally {
    total: Count,
    by_write: [Count; Write::ALL.len()],
    by_read: [Count; Read::ALL.len()],
    by_server: BTreeMap<String, u64>,
    stale: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.total.add(other.total);
        for (mine, theirs) in self.by_write.iter_mut().zip(other.by_write) {
            mine.add(theirs);
        }
        for (mine, theirs) in self.by_read.iter_mut().zip(other.by_read) {
            mine.add(theirs);
        }
        for (server, n) in other.by_server {
            *self.by_server.entry(server).or_default() += n;
        }
        self.stale.extend(other.stale);
    }
}

/// One session: `cycles` write-then-read cycles on key `id`, choices drawn
/// from `seed`.
async fn session(id: usize, cycles: usize, seed: u64, port: u16, servers: Servers) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let client = connect(port, APP_USER, APP_PASSWORD, APP_DB).await;
    let prepared = client
        .prepare(READ_SQL)
        .await
        .unwrap_or_else(|e| panic!("session {id}: prepare: {}", describe_error(&e)));
    let k = i32::try_from(id).expect("session key");
    let mut tally = Tally::default();
    for cycle in 0..cycles {
        let v = i64::try_from(cycle).expect("cycle") + 1;
        let write = Write::ALL[rng.gen_range(0..Write::ALL.len())];
        let read = Read::ALL[rng.gen_range(0..Read::ALL.len())];
        let at =
            || format!("session {id} cycle {cycle} (wrote {v} by {write:?}, read by {read:?})");
        if let Err(e) = write.run(&client, k, v).await {
            panic!("{}: write failed: {e}", at());
        }
        let (seen, server) = match read.run(&client, &prepared, k).await {
            Ok(answer) => answer,
            Err(e) => panic!("{}: read failed: {e}", at()),
        };
        let stale = seen != Some(v);
        if stale {
            let what = match seen {
                Some(seen) if seen > v => "NEWER than written",
                Some(_) => "stale",
                None => "no row",
            };
            tally.stale.push(format!(
                "session {id} cycle {cycle}: wrote {v} by [{}], read {seen:?} ({what}) by [{}] from {}",
                write.label(),
                read.label(),
                servers.name(server)
            ));
        }
        let count = Count {
            cycles: 1,
            stale: u64::from(stale),
            on_replica: u64::from(servers.is_replica(server)),
        };
        tally.total.add(count);
        tally.by_write[write.index()].add(count);
        tally.by_read[read.index()].add(count);
        *tally.by_server.entry(servers.name(server)).or_default() += 1;
    }
    tally
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T>
where
    T::Err: std::fmt::Display,
{
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={text:?}: {e}")),
    )
}

#[test]
fn write_then_read_is_never_stale_with_replay_running() {
    let cycles: usize = env_number("CAUSEWAY_HAMMER_CYCLES").unwrap_or(DEFAULT_CYCLES);
    let sessions: usize = env_number("CAUSEWAY_HAMMER_SESSIONS").unwrap_or(DEFAULT_SESSIONS);
    assert!(sessions > 0, "CAUSEWAY_HAMMER_SESSIONS must be at least 1");
    let seed: u64 = env_number("CAUSEWAY_HAMMER_SEED").unwrap_or_else(rand::random);
    eprintln!(
        "hammer: seed {seed} (CAUSEWAY_HAMMER_SEED={seed} repeats the choices), \
         {cycles} cycles over {sessions} sessions"
    );
    let mut rng = StdRng::seed_from_u64(seed);

    let cluster = TestCluster::start(ClusterOptions::default());
    cluster.psql_db(cluster.primary_port(), APP_DB, &setup_sql(sessions));
    cluster.wait_replicas_caught_up();
    let delayed = rng.gen_range(0..cluster.replica_count());
    let delay = Duration::from_millis(rng.gen_range(0..=MAX_APPLY_DELAY_MS));
    cluster.set_apply_delay(delayed, delay);
    let setting = cluster.psql(
        cluster.replica_port(delayed),
        "SHOW recovery_min_apply_delay",
    );
    eprintln!("hammer: replica{delayed} recovery_min_apply_delay = {setting}, replay running");

    let proxy = TestProxy::start(&cluster);
    let servers = Servers::of(&cluster);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime");
    let started = Instant::now();
    let tally = runtime.block_on(async {
        let tasks: Vec<_> = (0..sessions)
            .map(|id| {
                let share = cycles / sessions + usize::from(id < cycles % sessions);
                let session_seed = rng.gen();
                tokio::spawn(session(
                    id,
                    share,
                    session_seed,
                    proxy.port,
                    servers.clone(),
                ))
            })
            .collect();
        let mut tally = Tally::default();
        for task in tasks {
            match task.await {
                Ok(session) => tally.add(session),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("session task: {e}"),
            }
        }
        tally
    });
    let elapsed = started.elapsed();

    let total = tally.total;
    eprintln!(
        "hammer: seed {seed}, {} cycles in {elapsed:.1?}, replica{delayed} apply delay {setting}: \
         {} stale, {}/{} reads on replicas ({:.1}%)",
        total.cycles,
        total.stale,
        total.on_replica,
        total.cycles,
        percent(total.on_replica, total.cycles)
    );
    eprintln!(" by write method:");
    for write in Write::ALL {
        eprintln!("{}", tally.by_write[write.index()].line(write.label()));
    }
    eprintln!(" by read path:");
    for read in Read::ALL {
        eprintln!("{}", tally.by_read[read.index()].line(read.label()));
    }
    eprintln!(" reads by server: {:?}", tally.by_server);

    drop(runtime);
    proxy.stop();
    drop(cluster);

    let listed: Vec<&str> = tally
        .stale
        .iter()
        .take(STALE_LISTED)
        .map(String::as_str)
        .collect();
    assert!(
        tally.stale.is_empty(),
        "{} stale reads out of {} cycles (seed {seed}); stale by write method: {}\n{}{}",
        tally.stale.len(),
        total.cycles,
        Write::ALL
            .iter()
            .filter(|w| tally.by_write[w.index()].stale > 0)
            .map(|w| format!("[{}] {}", w.label(), tally.by_write[w.index()].stale))
            .collect::<Vec<_>>()
            .join(", "),
        listed.join("\n"),
        if tally.stale.len() > STALE_LISTED {
            format!("\n... and {} more", tally.stale.len() - STALE_LISTED)
        } else {
            String::new()
        }
    );
    assert!(
        total.on_replica > 0,
        "no read of {} reached a replica: the hammer proved nothing (reads by server: {:?})",
        total.cycles,
        tally.by_server
    );
}
