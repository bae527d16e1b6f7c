//! A logged-in client's session from its start: the client's startup
//! settings, its place in the client limits, the greeting connection
//! brought to those settings, and the greeting; then the relay, to the end.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::state::SessionState;
use super::units::UnitBuilder;
use super::{greeting, Attached, Known, Session};
use crate::frontend::{backend_login_error, refuse, ClientIo, Ready};
use crate::lsn::Lsn;
use crate::protocol::messages;
use crate::server::Proxy;

/// Runs a logged-in client's session to its end.
pub async fn run(
    proxy: Arc<Proxy>,
    mut io: ClientIo,
    ready: Ready,
    shutdown: watch::Receiver<bool>,
) {
    let cancel = proxy.cancels.register();
    let mut state = SessionState::default();
    let mut client_id = None;
    let mut min_lsn = None;
    for (name, value) in &ready.settings {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "causeway.client_id" => client_id = Some(value.clone()).filter(|v| !v.is_empty()),
            "causeway.min_lsn" => match value.parse::<Lsn>() {
                Ok(lsn) => min_lsn = Some(lsn),
                Err(e) => {
                    let message = format!("invalid value for parameter \"causeway.min_lsn\": {e}");
                    let fatal = crate::frontend::LoginError::Fatal {
                        code: "22023".into(),
                        message,
                    };
                    refuse(&mut io, fatal).await;
                    return;
                }
            },
            _ => {
                let sql = crate::router::facts::set_config_sql(&name, value);
                state.settings.insert(name, sql);
            }
        }
    }
    // Counted from here, before the client hears it is in: a client told
    // it is in is always counted against the next one's limits, as a
    // Postgres backend counts from its start.
    let entry = proxy.stats.register(crate::stats::ClientInfo {
        pid: cancel.pid,
        user: ready.params.user().unwrap_or_default().to_string(),
        database: ready.login.database.clone(),
        addr: ready.peer,
        application_name: ready
            .params
            .get("application_name")
            .unwrap_or_default()
            .to_string(),
        connected_at: std::time::SystemTime::now(),
        state: Default::default(),
        live: std::sync::Mutex::new(crate::stats::ClientLive {
            client_id: client_id.clone(),
            ..Default::default()
        }),
        units: std::sync::atomic::AtomicU64::new(0),
        signal: crate::stats::SessionSignal::default(),
    });
    if let Some(refusal) = greeting::over_client_limits(&proxy, &ready) {
        refuse(&mut io, refusal).await;
        return;
    }
    // The greeting comes from a primary connection, which also proves the
    // database and login work before the client is told it is in.
    let (greeting_server, pool, mut lease) =
        match greeting::greeting_connection(&proxy, &ready.login).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "no server connection for new client");
                refuse(&mut io, backend_login_error(e)).await;
                return;
            }
        };
    // Bring the greeting connection to the client's startup settings. A
    // connection another client used first may fail to be undone: it is
    // closed, and a new one tried, before the client is blamed.
    let mut attempt = 0;
    loop {
        let used_before = !lease.conn.settings.is_empty();
        let catchup = state.catch_up(&mut lease.conn, &[], &[], &|_| false, false, 0);
        let Some(sql) = catchup.settings else { break };
        match lease.conn.run_internal(&sql).await {
            Ok(None) => break,
            Ok(Some(e)) if used_before && attempt == 0 => {
                tracing::warn!(code = %e.code, message = %e.message, "could not undo another client's settings; closing that server connection");
                lease.conn.unclean = true;
                lease.give_back();
                attempt += 1;
                lease = match pool.checkout_new().await {
                    Ok(lease) => lease,
                    Err(e) => {
                        refuse(&mut io, backend_login_error(e)).await;
                        return;
                    }
                };
            }
            Ok(Some(e)) => {
                lease.conn.unclean = true;
                lease.give_back();
                refuse(
                    &mut io,
                    crate::frontend::LoginError::Fatal {
                        code: e.code,
                        message: e.message,
                    },
                )
                .await;
                return;
            }
            Err(e) => {
                refuse(&mut io, backend_login_error(e)).await;
                return;
            }
        }
    }
    // The first session of a database reads which of its functions may
    // write, before any of its reads is routed; so does a new session when
    // the catalog is due to be read again (a load of reads only, which no
    // write would carry it behind, still learns new functions at its next
    // connection).
    let catalog = proxy.catalogs.get(&ready.login.database);
    if !catalog.is_loaded() || catalog.take_due() {
        match lease
            .conn
            .query_column(crate::catalog::VOLATILE_FUNCTIONS_QUERY)
            .await
        {
            Ok(Ok(names)) => catalog.load(names),
            Ok(Err(e)) => {
                tracing::warn!(code = %e.code, message = %e.message, "could not read the function catalog; calls go to the primary")
            }
            Err(e) => {
                refuse(&mut io, backend_login_error(e)).await;
                return;
            }
        }
    }
    let declared_read_only = lease
        .conn
        .params
        .get("default_transaction_read_only")
        .is_some_and(|v| v == "on");
    let role_isolation = lease.conn.default_isolation.clone();
    let serializable_default = state.serializable(&role_isolation);
    let mut greeting = BytesMut::with_capacity(512);
    let mut builder = UnitBuilder::default();
    let mut params: Vec<_> = lease.conn.params.iter().collect();
    params.sort();
    for (name, value) in params {
        messages::parameter_status(&mut greeting, name, value);
        builder.texts.note_parameter(name, value);
    }
    messages::backend_key_data(&mut greeting, cancel.pid, cancel.secret);
    messages::ready_for_query(&mut greeting, b'I');
    if io.stream.write_all(&greeting).await.is_err() {
        lease.give_back();
        return;
    }
    let lease_id = lease.conn.id;
    let counters = proxy.stats.server(&lease.conn.server_name);
    let known = vec![Known {
        pool,
        counters: counters.clone(),
    }];
    let replica_home = proxy
        .spread
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pause_rx = proxy.pause.subscribe();
    let causal = min_lsn.map(|lsn| proxy.monitor.mark(lsn));
    let mut session = Session {
        proxy,
        client: io.stream,
        cbuf: io.rbuf,
        // Empty until used: an idle client holds no write buffers.
        to_client: BytesMut::new(),
        to_server: BytesMut::new(),
        current: Some(Attached {
            server: greeting_server,
            lease,
            counters,
        }),
        stash: Vec::new(),
        last_conn: vec![(greeting_server, lease_id)],
        known,
        replica_home,
        builder,
        queued: VecDeque::new(),
        pending: VecDeque::new(),
        open_batch: None,
        tx_status: b'I',
        tx_wrote: false,
        tx_after_sent: b'I',
        lost_block: false,
        skip_to_sync: false,
        lost_block_news: None,
        tx_effects: Vec::new(),
        deferred_begin: None,
        deferred_begin_read_write: false,
        optimistic: None,
        client_streaming: 0,
        server_streaming: 0,
        held: BytesMut::new(),
        server_fatal: false,
        state,
        causal,
        primary_epoch: 0,
        commit_awaiting_lsn: false,
        lsn_answer: None,
        ready_after_lsn: None,
        store_write: None,
        ready_after_store: None,
        store_down: std::sync::atomic::AtomicBool::new(false),
        login: ready.login.clone(),
        user: ready.params.user().unwrap_or_default().to_string(),
        client_id,
        client_id_before_block: None,
        pinned: Vec::new(),
        pause: pause_rx,
        held_by_pause: false,
        busy: false,
        shown_state: crate::stats::ClientState::Idle,
        catalog,
        functions_changed: false,
        catalog_rows: None,
        causal_unknown: false,
        fatal_swallowed: false,
        declared_read_only,
        role_isolation,
        serializable_refused: false,
        serializable_default,
        cancel,
        draining: *shutdown.borrow(),
        bytes_received: metrics::counter!("causeway_client_bytes_received_total"),
        bytes_sent: metrics::counter!("causeway_client_bytes_sent_total"),
        entry,
        shown: None,
        client_arm: Default::default(),
    };
    session.set_cancel_target();
    crate::metrics::client_connected();
    let end = session.relay().await;
    session.proxy.pause.set_busy(session.busy, false);
    // On the heap: the ending (rollback, reset, goodbye) is the largest
    // state of a session's task, which every idle client would otherwise
    // carry for all its life.
    Box::pin(session.finish(end)).await;
    crate::metrics::client_disconnected();
}
