//! Statement classification: what a SQL text asks of the server, decided
//! before any backend is touched.
//!
//! [`classify`] is a pure function from the text of a simple Query (or of a
//! Parse message) to a [`Classification`]: a verdict for the whole text plus
//! one [`StatementClass`] per statement, so the router can route a
//! multi-statement query as one unit and still follow every `BEGIN`, `SET`
//! or `LISTEN` in it.
//!
//! Why it is shaped this way:
//! - **Tokens first.** sqlparser's PostgreSQL tokenizer knows strings
//!   (standard-conforming: a backslash does not escape), `E''` strings,
//!   dollar quotes, nested comments and quoted identifiers, so nothing
//!   inside them is ever taken for SQL. Splitting at `;`, hints,
//!   transaction control, `SET`/`RESET`, `PREPARE`/`EXECUTE`, `LISTEN`,
//!   `COPY`, `EXPLAIN` and friends are read off these tokens by small exact
//!   grammars: sqlparser lacks several of them (`RESET`, `DO`, `LOCK`,
//!   `REFRESH`, `CHECKPOINT`, `TABLE t`, `FOR NO KEY UPDATE`...) and they
//!   are tiny.
//! - **The parser only gates reads.** A statement reaches a replica only if
//!   sqlparser parses it as a query *and* no token shows a side effect.
//!   A statement whose first keyword makes it a write (`INSERT`, `CREATE`,
//!   ...) is never parsed: the keyword is proof enough, and a big `INSERT`
//!   is exactly where parsing costs most.
//! - **Side effects are found on tokens, over-approximating**: a call
//!   `name(` of a writing function anywhere (select list, `WHERE`,
//!   subqueries, CTEs, `FROM`), `FOR UPDATE`/`SHARE`, `INTO`, `( DELETE`.
//!   A false alarm costs one trip to the primary; a miss costs an error or a
//!   stale session, so every doubt goes to the primary.
//! - What no classifier can see: writing functions reached through views,
//!   triggers, operators, casts or `DO` bodies. A replica refuses those
//!   (SQLSTATE 25006) and the router retries them on the primary.
//!
//! How the module is laid out, in the order a text flows through it:
//! - `lex`: tokens with byte offsets, the split at `;`, the hint comment.
//! - `statement`: one statement's verdict, dispatched on its first keyword
//!   to a grammar: `query` (the read gate), `nested` (EXPLAIN, COPY,
//!   DECLARE), `transaction`, `session` (SET, RESET, PREPARE...).
//! - `functions`: the writing-function table all of them consult.
//! - `tokens`: the positional token reads every grammar is written in.

mod code;
mod functions;
mod lex;
mod nested;
mod query;
mod session;
mod statement;
#[cfg(test)]
mod tests;
mod tokens;
mod transaction;

use std::ops::Range;

use sqlparser::tokenizer::{Token, Whitespace};

pub use code::{do_body, DoBody};
use lex::{lex, parse_hint, split, Lexeme};
use statement::{classify_tokens, Context};

/// The verdict on a whole SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// How to route the text as one unit: the statement's own kind when
    /// there is one; for several, `Read` only if all are reads, the first
    /// pin if any pins, else `Write` (the first write's reason, or
    /// "multi-statement"). An empty text is a `Read` ("empty").
    pub kind: Kind,
    /// The hint leading the text (that of the first statement).
    pub hint: Option<Hint>,
    /// Every non-empty statement in order, for transaction and session
    /// tracking.
    pub statements: Vec<StatementClass>,
    /// The names of the functions the text calls (a name before `(`),
    /// lowercased, without schema, once each: a read calling a VOLATILE
    /// user function may write, which only the database's catalog can
    /// tell (see `crate::catalog`).
    pub calls: Vec<String>,
}

/// The verdict on one statement of a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementClass {
    pub kind: Kind,
    pub hint: Option<Hint>,
    /// Where the statement is in the classified text: from its first token
    /// (after leading comments) to its last, without the `;`.
    pub span: Range<usize>,
}

/// What one statement asks of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Provably without side effects: may run on a replica.
    Read { reason: &'static str },
    /// Must run on the primary. `reason` labels metrics and logs.
    Write { reason: &'static str },
    /// Opens, ends or shapes a transaction block.
    Transaction(TxControl),
    /// Session state to replay on every backend, or that pins the session.
    SessionState(SessionChange),
    /// `EXECUTE name`: route it like the prepared statement `name`
    /// (see [`SessionChange::Prepare`]).
    Execute { name: String },
}

/// The modes a transaction statement names; `None` where it says nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxModes {
    /// `Some(true)` for `READ ONLY`, `Some(false)` for `READ WRITE`.
    pub read_only: Option<bool>,
    /// The isolation level as `default_transaction_isolation` spells it
    /// (`"serializable"`, `"repeatable read"`, ...).
    pub isolation: Option<&'static str>,
    pub deferrable: Option<bool>,
}

impl TxModes {
    pub fn serializable(&self) -> bool {
        self.isolation == Some("serializable")
    }
}

/// Transaction control, with the modes the statement names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxControl {
    /// `BEGIN` / `START TRANSACTION`.
    Begin {
        modes: TxModes,
    },
    /// `COMMIT` / `END`; `chain`: `AND CHAIN` opens a new block at once.
    Commit {
        chain: bool,
    },
    /// `ROLLBACK` / `ABORT`.
    Rollback {
        chain: bool,
    },
    Savepoint {
        name: String,
    },
    ReleaseSavepoint {
        name: String,
    },
    RollbackToSavepoint {
        name: String,
    },
    /// Ends the block: the prepared transaction leaves the session.
    PrepareTransaction {
        gid: String,
    },
    /// Outside any block, on the primary, like a write.
    CommitPrepared {
        gid: String,
    },
    RollbackPrepared {
        gid: String,
    },
    /// `SET TRANSACTION ...`: the current block only.
    SetTransaction {
        modes: TxModes,
    },
}

/// Session state changes. `statement` is the statement's own text, for
/// verbatim replay; replay only what the server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// `SET`, `SET TIME ZONE`, `SET ROLE`, `SET SESSION AUTHORIZATION`,
    /// `SET SCHEMA`, `SET NAMES`...; `name` is the lowercased parameter.
    Set {
        name: String,
        scope: SetScope,
        statement: String,
    },
    /// `SELECT set_config('name', $n, false)`: a session-level setting whose
    /// value is the unit's Bind parameter `param` (0-based).
    SetFromParameter {
        name: String,
        param: usize,
    },
    /// `SELECT set_config(...), set_config(...), current_setting(...)`:
    /// several session-level settings in one statement.
    SetMany(Vec<(String, ConfigValue)>),
    /// `RESET name`: forget the recorded `SET` of `name`.
    Reset {
        name: String,
    },
    ResetAll,
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION ...`: the new defaults
    /// of later blocks, which are the settings `default_transaction_*`.
    TransactionDefaults {
        modes: TxModes,
        statement: String,
    },
    /// `PREPARE name AS ...`: replay it; `inner` is the verdict for a later
    /// `EXECUTE name` (PREPARE itself executes nothing).
    Prepare {
        name: String,
        inner: Box<Kind>,
        statement: String,
    },
    /// `DEALLOCATE name`, or `None` for `DEALLOCATE ALL`.
    Deallocate {
        name: Option<String>,
    },
    Discard(DiscardTarget),
    /// State that cannot be replayed: run on the primary and stay there.
    Pin(PinReason),
    /// `UNLISTEN channel`, or `None` for `UNLISTEN *`.
    Unlisten {
        channel: Option<String>,
    },
    /// `CLOSE cursor`, or `None` for `CLOSE ALL`.
    CloseCursor {
        name: Option<String>,
    },
}

/// The value a `set_config` gives: a literal, or a Bind parameter (0-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigValue {
    Literal(String),
    Parameter(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetScope {
    Session,
    /// `SET LOCAL` (and `SET CONSTRAINTS`): ends with the transaction.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscardTarget {
    All,
    Plans,
    Sequences,
    Temp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinReason {
    Listen {
        channel: String,
    },
    /// `CREATE TEMP ...`, `SELECT ... INTO TEMP`, anything in `pg_temp.`.
    TempTable,
    CursorWithHold {
        name: String,
    },
    /// A session-level `pg_advisory_lock`/`pg_try_advisory_lock` (shared too).
    AdvisoryLock,
    /// `set_config(name, value, is_local)` that cannot be replayed: a
    /// computed name or value, or `is_local` not a literal.
    SetConfig,
    /// `LOAD 'library'`.
    Load,
    /// A text the lexer could not read (an unterminated string, or a
    /// literal it refuses that the server may take, such as `E'\777'` in a
    /// database whose encoding is not UTF-8): what it does to the session
    /// is unknown.
    Unreadable,
}

/// A leading `/* causeway: primary */` or `/* causeway: replica */`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    Primary,
    Replica,
}

const UNPARSABLE: &str = "unparsable";

/// Classifies every statement of `sql`. `extra_write_functions` names
/// functions that write besides the built-in ones; case-insensitive, a
/// schema prefix is ignored (a call `any_schema.name(` matches).
pub fn classify(sql: &str, extra_write_functions: &[String]) -> Classification {
    let cx = Context::new(sql, extra_write_functions);
    let Some(lexemes) = lex(sql) else {
        // Most often an unterminated string or comment, which the server
        // refuses too; but the lexer is stricter than the server about
        // some literals, and a statement it cannot see may be a SET. The
        // text goes to the primary and keeps its session there.
        let kind = statement::pin(PinReason::Unreadable);
        let statement = StatementClass {
            kind: kind.clone(),
            hint: None,
            span: 0..sql.len(),
        };
        return Classification {
            kind,
            hint: None,
            statements: vec![statement],
            calls: Vec::new(),
        };
    };
    let calls = functions::called_names(&lexemes);
    let statements: Vec<StatementClass> = split(&lexemes)
        .into_iter()
        .filter_map(|piece| classify_piece(&cx, piece))
        .collect();
    Classification {
        kind: combine(&statements),
        hint: statements.first().and_then(|s| s.hint),
        statements,
        calls,
    }
}

fn combine(statements: &[StatementClass]) -> Kind {
    match statements {
        [] => Kind::Read { reason: "empty" },
        [only] => only.kind.clone(),
        _ if statements
            .iter()
            .all(|s| matches!(s.kind, Kind::Read { .. })) =>
        {
            Kind::Read {
                reason: "multi-statement read",
            }
        }
        _ => {
            let pin = statements.iter().find(|s| is_pin(&s.kind));
            let write = statements.iter().find_map(|s| match s.kind {
                Kind::Write { reason } => Some(reason),
                _ => None,
            });
            match (pin, write) {
                (Some(pin), _) => pin.kind.clone(),
                (None, reason) => Kind::Write {
                    reason: reason.unwrap_or("multi-statement"),
                },
            }
        }
    }
}

fn is_pin(kind: &Kind) -> bool {
    matches!(kind, Kind::SessionState(SessionChange::Pin(_)))
}

/// One piece of the text between `;`s: its hint, span and verdict, or
/// `None` when it holds nothing but whitespace and comments.
fn classify_piece(cx: &Context, piece: &[Lexeme]) -> Option<StatementClass> {
    let hint = piece
        .iter()
        .map_while(|l| match &l.token.token {
            Token::Whitespace(w) => Some(w),
            _ => None,
        })
        .find_map(|w| match w {
            Whitespace::MultiLineComment(text) => parse_hint(text),
            _ => None,
        });
    let toks: Vec<&Lexeme> = piece
        .iter()
        .filter(|l| !matches!(l.token.token, Token::Whitespace(_)))
        .collect();
    let span = toks.first()?.start..toks.last()?.end;
    Some(StatementClass {
        kind: classify_tokens(cx, &toks),
        hint: hint.or_else(|| asks_server_role(&toks).then_some(Hint::Primary)),
        span,
    })
}

/// A statement that reads `transaction_read_only` or `in_hot_standby`
/// (`SHOW transaction_read_only`, `current_setting('in_hot_standby')`): a
/// replica says `on` where the primary, the server the client believes it
/// talks to, says `off`. pgjdbc asks the first to honour
/// `targetServerType=primary`.
fn asks_server_role(toks: &tokens::Toks) -> bool {
    let role = |name: &str| {
        name.eq_ignore_ascii_case("transaction_read_only")
            || name.eq_ignore_ascii_case("in_hot_standby")
    };
    toks.iter().any(|l| match &l.token.token {
        Token::Word(w) => role(&w.value),
        Token::SingleQuotedString(s) => role(s),
        _ => false,
    })
}
