//! Session state that must follow a client from server to server: settings
//! made with SET, and prepared statements. The session keeps the truth;
//! every server connection keeps a mirror of what it has, and before a unit
//! runs on a connection the difference is replayed there.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::backend::settings::Settings;
use crate::backend::ServerConn;
use crate::protocol::messages;
use crate::router::UnitFacts;

/// How to make a prepared statement again on another server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// The client's own Parse message.
    Parse(Bytes),
    /// The client's `PREPARE name AS ...` statement.
    Sql(String),
}

#[derive(Debug, Clone)]
pub struct Prepared {
    pub replay: Replay,
    pub hash: u64,
    /// The facts of the statement's SQL, for routing its executions.
    pub facts: Arc<UnitFacts>,
}

impl Prepared {
    pub fn new(replay: Replay, facts: Arc<UnitFacts>) -> Prepared {
        let mut h = DefaultHasher::new();
        replay.hash(&mut h);
        Prepared {
            hash: h.finish(),
            replay,
            facts,
        }
    }
}

impl Replay {
    /// The statement's SQL: the Parse message's query, or the `PREPARE`.
    pub fn sql(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Replay::Parse(parse) => super::units::sql_texts(parse).into_iter().next(),
            Replay::Sql(sql) => Some(std::borrow::Cow::Borrowed(sql)),
        }
    }
}

impl Hash for Replay {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Replay::Parse(b) => b.hash(state),
            Replay::Sql(s) => s.hash(state),
        }
    }
}

#[derive(Debug, Default)]
pub struct SessionState {
    /// name -> SQL that sets it.
    pub settings: Settings,
    /// Looked up for every Bind and EXECUTE: a fast hasher, not SipHash
    /// (names come from the session's own client).
    pub prepared: HashMap<String, Prepared, foldhash::fast::RandomState>,
    /// Named statements of `causeway.*` commands, which the proxy answers
    /// itself: their Bind, Describe and Execute are answered here too.
    pub local_prepared: HashMap<String, super::local::Local, foldhash::fast::RandomState>,
}

/// The messages that bring a server connection up to date for a unit.
#[derive(Debug, Default)]
pub struct Catchup {
    /// A simple Query with SET/RESET statements, if any differ.
    pub settings: Option<String>,
    /// Close + Parse messages, ending in Sync, if any statement is missing.
    pub statements: Option<BytesMut>,
    /// `PREPARE` statements to run, as one simple Query.
    pub sql_prepares: Option<String>,
}

impl SessionState {
    /// What `conn` lacks to run a unit that uses the statements `uses` and
    /// creates the statements `creates`; updates `conn`'s mirror as if the
    /// catch-up had run.
    ///
    /// A name in `uses` the session does not know, and is not `creating`
    /// in a unit still in flight, is another client's if the server has
    /// it: it is closed there. A name in `creates` the session has already
    /// is made ready on the server, to be refused there, unless the unit
    /// is sent `again` (a retry or a replay makes it anew).
    ///
    /// A connection holding more than `max_statements` prepared statements
    /// (0: no limit) has its least recently used closed, down to nine
    /// tenths of it, never one this unit or one in flight needs: a
    /// session whose statement went is given it again when it next uses
    /// it, as on any connection that lacks it.
    pub fn catch_up(
        &self,
        conn: &mut ServerConn,
        uses: &[String],
        creates: &[String],
        creating: &dyn Fn(&str) -> bool,
        again: bool,
        max_statements: usize,
    ) -> Catchup {
        let mut out = Catchup::default();
        conn.catch_ups += 1;
        if !conn.settings.matches(&self.settings) {
            // Undo what another client left first, privileges before the
            // rest (a RESET may need the role that was replaced); replay
            // this session's own settings, privileges last.
            let mut sql = String::new();
            let mut resets: Vec<&String> = conn
                .settings
                .keys()
                .filter(|name| !self.settings.contains_key(name))
                .collect();
            resets.sort_by_key(|name| !is_privilege(name));
            for name in resets {
                sql.push_str(&format!("RESET {};", quote_ident(name)));
            }
            let mut replays: Vec<(&String, &String)> = self
                .settings
                .iter()
                .filter(|(name, replay)| conn.settings.get(name) != Some(replay))
                .collect();
            replays.sort_by_key(|(name, _)| replay_rank(name));
            for (_, replay) in replays {
                sql.push_str(replay);
                sql.push(';');
            }
            conn.settings = self.settings.clone();
            out.settings = Some(sql);
        }
        let mut batch = BytesMut::new();
        let mut prepares = String::new();
        for name in uses {
            let Some(prepared) = self.prepared.get(name) else {
                // Not this session's: if another client left a statement of
                // that name here, it goes, so that this client hears that
                // the statement does not exist, as it would from its own
                // server, instead of running the other client's.
                if conn.prepared.contains_key(name) && !creating(name) {
                    conn.prepared.remove(name);
                    close_statement(&mut batch, name);
                }
                continue;
            };
            have_statement(conn, &mut batch, &mut prepares, name, prepared);
        }
        for name in creates {
            match self.prepared.get(name).filter(|_| !again) {
                // The session has a statement of that name already: the
                // server must have it too, to refuse the new one (42P05)
                // and keep the first, as Postgres does.
                Some(prepared) => have_statement(conn, &mut batch, &mut prepares, name, prepared),
                // Otherwise the name must be free on this server, even if
                // another client left a statement of that name here.
                None => {
                    if conn.prepared.remove(name).is_some() {
                        close_statement(&mut batch, name);
                    }
                }
            }
        }
        if max_statements != 0 && conn.prepared.len() > max_statements {
            let needed =
                |name: &str| uses.iter().chain(creates).any(|n| n == name) || creating(name);
            close_least_used(conn, &mut batch, max_statements, &needed);
        }
        if !batch.is_empty() {
            batch.extend_from_slice(b"S\0\0\0\x04");
            out.statements = Some(batch);
        }
        if !prepares.is_empty() {
            out.sql_prepares = Some(prepares);
        }
        out
    }
}

/// Settings that change who the session is, and so what else it may set;
/// `RESET ALL` leaves them alone.
pub fn is_privilege(name: &str) -> bool {
    name == "role" || name == "session_authorization"
}

/// The order in which settings are replayed: who the session is last,
/// the session authorization before the role (setting it resets the role).
fn replay_rank(name: &str) -> u8 {
    match name {
        "session_authorization" => 1,
        "role" => 2,
        _ => 0,
    }
}

impl SessionState {
    /// The session's own setting of `name` asks for `value` (the word
    /// appears in the statement that set it; the name itself never holds
    /// these values).
    fn setting_says(&self, name: &str, value: &str) -> Option<bool> {
        self.settings
            .get(name)
            .map(|sql| sql.to_ascii_lowercase().contains(value))
    }

    /// Transactions default to SERIALIZABLE: by the session's own setting,
    /// or else by the role's or database's default (`role_default`, as the
    /// server connection found it).
    pub fn serializable(&self, role_default: &str) -> bool {
        self.setting_says("default_transaction_isolation", "serializable")
            .unwrap_or_else(|| role_default.eq_ignore_ascii_case("serializable"))
    }
}

/// Makes sure `conn` has the session's statement `name`: nothing if it
/// has that very statement, else a Close of what it has under the name and
/// the statement prepared again (a Parse into `batch`, a `PREPARE` into
/// `prepares`).
fn have_statement(
    conn: &mut ServerConn,
    batch: &mut BytesMut,
    prepares: &mut String,
    name: &str,
    prepared: &Prepared,
) {
    let now = conn.catch_ups;
    match conn.prepared.get_mut(name) {
        Some(have) if have.hash == prepared.hash => {
            have.used = now;
            return;
        }
        Some(_) => close_statement(batch, name),
        None => {}
    }
    match &prepared.replay {
        Replay::Parse(parse) => batch.extend_from_slice(parse),
        Replay::Sql(sql) => {
            prepares.push_str(sql);
            prepares.push(';');
        }
    }
    conn.note_statement(name, prepared.hash);
}

/// Closes the statements of `conn` used longest ago, down to nine tenths
/// of `max`, except those `needed`.
fn close_least_used(
    conn: &mut ServerConn,
    batch: &mut BytesMut,
    max: usize,
    needed: &dyn Fn(&str) -> bool,
) {
    let keep = max - max / 10;
    let mut by_use: Vec<(u64, &String)> = conn
        .prepared
        .iter()
        .filter(|(name, _)| !needed(name))
        .map(|(name, s)| (s.used, name))
        .collect();
    by_use.sort_unstable();
    let excess = conn.prepared.len().saturating_sub(keep);
    let closing: Vec<String> = by_use
        .into_iter()
        .take(excess)
        .map(|(_, name)| name.clone())
        .collect();
    for name in closing {
        conn.prepared.remove(&name);
        close_statement(batch, &name);
    }
}

/// A Close message for a named prepared statement.
fn close_statement(out: &mut BytesMut, name: &str) {
    out.put_u8(b'C');
    out.put_i32(4 + 1 + name.len() as i32 + 1);
    out.put_u8(b'S');
    out.put_slice(name.as_bytes());
    out.put_u8(0);
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Appends a simple Query for `sql`.
pub fn query(out: &mut BytesMut, sql: &str) {
    messages::query(out, sql);
}
