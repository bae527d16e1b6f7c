//! One statement's verdict: [`classify_tokens`] looks at the first keyword
//! and hands the statement to the grammar that knows it.
//!
//! Statements that are writes by their first keyword alone (`INSERT`,
//! `CREATE`, `VACUUM`...) are decided here without parsing: the keyword is
//! proof enough, and a big `INSERT` is where parsing would cost most. A
//! grammar that does not recognise its statement answers `None`, which
//! becomes an "unparsable" write: the primary's server will judge it.
//! [`Context`] carries what every grammar may need besides the tokens: the
//! text (for verbatim replay) and the configured writing functions.

use std::cell::Cell;

use sqlparser::tokenizer::Token;

use super::functions::{function_effect, Effect};
use super::nested::{copy, declare, explain};
use super::query::{query, table};
use super::session::{discard, execute, prepare, reset, select_set_config, set};
use super::tokens::{
    final_ident, final_string, in_pg_temp, is, kw, kw_any, lparen, name_or_all, tok, Toks,
};
use super::transaction::transaction;
use super::{Kind, PinReason, SessionChange, UNPARSABLE};

pub(super) struct Context<'a> {
    sql: &'a str,
    /// Lowercased, without schema.
    pub(super) extra_write_functions: Vec<String>,
    /// How many statements [`classify_tokens`] is inside now.
    depth: Cell<usize>,
}

/// How deep statements may nest (`EXPLAIN ANALYZE DECLARE c CURSOR FOR
/// SELECT ...` is three). Postgres nests no deeper than that, while each
/// level here is a stack frame and, for `PREPARE`, a copy of
/// the text: without a bound, `EXPLAIN ANALYZE` repeated a hundred
/// thousand times in one Query would overflow the stack and abort the
/// proxy, and `PREPARE p AS` repeated would take memory quadratic in its
/// length. Deeper statements are unparsable: the primary will refuse them.
const MAX_NESTED_STATEMENTS: usize = 8;

impl<'a> Context<'a> {
    pub(super) fn new(sql: &'a str, extra: &[String]) -> Self {
        let extra_write_functions = extra
            .iter()
            .map(|f| {
                let name = f.rsplit('.').next().unwrap_or(f);
                name.trim().trim_matches('"').to_ascii_lowercase()
            })
            .collect();
        Context {
            sql,
            extra_write_functions,
            depth: Cell::new(0),
        }
    }

    pub(super) fn text(&self, t: &Toks) -> String {
        match (t.first(), t.last()) {
            (Some(first), Some(last)) => {
                self.sql.get(first.start..last.end).unwrap_or("").to_owned()
            }
            _ => String::new(),
        }
    }

    pub(super) fn is_extra(&self, name: &str) -> bool {
        self.extra_write_functions.iter().any(|f| f == name)
    }
}

pub(super) fn read(reason: &'static str) -> Kind {
    Kind::Read { reason }
}

pub(super) fn write(reason: &'static str) -> Kind {
    Kind::Write { reason }
}

fn unparsable() -> Kind {
    write(UNPARSABLE)
}

pub(super) fn session(change: SessionChange) -> Kind {
    Kind::SessionState(change)
}

pub(super) fn pin(reason: PinReason) -> Kind {
    session(SessionChange::Pin(reason))
}

pub(super) fn classify_tokens(cx: &Context, t: &Toks) -> Kind {
    let depth = cx.depth.get();
    if depth >= MAX_NESTED_STATEMENTS {
        return unparsable();
    }
    cx.depth.set(depth + 1);
    let kind = statement_kind(cx, t).unwrap_or_else(unparsable);
    cx.depth.set(depth);
    kind
}

/// `None` when the statement is not one this module can read: the server
/// will judge it, on the primary.
fn statement_kind(cx: &Context, t: &Toks) -> Option<Kind> {
    if lparen(t, 0) {
        return Some(query(cx, t, "select"));
    }
    let head = match tok(t, 0)? {
        Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
        _ => return None,
    };
    let kind = match head.as_str() {
        "SELECT" => select_set_config(cx, t).unwrap_or_else(|| query(cx, t, "select")),
        "VALUES" => query(cx, t, "values"),
        "WITH" => query(cx, t, "with"),
        "TABLE" => table(cx, t),
        "SHOW" => read("show"),
        // A cursor outside a block is WITH HOLD, and that pinned the session.
        "FETCH" | "MOVE" => read("fetch"),
        "EXPLAIN" => explain(cx, t)?,
        "COPY" => copy(cx, t)?,
        "DECLARE" => declare(cx, t)?,
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE" => {
            Kind::Transaction(transaction(t)?)
        }
        "PREPARE" => prepare(cx, t)?,
        "EXECUTE" => execute(cx, t)?,
        "SET" => set(cx, t)?,
        "RESET" => session(reset(t)?),
        "DISCARD" => session(SessionChange::Discard(discard(t)?)),
        "DEALLOCATE" => {
            let i = if kw(t, 1, "PREPARE") { 2 } else { 1 };
            session(SessionChange::Deallocate {
                name: name_or_all(t, i)?,
            })
        }
        "LISTEN" => pin(PinReason::Listen {
            channel: final_ident(t, 1)?,
        }),
        "UNLISTEN" if is(t, 1, &Token::Mul) && t.len() == 2 => {
            session(SessionChange::Unlisten { channel: None })
        }
        "UNLISTEN" => session(SessionChange::Unlisten {
            channel: Some(final_ident(t, 1)?),
        }),
        "LOAD" => final_string(t, 1).map(|_| pin(PinReason::Load))?,
        "CLOSE" => session(SessionChange::CloseCursor {
            name: name_or_all(t, 1)?,
        }),
        "CREATE" if creates_temp(t) => pin(PinReason::TempTable),
        other => {
            // The first keyword decides; only a session pin can outrank it.
            let reason = write_keyword_reason(other)?;
            match function_effect(cx, t) {
                Some(Effect::Pin(p)) => pin(p),
                _ => write(reason),
            }
        }
    };
    Some(kind)
}

/// Statements that are writes by their first keyword alone.
pub(super) fn write_keyword_reason(head: &str) -> Option<&'static str> {
    Some(match head {
        "INSERT" => "insert",
        "UPDATE" => "update",
        "DELETE" => "delete",
        "MERGE" => "merge",
        "CREATE" | "ALTER" | "DROP" | "COMMENT" | "SECURITY" | "IMPORT" | "REASSIGN" => "ddl",
        "TRUNCATE" => "truncate",
        "GRANT" => "grant",
        "REVOKE" => "revoke",
        "CALL" => "call",
        "DO" => "do",
        "VACUUM" => "vacuum",
        "ANALYZE" | "ANALYSE" => "analyze",
        "CLUSTER" => "cluster",
        "REINDEX" => "reindex",
        "CHECKPOINT" => "checkpoint",
        "LOCK" => "lock",
        "REFRESH" => "refresh materialized view",
        "NOTIFY" => "notify",
        _ => return None,
    })
}

/// `CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP|TEMPORARY ...`, or any object
/// put in `pg_temp.` (a view over a temp table is temporary too).
fn creates_temp(t: &Toks) -> bool {
    let mut i = if kw(t, 1, "OR") && kw(t, 2, "REPLACE") {
        3
    } else {
        1
    };
    if kw_any(t, i, &["GLOBAL", "LOCAL"]) {
        i += 1;
    }
    kw_any(t, i, &["TEMP", "TEMPORARY"]) || (0..t.len()).any(|j| in_pg_temp(t, j))
}
