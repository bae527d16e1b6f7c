//! What the router needs to know about one unit of work (a simple Query, or
//! an extended-protocol batch up to Sync): whether it only reads, how it
//! moves the transaction state, and what session state it changes.

use std::sync::Arc;

pub use super::cache::{cached, cached_query, FactsCache};
use super::classify::{self, DiscardTarget, Kind, PinReason, SessionChange, SetScope, TxControl};

/// A leading `/* causeway: primary */` or `/* causeway: replica */`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    Primary,
    Replica,
}

/// A change to session state that must follow the client to every server
/// it uses, applied once the statement has succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `SET name ...`: replay `sql` verbatim.
    Set { name: String, sql: String },
    /// `SELECT set_config('name', $n, false)`: a `Set` once the Bind
    /// gives parameter `param` (0-based).
    SetFromParameter { name: String, param: usize },
    /// `RESET name`.
    Reset { name: String },
    /// `RESET ALL`.
    ResetAll,
    /// `PREPARE name AS ...`: replay `sql` verbatim; `inner` routes its
    /// executions.
    Prepare {
        name: String,
        sql: String,
        inner: Arc<UnitFacts>,
    },
    /// `DEALLOCATE name`.
    Deallocate { name: String },
    /// `DEALLOCATE ALL`.
    DeallocateAll,
    /// `DISCARD ALL`: settings, statements, pins, all gone.
    DiscardAll,
    /// `UNLISTEN *`, `DISCARD TEMP`, `CLOSE ALL`: the pin of that reason ends.
    Unpin(&'static str),
    /// `SAVEPOINT name`: settings changed after it are undone by a
    /// `ROLLBACK TO` it.
    Savepoint(String),
    /// `ROLLBACK TO [SAVEPOINT] name`.
    RollbackTo(String),
    /// `RELEASE [SAVEPOINT] name`.
    Release(String),
}

/// The settings a committed transaction leaves, from its `Set`, `Reset`
/// and `ResetAll` effects in order with its savepoints: what a `ROLLBACK
/// TO` undid is gone, as the server undoes it.
pub fn settle_savepoints(effects: Vec<Effect>) -> Vec<Effect> {
    let mut kept = Vec::with_capacity(effects.len());
    // Savepoints alive, each with how many effects came before it.
    let mut marks: Vec<(String, usize)> = Vec::new();
    for effect in effects {
        match effect {
            Effect::Savepoint(name) => marks.push((name, kept.len())),
            // The savepoint stays; those made after it are gone.
            Effect::RollbackTo(name) => {
                if let Some(i) = marks.iter().rposition(|(n, _)| *n == name) {
                    kept.truncate(marks[i].1);
                    marks.truncate(i + 1);
                }
            }
            // It and those made after it are gone; what they saw stays.
            Effect::Release(name) => {
                if let Some(i) = marks.iter().rposition(|(n, _)| *n == name) {
                    marks.truncate(i);
                }
            }
            other => kept.push(other),
        }
    }
    kept
}

/// The facts of one unit, merged over its statements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitFacts {
    /// Why it must run on the primary, if it writes or might.
    pub write_reason: Option<&'static str>,
    /// Opens a transaction block: `Some(read_only)`.
    pub begin: Option<bool>,
    /// Ends a transaction block (COMMIT, ROLLBACK, PREPARE TRANSACTION...).
    pub ends_tx: bool,
    /// `SET TRANSACTION READ ONLY`.
    pub set_tx_read_only: bool,
    /// Asks for SERIALIZABLE isolation (`BEGIN ISOLATION LEVEL
    /// SERIALIZABLE`, `SET TRANSACTION ...`), which a hot standby refuses.
    pub serializable: bool,
    /// Says `READ WRITE` explicitly (`BEGIN READ WRITE`), so even a session
    /// whose blocks are read-only by default opens a writable one.
    pub read_write: bool,
    pub hint: Option<Hint>,
    /// State that ties the session to its server (LISTEN, temp table...),
    /// one entry per reason.
    pub pins: Vec<&'static str>,
    pub effects: Vec<Effect>,
    /// Prepared statements it runs by name (`EXECUTE name`).
    pub executes: Vec<String>,
    /// Contains `COPY ... FROM STDIN`: the server will wait for the
    /// client's data, so nothing of the proxy's may follow it on the wire.
    pub copy_in: bool,
    /// Functions it calls (see `Classification::calls`); a read calling a
    /// VOLATILE user function is a possible write.
    /// Shared, so that copying a unit's facts (every simple query) costs
    /// no allocation for them.
    pub calls: Arc<[String]>,
    /// May create, change or drop functions: the catalog of function
    /// volatility is read again after it.
    pub changes_functions: bool,
    /// Databases that must have no connections for it to succeed
    /// (`DROP DATABASE x`, `CREATE DATABASE ... TEMPLATE x`, `ALTER DATABASE x RENAME`).
    pub frees_database: Vec<String>,
}

impl UnitFacts {
    /// Pins the session for `reason`, once.
    pub fn pin(&mut self, reason: &'static str) {
        if !self.pins.contains(&reason) {
            self.pins.push(reason);
        }
    }

    pub fn read() -> UnitFacts {
        UnitFacts::default()
    }

    pub fn write(reason: &'static str) -> UnitFacts {
        UnitFacts {
            write_reason: Some(reason),
            ..UnitFacts::default()
        }
    }

    /// Reads only, changes no transaction or session state: a replica may
    /// serve it.
    pub fn is_read(&self) -> bool {
        self.write_reason.is_none()
            && self.begin.is_none()
            && !self.ends_tx
            && !self.set_tx_read_only
            && self.pins.is_empty()
            && self.effects.is_empty()
    }

    /// Writes data (or might), so a commit moves the session's causal LSN.
    pub fn writes(&self) -> bool {
        self.write_reason.is_some()
    }

    /// Opens a READ ONLY block (`BEGIN READ ONLY`, or `BEGIN` followed by
    /// `SET TRANSACTION READ ONLY` in the same unit) and writes nothing.
    pub fn begins_read_only(&self) -> bool {
        let read_only = self.begin == Some(true) || (self.begin.is_some() && self.set_tx_read_only);
        read_only
            && !self.ends_tx
            && !self.serializable
            && self.write_reason.is_none()
            && self.effects.is_empty()
    }

    /// Adds the facts of a later statement of the same unit.
    pub fn merge(&mut self, other: &UnitFacts) {
        if self.write_reason.is_none() {
            self.write_reason = other.write_reason;
        }
        if self.begin.is_none() {
            self.begin = other.begin;
        }
        self.ends_tx |= other.ends_tx;
        self.set_tx_read_only |= other.set_tx_read_only;
        self.serializable |= other.serializable;
        self.read_write |= other.read_write;
        if self.hint.is_none() {
            self.hint = other.hint;
        }
        for pin in &other.pins {
            self.pin(pin);
        }
        self.effects.extend(other.effects.iter().cloned());
        self.executes.extend(other.executes.iter().cloned());
        self.copy_in |= other.copy_in;
        if other.calls.iter().any(|c| !self.calls.contains(c)) {
            let mut calls = self.calls.to_vec();
            for call in other.calls.iter() {
                if !calls.contains(call) {
                    calls.push(call.clone());
                }
            }
            self.calls = calls.into();
        }
        self.changes_functions |= other.changes_functions;
        self.frees_database
            .extend(other.frees_database.iter().cloned());
    }
}

/// Shared, cached facts for a statement text.
pub type SharedFacts = Arc<UnitFacts>;

const LISTEN: &str = "listen";
/// The pin of a `set_config` whose value the proxy cannot know.
pub const SET_CONFIG: &str = "set_config";
/// The pin of a text in another encoding than UTF-8 that changes the
/// session: the proxy cannot replay it byte for byte.
pub const NOT_UTF8: &str = "text not in UTF-8";
/// The pin of a call of a function that may change the session's settings
/// unseen (see `crate::catalog`).
pub const SETTER_CALL: &str = "function that may change settings";
/// The pin of a `DO` block whose body may change settings unseen (see
/// `classify::do_body`).
pub const DO_BLOCK: &str = "DO block";
/// The pin of a text the classifier could not read.
pub const UNREADABLE: &str = "text the proxy cannot read";
/// The pin of a text with a backslash that the server may read otherwise
/// than the proxy (see `frontend::session::texts`).
pub const BACKSLASH: &str =
    "backslash with standard_conforming_strings off or a client-only encoding";
const TEMP_TABLE: &str = "temporary table";
const CURSOR_WITH_HOLD: &str = "cursor with hold";
const ADVISORY_LOCK: &str = "session advisory lock";
const LOAD: &str = "load";

/// Every reason a session may be pinned for: the label values of
/// `causeway_session_pins_total`.
pub const PIN_REASONS: [&str; 11] = [
    LISTEN,
    TEMP_TABLE,
    CURSOR_WITH_HOLD,
    ADVISORY_LOCK,
    SET_CONFIG,
    LOAD,
    NOT_UTF8,
    UNREADABLE,
    SETTER_CALL,
    DO_BLOCK,
    BACKSLASH,
];

/// Classifies one SQL text (possibly several statements) and merges its
/// statements' verdicts into the facts the router uses.
pub fn from_sql(sql: &str, extra_write_functions: &[String]) -> UnitFacts {
    let classification = classify::classify(sql, extra_write_functions);
    let mut facts = UnitFacts {
        hint: classification.hint.map(|h| match h {
            classify::Hint::Primary => Hint::Primary,
            classify::Hint::Replica => Hint::Replica,
        }),
        ..UnitFacts::default()
    };
    let mut calls = classification.calls;
    for statement in &classification.statements {
        add_kind(&mut facts, &statement.kind);
        let Some(text) = sql.get(statement.span.clone()) else {
            continue;
        };
        facts
            .frees_database
            .extend(database_needing_no_connections(text));
        match statement.kind {
            classify::Kind::Write { reason: "ddl" } => {
                facts.changes_functions |= may_change_functions(text);
            }
            classify::Kind::Write { reason: "do" } => {
                // Code the proxy does not run, read for what it may change.
                let body = classify::do_body(text);
                if body.sets {
                    facts.pin(DO_BLOCK);
                }
                for call in body.calls {
                    if !calls.contains(&call) {
                        calls.push(call);
                    }
                }
            }
            _ => {}
        }
    }
    // Writes too: a call of a function that changes settings pins (see
    // `crate::catalog`).
    facts.calls = calls.into();
    facts
}

/// A DDL statement that may create, change or drop a function: one that
/// names functions, procedures, extensions, schemas (`DROP SCHEMA ...
/// CASCADE`), languages or ownership. Over-approximates; the cost of a
/// false alarm is one catalog query.
fn may_change_functions(statement: &str) -> bool {
    let lower = statement.to_ascii_lowercase();
    [
        "function",
        "procedure",
        "routine",
        "extension",
        "schema",
        "language",
        "owned",
    ]
    .iter()
    .any(|word| lower.contains(word))
}

/// The database a statement needs free of connections, if any:
/// `DROP DATABASE [IF EXISTS] x`, `ALTER DATABASE x RENAME TO y`,
/// `CREATE DATABASE y ... TEMPLATE [=] x`.
fn database_needing_no_connections(statement: &str) -> Option<String> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let name = |w: &str| {
        let w = w.trim_end_matches(';');
        if let Some(quoted) = w.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
            quoted.replace("\"\"", "\"")
        } else {
            w.to_ascii_lowercase()
        }
    };
    match lower.as_slice() {
        [d, db, i, e, ..] if d == "drop" && db == "database" && i == "if" && e == "exists" => {
            words.get(4).map(|w| name(w))
        }
        [d, db, ..] if d == "drop" && db == "database" => words.get(2).map(|w| name(w)),
        [a, db, _, r, ..] if a == "alter" && db == "database" && r == "rename" => {
            words.get(2).map(|w| name(w))
        }
        [c, db, ..] if c == "create" && db == "database" => {
            let at = lower
                .iter()
                .position(|w| w == "template" || w.starts_with("template="))?;
            let token = &lower[at];
            let value = match token.split_once('=') {
                Some((_, v)) if !v.is_empty() => words[at].split_once('=').map(|(_, v)| v)?,
                _ => {
                    let next = words.get(at + 1)?;
                    if *next == "=" {
                        words.get(at + 2)?
                    } else {
                        next.trim_start_matches('=')
                    }
                }
            };
            Some(name(value))
        }
        _ => None,
    }
}

fn add_kind(facts: &mut UnitFacts, kind: &Kind) {
    let write = |facts: &mut UnitFacts, reason: &'static str| {
        if facts.write_reason.is_none() {
            facts.write_reason = Some(reason);
        }
    };
    match kind {
        Kind::Read { .. } => {}
        Kind::Write { reason } => {
            facts.copy_in |= *reason == "copy from";
            write(facts, reason)
        }
        Kind::Execute { name } => facts.executes.push(name.clone()),
        Kind::Transaction(tx) => match tx {
            TxControl::Begin { modes } => {
                if facts.begin.is_none() {
                    facts.begin = Some(modes.read_only == Some(true));
                }
                facts.serializable |= modes.serializable();
                facts.read_write |= modes.read_only == Some(false);
            }
            TxControl::Commit { .. } | TxControl::Rollback { .. } => facts.ends_tx = true,
            TxControl::PrepareTransaction { .. } => {
                facts.ends_tx = true;
                write(facts, "prepare transaction");
            }
            TxControl::SetTransaction { modes } => {
                facts.serializable |= modes.serializable();
                facts.read_write |= modes.read_only == Some(false);
                if modes.read_only == Some(true) {
                    facts.set_tx_read_only = true;
                } else {
                    write(facts, "transaction control");
                }
            }
            TxControl::Savepoint { name } => {
                facts.effects.push(Effect::Savepoint(name.clone()));
                write(facts, "savepoint")
            }
            TxControl::ReleaseSavepoint { name } => {
                facts.effects.push(Effect::Release(name.clone()));
                write(facts, "savepoint")
            }
            TxControl::RollbackToSavepoint { name } => {
                facts.effects.push(Effect::RollbackTo(name.clone()));
                write(facts, "savepoint")
            }
            TxControl::CommitPrepared { .. } | TxControl::RollbackPrepared { .. } => {
                write(facts, "two-phase commit")
            }
        },
        Kind::SessionState(change) => match change {
            SessionChange::Set {
                name,
                scope: SetScope::Session,
                statement,
            } => facts.effects.push(Effect::Set {
                name: name.clone(),
                sql: statement.clone(),
            }),
            // Lives and dies with the transaction it runs in.
            SessionChange::Set { .. } => {}
            SessionChange::Reset { name } => {
                facts.effects.push(Effect::Reset { name: name.clone() })
            }
            SessionChange::ResetAll => facts.effects.push(Effect::ResetAll),
            // The defaults are three settings; each is replayed and undone
            // under its own name, as if set one by one.
            SessionChange::TransactionDefaults { modes, .. } => {
                let mut set = |name: &str, value: String| {
                    facts.effects.push(Effect::Set {
                        name: name.to_string(),
                        sql: format!("SET {name} = {value}"),
                    })
                };
                if let Some(isolation) = modes.isolation {
                    set("default_transaction_isolation", format!("'{isolation}'"));
                }
                if let Some(read_only) = modes.read_only {
                    set("default_transaction_read_only", on_off(read_only));
                }
                if let Some(deferrable) = modes.deferrable {
                    set("default_transaction_deferrable", on_off(deferrable));
                }
            }
            SessionChange::SetMany(settings) => {
                for (name, value) in settings {
                    facts.effects.push(match value {
                        classify::ConfigValue::Literal(value) => Effect::Set {
                            name: name.clone(),
                            sql: set_config_sql(name, value),
                        },
                        classify::ConfigValue::Parameter(param) => Effect::SetFromParameter {
                            name: name.clone(),
                            param: *param,
                        },
                    });
                }
            }
            SessionChange::SetFromParameter { name, param } => {
                facts.effects.push(Effect::SetFromParameter {
                    name: name.clone(),
                    param: *param,
                })
            }
            SessionChange::Prepare {
                name,
                inner,
                statement,
            } => {
                let mut inner_facts = UnitFacts::default();
                add_kind(&mut inner_facts, inner);
                facts.effects.push(Effect::Prepare {
                    name: name.clone(),
                    sql: statement.clone(),
                    inner: Arc::new(inner_facts),
                });
            }
            SessionChange::Deallocate { name: Some(name) } => {
                facts.executes.push(name.clone());
                facts
                    .effects
                    .push(Effect::Deallocate { name: name.clone() });
            }
            SessionChange::Deallocate { name: None } => facts.effects.push(Effect::DeallocateAll),
            SessionChange::Discard(DiscardTarget::All) => facts.effects.push(Effect::DiscardAll),
            SessionChange::Discard(DiscardTarget::Temp) => {
                write(facts, "discard");
                facts.effects.push(Effect::Unpin(TEMP_TABLE));
            }
            SessionChange::Discard(_) => write(facts, "discard"),
            SessionChange::Pin(reason) => {
                let pin = match reason {
                    PinReason::Listen { .. } => LISTEN,
                    PinReason::TempTable => TEMP_TABLE,
                    PinReason::CursorWithHold { .. } => CURSOR_WITH_HOLD,
                    PinReason::AdvisoryLock => ADVISORY_LOCK,
                    PinReason::SetConfig => SET_CONFIG,
                    PinReason::Load => LOAD,
                    PinReason::Unreadable => UNREADABLE,
                };
                facts.pin(pin);
                // Temp tables and advisory locks are written state; a write
                // reason also asks for the commit LSN.
                if matches!(reason, PinReason::TempTable | PinReason::AdvisoryLock) {
                    write(facts, "pins session");
                }
                // Whatever it is, it may write.
                if matches!(reason, PinReason::Unreadable) {
                    write(facts, "unparsable");
                }
            }
            SessionChange::Unlisten { channel } => {
                write(facts, "unlisten");
                if channel.is_none() {
                    facts.effects.push(Effect::Unpin(LISTEN));
                }
            }
            SessionChange::CloseCursor { name } => {
                write(facts, "cursor");
                if name.is_none() {
                    facts.effects.push(Effect::Unpin(CURSOR_WITH_HOLD));
                }
            }
        },
    }
}

/// The statement that gives the session's `name` the value `value`, as the
/// startup packet would (`set_config` keeps `a,b` one value, unlike `SET x
/// = a,b`): how every setting known by its value is replayed. Literals are
/// standard-conforming (quotes doubled).
pub fn set_config_sql(name: &str, value: &str) -> String {
    let literal = |s: &str| format!("'{}'", s.replace('\'', "''"));
    format!(
        "SELECT pg_catalog.set_config({}, {}, false)",
        literal(name),
        literal(value)
    )
}

fn on_off(on: bool) -> String {
    if on { "on" } else { "off" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_that_may_change_settings_unseen() {
        let do_block = from_sql(
            "DO $$ BEGIN PERFORM set_config('a.b', 'c', false); END $$",
            &[],
        );
        assert_eq!(do_block.pins, vec![DO_BLOCK]);
        // A write keeps its calls, for the catalog's setters.
        let call = from_sql("CALL set_tenant('x')", &[]);
        assert!(call.writes());
        assert_eq!(&call.calls[..], ["set_tenant"]);
        let update = from_sql("UPDATE t SET owner = login(1)", &[]);
        assert_eq!(&update.calls[..], ["login"]);
    }

    #[test]
    fn statements_that_need_a_database_free_of_connections() {
        let free = |sql: &str| from_sql(sql, &[]).frees_database;
        assert_eq!(free("DROP DATABASE test_app"), vec!["test_app"]);
        assert_eq!(free("drop database if exists \"Test\";"), vec!["Test"]);
        assert_eq!(free("ALTER DATABASE old RENAME TO new"), vec!["old"]);
        assert_eq!(free("CREATE DATABASE copy TEMPLATE base"), vec!["base"]);
        assert_eq!(
            free("CREATE DATABASE copy WITH TEMPLATE = base OWNER app"),
            vec!["base"]
        );
        assert!(free("CREATE DATABASE fresh").is_empty());
        assert!(free("SELECT 'DROP DATABASE x'").is_empty());
    }

    #[test]
    fn multi_statement_units_merge() {
        let facts = from_sql("BEGIN; SET TRANSACTION READ ONLY", &[]);
        assert!(facts.begins_read_only());
        let facts = from_sql("SET search_path = a; SELECT 1", &[]);
        assert!(!facts.is_read());
        assert_eq!(facts.effects.len(), 1);
        let facts = from_sql("COPY t FROM STDIN", &[]);
        assert!(facts.copy_in && facts.writes());
        let facts = from_sql("/* causeway: replica */ SELECT 1", &[]);
        assert_eq!(facts.hint, Some(Hint::Replica));
        let facts = from_sql("LISTEN ch", &[]);
        assert_eq!(facts.pins, vec!["listen"]);
        let facts = from_sql("LISTEN ch; CREATE TEMP TABLE t (id int)", &[]);
        assert_eq!(facts.pins, vec!["listen", "temporary table"]);
        let facts = from_sql("UNLISTEN *", &[]);
        assert_eq!(facts.effects, vec![Effect::Unpin("listen")]);
        let facts = from_sql(
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
            &[],
        );
        assert_eq!(
            facts.effects,
            vec![
                Effect::Set {
                    name: "default_transaction_isolation".into(),
                    sql: "SET default_transaction_isolation = 'serializable'".into()
                },
                Effect::Set {
                    name: "default_transaction_read_only".into(),
                    sql: "SET default_transaction_read_only = on".into()
                },
            ]
        );
        let facts = from_sql("SELECT my_fn(a), count(*) FROM t WHERE x IN (1)", &[]);
        assert_eq!(&facts.calls[..], ["my_fn", "count"]);
        assert!(facts.is_read());
        let facts = from_sql(
            "CREATE OR REPLACE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
            &[],
        );
        assert!(facts.changes_functions);
        assert!(!from_sql("CREATE TABLE t (a int)", &[]).changes_functions);
    }

    #[test]
    fn savepoints_undo_what_came_after_them() {
        let set = |v: &str| Effect::Set {
            name: "work_mem".into(),
            sql: format!("SET work_mem = '{v}'"),
        };
        let sp = |n: &str| Effect::Savepoint(n.into());
        let effects = vec![
            set("1"),
            sp("a"),
            set("2"),
            sp("b"),
            set("3"),
            Effect::RollbackTo("a".into()),
            // b is gone with the rollback; a stays.
            Effect::RollbackTo("b".into()),
            set("4"),
            Effect::Release("a".into()),
            set("5"),
            sp("a"),
            set("6"),
            sp("a"),
            set("7"),
            // The latest savepoint of a name.
            Effect::RollbackTo("a".into()),
        ];
        assert_eq!(
            settle_savepoints(effects),
            vec![set("1"), set("4"), set("5"), set("6")]
        );
    }
}
