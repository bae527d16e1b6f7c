//! The read gate: `SELECT`, `VALUES`, `WITH`, `(query)` and `TABLE`, the
//! only statements that may reach a replica.
//!
//! Two checks, both of which must pass. First a scan of the tokens for
//! side effects (a writing function call, `INTO`, `FOR UPDATE`/`SHARE`, a
//! data-modifying CTE): cheap and over-approximating, because a false
//! alarm costs one trip to the primary and a miss costs an error or a
//! stale session. Then sqlparser must parse the statement as a query; this
//! is the only place the parser runs, and anything it rejects, even valid
//! PostgreSQL, goes to the primary.

use sqlparser::ast::{SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use super::functions::{function_effect, Effect};
use super::statement::{pin, read, write, write_keyword_reason, Context};
use super::tokens::{in_pg_temp, is, kw, kw_any, lparen, qualified_name_end, tok, Toks};
use super::{Kind, PinReason, UNPARSABLE};

/// SELECT / VALUES / WITH / `(`: a read only if no token shows a side
/// effect and sqlparser agrees it is a query.
pub(super) fn query(cx: &Context, t: &Toks, reason: &'static str) -> Kind {
    if let Some(effect) = query_side_effect(cx, t) {
        return effect;
    }
    match parse_query(t) {
        Ok(()) => read(reason),
        Err(reason) => write(reason),
    }
}

fn query_side_effect(cx: &Context, t: &Toks) -> Option<Kind> {
    let function = function_effect(cx, t);
    if let Some(Effect::Pin(p)) = function {
        return Some(pin(p));
    }
    let into = (0..t.len()).find(|&i| kw(t, i, "INTO"));
    if let Some(i) = into {
        let temp = |j| kw_any(t, j, &["TEMP", "TEMPORARY"]);
        let local = kw_any(t, i + 1, &["LOCAL", "GLOBAL"]) && temp(i + 2);
        if temp(i + 1) || local || in_pg_temp(t, i + 1) {
            return Some(pin(PinReason::TempTable));
        }
    }
    let dml = |i| {
        ["INSERT", "UPDATE", "DELETE", "MERGE"]
            .into_iter()
            .find(|k| kw(t, i, k))
    };
    // `( DELETE` can only be a data-modifying CTE body.
    if (1..t.len()).any(|i| lparen(t, i - 1) && dml(i).is_some()) {
        return Some(write("data-modifying CTE"));
    }
    if kw(t, 0, "WITH") {
        // The main statement after the CTE list, at parenthesis depth 0.
        let mut depth = 0usize;
        for i in 0..t.len() {
            match tok(t, i) {
                Some(Token::LParen) => depth += 1,
                Some(Token::RParen) => depth = depth.saturating_sub(1),
                _ if depth > 0 || kw_any(t, i.wrapping_sub(1), &["FOR", "KEY"]) => {}
                _ => {
                    if let Some(reason) = dml(i).and_then(write_keyword_reason) {
                        return Some(write(reason));
                    }
                }
            }
        }
    }
    if into.is_some() {
        return Some(write("select into"));
    }
    for i in 0..t.len() {
        let no_key_update = kw(t, i + 1, "NO") && kw(t, i + 2, "KEY") && kw(t, i + 3, "UPDATE");
        let key_share = kw(t, i + 1, "KEY") && kw(t, i + 2, "SHARE");
        if kw(t, i, "FOR") && (kw(t, i + 1, "UPDATE") || no_key_update) {
            return Some(write("for update"));
        }
        if kw(t, i, "FOR") && (kw(t, i + 1, "SHARE") || key_share) {
            return Some(write("for share"));
        }
    }
    match function {
        Some(Effect::Write(reason)) => Some(write(reason)),
        _ => None,
    }
}

/// sqlparser 0.59 parses a function call's arguments twice (once as a
/// possible `name => value`, then again), so everything inside a call is
/// parsed twice per call around it, `f(f(f(...)))`, and more than three
/// times per `CASE (`: thirty levels, a hundred bytes, would hold a worker
/// thread for hours, and a 64 KiB text of ten-deep calls for seconds. So
/// the read gate estimates the work first: each token counts 4 to the
/// power of the parentheses after a word (a function name, `CASE`, `IN`,
/// `FROM`...) around it, which is where that multiplying starts. A
/// statement over this budget, one ten-deep nest or so, or a few hundred
/// thousand shallow tokens, goes to the primary, like any text the parser
/// rejects; the estimate itself is one pass.
const MAX_PARSE_COST: u64 = 1 << 23;

/// The estimated work of parsing `t`, saturating.
fn parse_cost(t: &Toks) -> u64 {
    let mut open = Vec::new();
    let (mut calls, mut cost) = (0u32, 0u64);
    for i in 0..t.len() {
        match tok(t, i) {
            Some(Token::LParen) => {
                let call = matches!(tok(t, i.wrapping_sub(1)), Some(Token::Word(_)));
                open.push(call);
                calls += u32::from(call);
            }
            Some(Token::RParen) => {
                if let Some(call) = open.pop() {
                    calls -= u32::from(call);
                }
            }
            _ => {}
        }
        cost = cost.saturating_add(4u64.saturating_pow(calls));
    }
    cost
}

fn parse_query(t: &Toks) -> Result<(), &'static str> {
    if parse_cost(t) > MAX_PARSE_COST {
        return Err(UNPARSABLE);
    }
    let tokens = t.iter().map(|l| l.token.clone()).collect();
    let statements = Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|_| UNPARSABLE)?;
    match statements.as_slice() {
        [Statement::Query(query)] => match query.body.as_ref() {
            SetExpr::Insert(_) => Err("insert"),
            SetExpr::Update(_) => Err("update"),
            SetExpr::Delete(_) => Err("delete"),
            SetExpr::Merge(_) => Err("merge"),
            _ => Ok(()),
        },
        _ => Err(UNPARSABLE),
    }
}

/// `TABLE [ONLY] name [*]`, which sqlparser does not know.
pub(super) fn table(cx: &Context, t: &Toks) -> Kind {
    let name_end = qualified_name_end(t, if kw(t, 1, "ONLY") { 2 } else { 1 });
    let end = name_end.map(|end| end + usize::from(is(t, end, &Token::Mul)));
    if end == Some(t.len()) {
        read("table")
    } else {
        query(cx, t, "table")
    }
}
