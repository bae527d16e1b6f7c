//! Transaction control: `BEGIN`/`START TRANSACTION`, `COMMIT`/`END`,
//! `ROLLBACK`/`ABORT`, savepoints and two-phase commit, plus the
//! transaction mode lists that `SET TRANSACTION` shares.
//!
//! The router follows transaction blocks from these verdicts, so each
//! grammar accepts exactly the forms the server does and answers `None`
//! for anything else (`BEGIN ISOLATION LEVEL BOGUS`): such a statement goes
//! to the primary as unparsable instead of being taken for a block
//! boundary. The modes are kept: `READ ONLY` blocks may run on a replica,
//! and `SERIALIZABLE` ones may not (a hot standby refuses them).

use sqlparser::tokenizer::Token;

use super::tokens::{final_ident, final_string, is, kw, kw_any, Toks};
use super::{TxControl, TxModes};

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
            modes: transaction_modes(t, to)?,
        }
    } else if kw(t, 0, "START") && kw(t, 1, "TRANSACTION") {
        TxControl::Begin {
            modes: transaction_modes(t, 2)?,
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
/// Like the server, the last mode of each kind wins.
pub(super) fn transaction_modes(t: &Toks, mut i: usize) -> Option<TxModes> {
    let mut modes = TxModes::default();
    let start = i;
    while i < t.len() {
        if i > start && is(t, i, &Token::Comma) {
            i += 1;
        }
        let level = kw(t, i, "ISOLATION") && kw(t, i + 1, "LEVEL");
        let two_words = if kw(t, i + 2, "REPEATABLE") && kw(t, i + 3, "READ") {
            Some("repeatable read")
        } else if kw(t, i + 2, "READ") && kw(t, i + 3, "COMMITTED") {
            Some("read committed")
        } else if kw(t, i + 2, "READ") && kw(t, i + 3, "UNCOMMITTED") {
            Some("read uncommitted")
        } else {
            None
        };
        i += if level && kw(t, i + 2, "SERIALIZABLE") {
            modes.isolation = Some("serializable");
            3
        } else if let (true, Some(isolation)) = (level, two_words) {
            modes.isolation = Some(isolation);
            4
        } else if kw(t, i, "READ") && kw_any(t, i + 1, &["ONLY", "WRITE"]) {
            modes.read_only = Some(kw(t, i + 1, "ONLY"));
            2
        } else if kw(t, i, "DEFERRABLE") {
            modes.deferrable = Some(true);
            1
        } else if kw(t, i, "NOT") && kw(t, i + 1, "DEFERRABLE") {
            modes.deferrable = Some(false);
            2
        } else {
            return None;
        };
    }
    Some(modes)
}
