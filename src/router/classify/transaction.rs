//! Transaction control: `BEGIN`/`START TRANSACTION`, `COMMIT`/`END`,
//! `ROLLBACK`/`ABORT`, savepoints and two-phase commit, plus the
//! transaction mode lists that `SET TRANSACTION` shares.
//!
//! The router follows transaction blocks from these verdicts, so each
//! grammar accepts exactly the forms the server does and answers `None`
//! for anything else (`BEGIN ISOLATION LEVEL BOGUS`): such a statement goes
//! to the primary as unparsable instead of being taken for a block
//! boundary. Only the access mode is kept (`READ ONLY` blocks may run on a
//! replica); isolation levels and deferrability are checked and dropped.

use sqlparser::tokenizer::Token;

use super::tokens::{final_ident, final_string, is, kw, kw_any, Toks};
use super::TxControl;

pub(super) fn transaction(t: &Toks) -> Option<TxControl> {
    let after_work = |j| {
        if kw_any(t, j, &["WORK", "TRANSACTION"]) {
            j + 1
        } else {
            j
        }
    };
    let to = after_work(1);
    Some(if kw(t, 0, "BEGIN") {
        TxControl::Begin {
            read_only: transaction_modes(t, to)?,
        }
    } else if kw(t, 0, "START") && kw(t, 1, "TRANSACTION") {
        TxControl::Begin {
            read_only: transaction_modes(t, 2)?,
        }
    } else if kw(t, 0, "COMMIT") && kw(t, 1, "PREPARED") {
        TxControl::CommitPrepared {
            gid: final_string(t, 2)?,
        }
    } else if kw_any(t, 0, &["COMMIT", "END"]) {
        TxControl::Commit {
            chain: chain(t, to)?,
        }
    } else if kw(t, 0, "ROLLBACK") && kw(t, 1, "PREPARED") {
        TxControl::RollbackPrepared {
            gid: final_string(t, 2)?,
        }
    } else if kw(t, 0, "ROLLBACK") && kw(t, to, "TO") {
        let j = if kw(t, to + 1, "SAVEPOINT") {
            to + 2
        } else {
            to + 1
        };
        TxControl::RollbackToSavepoint {
            name: final_ident(t, j)?,
        }
    } else if kw_any(t, 0, &["ROLLBACK", "ABORT"]) {
        TxControl::Rollback {
            chain: chain(t, to)?,
        }
    } else if kw(t, 0, "SAVEPOINT") {
        TxControl::Savepoint {
            name: final_ident(t, 1)?,
        }
    } else if kw(t, 0, "RELEASE") {
        let j = if kw(t, 1, "SAVEPOINT") { 2 } else { 1 };
        TxControl::ReleaseSavepoint {
            name: final_ident(t, j)?,
        }
    } else {
        return None;
    })
}

/// `[AND [NO] CHAIN]` ending the statement.
fn chain(t: &Toks, i: usize) -> Option<bool> {
    let and_chain = kw(t, i, "AND") && kw(t, i + 1, "CHAIN");
    let and_no_chain = kw(t, i, "AND") && kw(t, i + 1, "NO") && kw(t, i + 2, "CHAIN");
    match t.len() - i.min(t.len()) {
        0 => Some(false),
        2 if and_chain => Some(true),
        3 if and_no_chain => Some(false),
        _ => None,
    }
}

/// A transaction mode list ending the statement; `None` on a syntax error.
/// Like the server, the last access mode wins.
pub(super) fn transaction_modes(t: &Toks, mut i: usize) -> Option<Option<bool>> {
    let mut read_only = None;
    let start = i;
    while i < t.len() {
        if i > start && is(t, i, &Token::Comma) {
            i += 1;
        }
        let level = kw(t, i, "ISOLATION") && kw(t, i + 1, "LEVEL");
        let two_words = (kw(t, i + 2, "REPEATABLE") && kw(t, i + 3, "READ"))
            || (kw(t, i + 2, "READ") && kw_any(t, i + 3, &["COMMITTED", "UNCOMMITTED"]));
        i += if level && kw(t, i + 2, "SERIALIZABLE") {
            3
        } else if level && two_words {
            4
        } else if kw(t, i, "READ") && kw_any(t, i + 1, &["ONLY", "WRITE"]) {
            read_only = Some(kw(t, i + 1, "ONLY"));
            2
        } else if kw(t, i, "DEFERRABLE") {
            1
        } else if kw(t, i, "NOT") && kw(t, i + 1, "DEFERRABLE") {
            2
        } else {
            return None;
        };
    }
    Some(read_only)
}
