//! Thousands of hostile connections against a live proxy, while a control
//! client keeps working: garbage instead of a startup packet, absurd and
//! partial lengths, SSLRequest or GSSENCRequest then garbage, a SCRAM login
//! fed garbage, a login followed by mutated messages, unknown types, a
//! 2^31-1 length, truncated messages, and half-open connections that send
//! two bytes of a length and go silent (the login timeout, set to one
//! second here, closes them).
//!
//! What must hold: every query of the control client succeeds; the proxy
//! closes every hostile connection it should (none is left waiting);
//! afterwards its client count is back to the control client alone, and
//! the process's memory (the proxy runs in-process) is back near where it
//! was after a warm-up round of the same hostility. Against a real primary
//! and two streaming replicas.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use support::raw::{message, query, startup_packet};
use support::{connect, TestCluster, TestProxy, APP_DB, APP_PASSWORD, APP_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::SimpleQueryMessage;

/// Hostile connections in the measured round, and in the warm-up before it.
const HOSTILE: u64 = 3_000;
const WARM_UP: u64 = 600;
/// How many are open at once.
const AT_ONCE: usize = 32;

/// How much the process may have grown between the baseline (after the
/// warm-up) and the end. The allocator keeps some freed memory in its
/// per-thread arenas, so equality is impossible; but a leak of anything
/// per connection shows far above this: every connection gets an 8 KiB
/// read buffer (23 MiB over 3,000 connections), and every login two 16 KiB
/// write buffers besides.
const RSS_MARGIN_KIB: u64 = 16 * 1024;

/// The ways a connection misbehaves; connection `i` does `KINDS[i % len]`.
#[derive(Debug, Clone, Copy)]
enum Hostility {
    /// Random bytes instead of a startup packet.
    GarbageFirst,
    /// A startup packet with a length that lies (too small, absurd).
    AbsurdStartupLength,
    /// A valid startup packet with a few bytes changed.
    MutatedStartup,
    /// SSLRequest, then garbage instead of a TLS handshake or a startup.
    SslThenGarbage,
    /// GSSENCRequest, then garbage.
    GssThenGarbage,
    /// A CancelRequest for a backend that does not exist.
    BogusCancel,
    /// Two bytes of a length, then silence: the login timeout ends it.
    HalfOpen,
    /// Nothing at all: the login timeout ends it.
    Silent,
    /// A SCRAM login whose SASL messages are garbage.
    ScramGarbage,
    /// A valid login, then garbage.
    LoginThenGarbage,
    /// A valid login, then valid messages with a few bytes changed.
    LoginThenMutated,
    /// A valid login, then a message of a type that does not exist.
    LoginThenUnknownType,
    /// A valid login, then a Query whose length says 2^31-1.
    LoginThenAbsurdLength,
    /// A valid login, then half a message, then close.
    LoginThenTruncated,
}

const KINDS: &[Hostility] = &[
    Hostility::GarbageFirst,
    Hostility::AbsurdStartupLength,
    Hostility::MutatedStartup,
    Hostility::SslThenGarbage,
    Hostility::GssThenGarbage,
    Hostility::BogusCancel,
    Hostility::HalfOpen,
    Hostility::Silent,
    Hostility::ScramGarbage,
    Hostility::LoginThenGarbage,
    Hostility::LoginThenMutated,
    Hostility::LoginThenUnknownType,
    Hostility::LoginThenAbsurdLength,
    Hostility::LoginThenTruncated,
];

fn garbage(rng: &mut StdRng) -> Vec<u8> {
    let mut bytes = vec![0u8; rng.gen_range(1..300)];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// A few random byte changes: flip, overwrite, insert, cut.
fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.gen_range(1..5) {
        if bytes.is_empty() {
            bytes.push(rng.gen());
            continue;
        }
        let at = rng.gen_range(0..bytes.len());
        match rng.gen_range(0..4) {
            0 => bytes[at] ^= 1 << rng.gen_range(0..8),
            1 => bytes[at] = rng.gen(),
            2 => bytes.insert(at, rng.gen()),
            _ => bytes.truncate(at.max(1)),
        }
    }
}

/// Valid messages a logged-in client sends: a simple query, and an
/// extended-protocol batch.
fn valid_messages(rng: &mut StdRng) -> Vec<u8> {
    if rng.gen_bool(0.5) {
        return query("SELECT 1, 'hostile'");
    }
    let mut out = message(b'P', b"\0SELECT $1::int\0\0\0");
    out.extend(message(b'B', b"\0\0\0\0\0\x01\0\0\0\x0142\0\0"));
    out.extend(message(b'D', b"P\0"));
    out.extend(message(b'E', b"\0\0\0\0\0"));
    out.extend(message(b'S', b""));
    out
}

/// What became of one hostile connection.
#[derive(Debug, Default)]
struct Outcome {
    /// The proxy closed it (or refused it) within the deadline.
    closed_by_proxy: bool,
}

/// Reads until the proxy closes the connection, or the deadline passes.
async fn until_closed(stream: &mut TcpStream, deadline: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let until = Instant::now() + deadline;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// One hostile connection, start to end.
async fn hostile(port: u16, i: u64) -> Outcome {
    let kind = KINDS[(i % KINDS.len() as u64) as usize];
    let mut rng = StdRng::seed_from_u64(i);
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return Outcome::default();
    };
    let trusted = startup_packet(&[("user", "trusted"), ("database", APP_DB)]);
    let mut send = Vec::new();
    // Whether the proxy must end the connection by itself; otherwise this
    // side closes its half once it has sent everything.
    let mut proxy_ends_it = true;
    match kind {
        Hostility::GarbageFirst => send = garbage(&mut rng),
        Hostility::AbsurdStartupLength => {
            let len = [0i32, 3, 7, 10_001, 0x7fff_ffff, -1][rng.gen_range(0..6)];
            send.extend(len.to_be_bytes());
            send.extend(&trusted[4..]);
        }
        Hostility::MutatedStartup => {
            send = trusted.clone();
            mutate(&mut rng, &mut send);
            proxy_ends_it = false;
        }
        Hostility::SslThenGarbage => {
            send.extend([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
            send.extend(garbage(&mut rng));
        }
        Hostility::GssThenGarbage => {
            send.extend([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]);
            send.extend(garbage(&mut rng));
        }
        Hostility::BogusCancel => {
            send.extend([0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e]);
            send.extend(rng.gen::<[u8; 8]>());
        }
        Hostility::HalfOpen => send.extend([0, 0]),
        Hostility::Silent => {}
        Hostility::ScramGarbage => {
            send = startup_packet(&[("user", APP_USER), ("database", APP_DB)]);
            let mut sasl = b"SCRAM-SHA-256\0".to_vec();
            let first = b"n,,n=,r=hostile-nonce";
            sasl.extend((first.len() as i32).to_be_bytes());
            sasl.extend(first);
            let mut initial = message(b'p', &sasl);
            mutate(&mut rng, &mut initial);
            send.extend(initial);
            send.extend(garbage(&mut rng));
        }
        Hostility::LoginThenGarbage => {
            send = trusted.clone();
            send.extend(garbage(&mut rng));
            proxy_ends_it = false;
        }
        Hostility::LoginThenMutated => {
            send = trusted.clone();
            let mut messages = valid_messages(&mut rng);
            mutate(&mut rng, &mut messages);
            send.extend(messages);
            proxy_ends_it = false;
        }
        Hostility::LoginThenUnknownType => {
            send = trusted.clone();
            send.extend(message(b'x', b"whatever"));
        }
        Hostility::LoginThenAbsurdLength => {
            send = trusted.clone();
            send.extend([b'Q', 0x7f, 0xff, 0xff, 0xff]);
            send.extend(b"SELECT 1");
        }
        Hostility::LoginThenTruncated => {
            send = trusted.clone();
            let whole = query("SELECT 'this message is cut short'");
            send.extend(&whole[..rng.gen_range(1..whole.len())]);
            proxy_ends_it = false;
        }
    }
    if stream.write_all(&send).await.is_err() {
        // The proxy closed already (an absurd length is refused at once).
        return Outcome {
            closed_by_proxy: true,
        };
    }
    if !proxy_ends_it {
        let _ = stream.shutdown().await;
    }
    // The login timeout is one second; give the proxy a few.
    let closed_by_proxy = until_closed(&mut stream, Duration::from_secs(8)).await;
    Outcome { closed_by_proxy }
}

/// Runs `count` hostile connections, `AT_ONCE` at a time, numbered from
/// `first`; returns the kinds of those the proxy did not close, and how
/// many of each.
async fn hostile_round(port: u16, first: u64, count: u64) -> Vec<(Hostility, u64)> {
    let left_open = std::sync::Mutex::new(vec![0u64; KINDS.len()]);
    stream::iter(first..first + count)
        .map(|i| async move { (i, hostile(port, i).await) })
        .buffer_unordered(AT_ONCE)
        .for_each(|(i, outcome)| {
            if !outcome.closed_by_proxy {
                let mut left_open = left_open.lock().unwrap_or_else(|e| e.into_inner());
                left_open[(i % KINDS.len() as u64) as usize] += 1;
            }
            async {}
        })
        .await;
    let left_open = left_open.into_inner().unwrap_or_else(|e| e.into_inner());
    KINDS
        .iter()
        .copied()
        .zip(left_open)
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// A field of /proc/self/status, in kB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// One row whose first column is `n`: the answer to the control query.
fn answers(messages: &[SimpleQueryMessage], n: u64) -> bool {
    let rows: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .collect();
    matches!(rows.as_slice(), [row] if row.get(0) == Some(n.to_string().as_str()))
}

/// Waits until the proxy counts exactly `n` logged-in clients.
async fn clients_settle(proxy: &TestProxy, n: usize) -> usize {
    let mut now = usize::MAX;
    for _ in 0..200 {
        now = proxy.proxy.stats.count_clients(|_| true);
        if now == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    now
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connections_leave_the_proxy_as_they_found_it() {
    let proxy = TestProxy::start_with(TestCluster::shared(), |c| {
        c.proxy.client_login_timeout_ms = 1000;
    });
    let port = proxy.port;

    // The control client: simple queries back to back, all through.
    let control = connect(port, APP_USER, APP_PASSWORD, APP_DB).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let slowest = Arc::new(AtomicU64::new(0));
    let controller = {
        let (stop, ok, failed, slowest) =
            (stop.clone(), ok.clone(), failed.clone(), slowest.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sql = format!("SELECT {n}, count(*) FROM pg_class");
                let started = Instant::now();
                let result =
                    tokio::time::timeout(Duration::from_secs(10), control.simple_query(&sql)).await;
                slowest.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                match result {
                    Ok(Ok(messages)) if answers(&messages, n) => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("control query {n} failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Warm-up: the same hostility, so buffers, pools and the allocator's
    // arenas reach their working size before the baseline is taken.
    let warm_left_open = hostile_round(port, 0, WARM_UP).await;
    assert_eq!(clients_settle(&proxy, 1).await, 1, "after the warm-up");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (baseline_rss, baseline_fds) = (status_kib("VmRSS"), open_fds());

    let started = Instant::now();
    let left_open = hostile_round(port, WARM_UP, HOSTILE).await;
    let took = started.elapsed();
    let clients_after = clients_settle(&proxy, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (after_rss, after_fds, peak_rss) = (status_kib("VmRSS"), open_fds(), status_kib("VmHWM"));

    stop.store(true, Ordering::Relaxed);
    controller.await.expect("control client task");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let logins = proxy.proxy.stats.clients_total.load(Ordering::Relaxed);
    eprintln!(
        "hostile: {HOSTILE} connections ({AT_ONCE} at once) in {:.1} s after {WARM_UP} to warm up; \
         {logins} logins in all; control: {ok} queries ok, {failed} failed, slowest {} ms; \
         VmRSS {baseline_rss} kB before, {after_rss} kB after (peak {peak_rss} kB); \
         fds {baseline_fds} before, {after_fds} after; clients after: {clients_after}",
        took.as_secs_f64(),
        slowest.load(Ordering::Relaxed) / 1000,
    );
    assert_eq!(failed, 0, "control queries failed");
    assert!(ok > 0, "the control client ran no query");
    assert!(
        warm_left_open.is_empty() && left_open.is_empty(),
        "connections the proxy never closed: {warm_left_open:?} in the warm-up, {left_open:?} after"
    );
    assert_eq!(clients_after, 1, "only the control client is left");
    assert!(
        after_rss <= baseline_rss + RSS_MARGIN_KIB,
        "VmRSS grew from {baseline_rss} kB to {after_rss} kB"
    );
    assert!(
        after_fds <= baseline_fds + 8,
        "open files grew from {baseline_fds} to {after_fds}"
    );
    proxy.stop();
}

/// Reads messages until `n` ReadyForQuery have come; `None` if the proxy
/// closes the connection or answers nothing for five seconds.
async fn ready_for_queries(stream: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let mut ready = 0;
        let mut rest = &bytes[..];
        while rest.len() >= 5 {
            let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if rest.len() < 1 + len {
                break;
            }
            ready += usize::from(rest[0] == b'Z');
            rest = &rest[1 + len..];
        }
        if ready >= n {
            return Some(bytes);
        }
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(read)) if read > 0 => bytes.extend_from_slice(&buf[..read]),
            _ => return None,
        }
    }
}

/// Messages a client sends without waiting for answers are answered
/// without the client having to send anything more: a query right behind
/// the startup packet (in the same write), and more units in one write
/// than the session queues at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_messages_are_answered_without_more_bytes() {
    let proxy = TestProxy::start(TestCluster::shared());
    for queries in [1, 200] {
        let mut stream = TcpStream::connect(("127.0.0.1", proxy.port))
            .await
            .expect("connect");
        let mut send = startup_packet(&[("user", "trusted"), ("database", APP_DB)]);
        for i in 0..queries {
            send.extend(query(&format!("SELECT {i}")));
        }
        stream.write_all(&send).await.expect("send");
        // The greeting's ReadyForQuery, then one per query.
        let answered = ready_for_queries(&mut stream, 1 + queries).await;
        assert!(
            answered.is_some(),
            "{queries} pipelined queries were not all answered"
        );
    }
    proxy.stop();
}
