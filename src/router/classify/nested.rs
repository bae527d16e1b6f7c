//! Statements that carry another statement: `EXPLAIN`, `COPY` and
//! `DECLARE ... CURSOR`.
//!
//! The inner statement is classified like any other; the outer one only
//! decides how its verdict carries over. `EXPLAIN` without `ANALYZE` never
//! starts the executor, so it is a read whatever it explains; `COPY (query)
//! TO STDOUT` and a cursor without `HOLD` are as much reads as their query;
//! `COPY ... FROM`, a `COPY` to a server file or program, and a cursor
//! `WITH HOLD` (which outlives the block) are not.

use sqlparser::tokenizer::Token;

use super::statement::{classify_tokens, pin, read, write, Context};
use super::tokens::{
    ident, kw, kw_any, lparen, matching_paren, qualified_name_end, split_commas, starts_query, Toks,
};
use super::{Kind, PinReason, SessionChange};

/// The verdict on a statement nested in another (EXPLAIN ANALYZE, COPY
/// (query), DECLARE): a read keeps `reason`, a write or pin passes through,
/// anything else is not allowed there.
fn nested(cx: &Context, t: &Toks, reason: &'static str) -> Option<Kind> {
    match classify_tokens(cx, t) {
        Kind::Read { .. } => Some(read(reason)),
        effect @ (Kind::Write { .. } | Kind::SessionState(SessionChange::Pin(_))) => Some(effect),
        _ => None,
    }
}

pub(super) fn explain(cx: &Context, t: &Toks) -> Option<Kind> {
    let (analyze, i) = if kw_any(t, 1, &["ANALYZE", "ANALYSE"]) {
        (true, if kw(t, 2, "VERBOSE") { 3 } else { 2 })
    } else if kw(t, 1, "VERBOSE") {
        (false, 2)
    } else if lparen(t, 1) && !starts_query(t, 2) {
        let close = matching_paren(t, 1)?;
        let options = split_commas(&t[2..close]);
        (
            options.iter().any(|option| analyze_option(option)),
            close + 1,
        )
    } else {
        (false, 1)
    };
    let inner = t.get(i..).filter(|inner| !inner.is_empty())?;
    if !analyze {
        // Planning only: the executor never starts, so even a write is a read.
        return Some(read("explain"));
    }
    Some(match nested(cx, inner, "explain analyze") {
        Some(Kind::Write { .. }) | None => write("explain analyze of write"),
        Some(kind) => kind,
    })
}

/// `ANALYZE [value]` in an EXPLAIN option list; the server takes false,
/// off and 0 (any case, quoted or not) as false.
fn analyze_option(option: &Toks) -> bool {
    let falsy = |s: &str| {
        ["false", "off", "0"]
            .iter()
            .any(|f| s.eq_ignore_ascii_case(f))
    };
    kw_any(option, 0, &["ANALYZE", "ANALYSE"])
        && match option.get(1..).unwrap_or_default() {
            [value] => match &value.token.token {
                Token::Word(w) => !falsy(&w.value),
                Token::Number(n, _) => !falsy(n),
                Token::SingleQuotedString(s) => !falsy(s),
                _ => true,
            },
            _ => true,
        }
}

/// `COPY [BINARY] table [(columns)] FROM|TO ...` or `COPY (query) TO ...`.
pub(super) fn copy(cx: &Context, t: &Toks) -> Option<Kind> {
    let mut i = if lparen(t, 1) {
        let close = matching_paren(t, 1)?;
        let source = nested(cx, &t[2..close], "copy to stdout")?;
        if !matches!(source, Kind::Read { .. }) {
            return Some(source);
        }
        close + 1
    } else {
        qualified_name_end(t, if kw(t, 1, "BINARY") { 2 } else { 1 })?
    };
    if lparen(t, i) {
        i = matching_paren(t, i)? + 1;
    }
    Some(if kw(t, i, "FROM") {
        write("copy from")
    } else if !kw(t, i, "TO") {
        return None;
    } else if kw(t, i + 1, "STDOUT") {
        read("copy to stdout")
    } else if kw(t, i + 1, "PROGRAM") {
        write("copy to program")
    } else {
        // A file on the server's disk: the primary is the server meant.
        write("copy to file")
    })
}

/// `DECLARE name [BINARY] [ASENSITIVE|INSENSITIVE] [[NO] SCROLL] CURSOR
/// [{WITH|WITHOUT} HOLD] FOR query`. Without HOLD the cursor lives in the
/// current block, so it is as much a read as its query.
pub(super) fn declare(cx: &Context, t: &Toks) -> Option<Kind> {
    let name = ident(t, 1)?;
    let mut i = 2;
    while kw_any(
        t,
        i,
        &["BINARY", "ASENSITIVE", "INSENSITIVE", "NO", "SCROLL"],
    ) {
        i += 1;
    }
    if !kw(t, i, "CURSOR") {
        return None;
    }
    let hold = kw(t, i + 1, "WITH") && kw(t, i + 2, "HOLD");
    if hold || (kw(t, i + 1, "WITHOUT") && kw(t, i + 2, "HOLD")) {
        i += 2;
    }
    let query = t
        .get(i + 2..)
        .filter(|q| kw(t, i + 1, "FOR") && !q.is_empty())?;
    if hold {
        return Some(pin(PinReason::CursorWithHold { name }));
    }
    nested(cx, query, "declare cursor")
}
