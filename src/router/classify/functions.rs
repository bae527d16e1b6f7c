//! Writing functions: the calls that make an otherwise read-only
//! statement need the primary, or pin the session to it.
//!
//! Calls are found on tokens (a name followed by `(`, any schema, quoted
//! or not), anywhere in the statement: select list, `WHERE`, subqueries,
//! CTEs, `FROM`. That over-approximates (a column named like a function in
//! attribute notation counts for configured functions) on purpose: every
//! doubt goes to the primary. The built-in table lists what writes, needs
//! the primary's state (`currval`, `pg_current_wal_lsn`, and the views of
//! its live state: `pg_stat_activity`, `pg_locks`...) or leaves session
//! state behind (session advisory locks, non-local `set_config`); the
//! configured list adds the application's own.

use sqlparser::tokenizer::Token;

use super::lex::Lexeme;
use super::statement::Context;
use super::tokens::{is, lparen, matching_paren, split_commas, tok, Toks};
use super::PinReason;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Effect {
    Pin(PinReason),
    Write(&'static str),
}

/// The strongest effect of any writing function called in `t`: a pin
/// wins, else the first write. A call is a name followed by `(`, with any
/// schema; quoted names count too (`"nextval"(...)` calls nextval).
/// Configured functions also count in attribute notation (`row.fn`), which
/// calls a function taking the row's composite type.
pub(super) fn function_effect(cx: &Context, t: &Toks) -> Option<Effect> {
    let mut first_write = None;
    for i in 0..t.len() {
        let Some(Token::Word(w)) = tok(t, i) else {
            continue;
        };
        let called = lparen(t, i + 1);
        if !called && is_live_state_view(&w.value) {
            first_write.get_or_insert(Effect::Write(LIVE_STATE));
            continue;
        }
        let attribute =
            i > 0 && is(t, i - 1, &Token::Period) && !cx.extra_write_functions.is_empty();
        if !called && !attribute {
            continue;
        }
        let name = w.value.to_ascii_lowercase();
        let effect = if called {
            builtin_effect(&name, t, i + 1)
        } else {
            None
        };
        let effect = effect.or_else(|| {
            cx.is_extra(&name)
                .then_some(Effect::Write("configured writing function"))
        });
        match effect {
            Some(Effect::Pin(p)) => return Some(Effect::Pin(p)),
            Some(effect) if first_write.is_none() => first_write = Some(effect),
            _ => {}
        }
    }
    first_write
}

fn builtin_effect(name: &str, t: &Toks, open: usize) -> Option<Effect> {
    let reason = match name {
        "nextval" => "writing function nextval",
        "setval" => "writing function setval",
        // Read-only, but fails on a server where nextval was not called.
        "currval" => "writing function currval",
        "lastval" => "writing function lastval",
        "pg_notify" => "writing function pg_notify",
        "txid_current" => "writing function txid_current",
        "pg_current_xact_id" => "writing function pg_current_xact_id",
        "set_config" if is_local_set_config(t, open) => "writing function set_config",
        "set_config" => return Some(Effect::Pin(PinReason::SetConfig)),
        "pg_advisory_lock"
        | "pg_advisory_lock_shared"
        | "pg_try_advisory_lock"
        | "pg_try_advisory_lock_shared" => {
            return Some(Effect::Pin(PinReason::AdvisoryLock));
        }
        "loread" | "lowrite" => "large object function",
        "pg_current_wal_lsn" | "pg_current_wal_insert_lsn" | "pg_current_wal_flush_lsn" => {
            "primary-only function"
        }
        "pg_stat_get_activity"
        | "pg_lock_status"
        | "pg_blocking_pids"
        | "pg_safe_snapshot_blocking_pids"
        | "pg_stat_get_wal_senders"
        | "pg_get_replication_slots"
        | "pg_prepared_xact"
        | "pg_xact_status"
        | "txid_status" => LIVE_STATE,
        "pg_switch_wal"
        | "pg_switch_xlog"
        | "pg_create_restore_point"
        | "pg_backup_start"
        | "pg_backup_stop"
        | "pg_start_backup"
        | "pg_stop_backup"
        | "pg_log_standby_snapshot" => "wal control function",
        "pg_cancel_backend" | "pg_terminate_backend" => "backend signal function",
        "pg_reload_conf" | "pg_rotate_logfile" => "server control function",
        "pg_stat_statements_reset" => "statistics reset function",
        "pg_create_physical_replication_slot"
        | "pg_create_logical_replication_slot"
        | "pg_copy_physical_replication_slot"
        | "pg_copy_logical_replication_slot"
        | "pg_drop_replication_slot"
        | "pg_replication_slot_advance" => "replication function",
        _ if name.starts_with("pg_advisory_") || name.starts_with("pg_try_advisory_") => {
            "advisory lock function"
        }
        _ if name.starts_with("lo_") => "large object function",
        _ if name.starts_with("pg_logical_") || name.starts_with("pg_replication_origin_") => {
            "replication function"
        }
        _ if name.starts_with("pg_stat_reset") => "statistics reset function",
        _ if name.starts_with("dblink") => "dblink function",
        _ => return None,
    };
    Some(Effect::Write(reason))
}

/// Why a read of the primary's live state goes there: who is connected and
/// what they run, locks, replication, prepared transactions, commands in
/// progress. A replica has its own, which is not the database's: a lock
/// monitor, or a test that finds its own transaction in
/// `pg_stat_activity`, would see nothing of the writes' server.
const LIVE_STATE: &str = "primary's live state";

/// The system views of a server's live state (see [`LIVE_STATE`]), named
/// anywhere in a statement without `(` after them.
fn is_live_state_view(word: &str) -> bool {
    const VIEWS: [&str; 6] = [
        "pg_stat_activity",
        "pg_locks",
        "pg_stat_replication",
        "pg_replication_slots",
        "pg_prepared_xacts",
        "pg_stat_replication_slots",
    ];
    let bytes = word.as_bytes();
    bytes.len() >= 8
        && bytes[..3].eq_ignore_ascii_case(b"pg_")
        && (VIEWS.iter().any(|v| word.eq_ignore_ascii_case(v))
            || bytes
                .get(..16)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"pg_stat_progress")))
}

/// `set_config(name, value, true)`: the setting dies with the transaction,
/// so it needs the primary but no pin. Anything but a literal true pins.
fn is_local_set_config(t: &Toks, open: usize) -> bool {
    let Some(close) = matching_paren(t, open) else {
        return false;
    };
    match split_commas(&t[open + 1..close]).as_slice() {
        [_, _, [flag]] => match &flag.token.token {
            Token::Word(w) => w.quote_style.is_none() && w.value.eq_ignore_ascii_case("true"),
            Token::SingleQuotedString(s) => ["t", "true", "on", "yes", "1"]
                .iter()
                .any(|v| s.eq_ignore_ascii_case(v)),
            _ => false,
        },
        _ => false,
    }
}

/// Words that take a parenthesis in SQL's own grammar, never a call of a
/// function of the user's: left out of [`called_names`] to keep it short.
const GRAMMAR_WORDS: [&str; 24] = [
    "all", "and", "any", "array", "as", "by", "cast", "coalesce", "exists", "filter", "from", "in",
    "join", "not", "on", "or", "over", "row", "select", "some", "using", "values", "where", "with",
];

/// Every name followed by `(` in the text, lowercased, once each. Type
/// modifiers (`varchar(10)`) and the like come along; they cost a lookup,
/// never a wrong verdict.
pub(super) fn called_names(lexemes: &[Lexeme]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut previous_word: Option<&str> = None;
    for lexeme in lexemes {
        match &lexeme.token.token {
            Token::Whitespace(_) => continue,
            Token::LParen => {
                if let Some(word) = previous_word {
                    let name = word.to_ascii_lowercase();
                    if !GRAMMAR_WORDS.contains(&name.as_str()) && !names.contains(&name) {
                        names.push(name);
                    }
                }
                previous_word = None;
            }
            Token::Word(w) => previous_word = Some(&w.value),
            _ => previous_word = None,
        }
    }
    names
}
