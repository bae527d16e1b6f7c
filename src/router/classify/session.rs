//! Session state: `SET` (in all its special forms), `RESET`, `DISCARD`,
//! `PREPARE` and `EXECUTE`.
//!
//! A session's state has to follow it to every backend it uses, so these
//! verdicts carry what the router needs to replay or forget it: the
//! parameter name as the server folds it, the scope, and the statement's
//! own text for verbatim replay. `PREPARE` records the verdict of its body
//! so that a later `EXECUTE name` can be routed like the body itself.
//! `SET TRANSACTION` and `SET SESSION CHARACTERISTICS` are read here
//! because they share the `SET` prefix, but their verdicts are
//! transaction control and transaction defaults.
//!
//! `SELECT set_config('name', value, false)` is a `SET` in other words,
//! and frameworks send it on every new connection (Django's time zone):
//! when it is the whole statement, with a literal name and flag and a
//! literal or `$n` value, it is session state like `SET`, not a pin.

use sqlparser::tokenizer::Token;

use super::functions::{function_effect, Effect};
use super::statement::{classify_tokens, pin, session, write, Context};
use super::tokens::{
    final_string, ident, is, kw, kw_any, lparen, matching_paren, string_lit, tok, var_name, Toks,
};
use super::transaction::transaction_modes;
use super::{ConfigValue, DiscardTarget, Kind, SessionChange, SetScope, TxControl};

/// `PREPARE TRANSACTION 'gid'` or `PREPARE name [(types)] AS statement`.
pub(super) fn prepare(cx: &Context, t: &Toks) -> Option<Kind> {
    if kw(t, 1, "TRANSACTION") && string_lit(t, 2).is_some() {
        let gid = final_string(t, 2)?;
        return Some(Kind::Transaction(TxControl::PrepareTransaction { gid }));
    }
    let name = ident(t, 1)?;
    let i = if lparen(t, 2) {
        matching_paren(t, 2)? + 1
    } else {
        2
    };
    let inner = t
        .get(i + 1..)
        .filter(|inner| kw(t, i, "AS") && !inner.is_empty())?;
    let inner = Box::new(classify_tokens(cx, inner));
    Some(session(SessionChange::Prepare {
        name,
        inner,
        statement: cx.text(t),
    }))
}

/// `EXECUTE name [(arguments)]`: the arguments may call writing functions.
pub(super) fn execute(cx: &Context, t: &Toks) -> Option<Kind> {
    let name = ident(t, 1)?;
    if t.len() > 2 && matching_paren(t, 2) != Some(t.len() - 1) {
        return None;
    }
    Some(match function_effect(cx, t.get(2..).unwrap_or_default()) {
        Some(Effect::Pin(p)) => pin(p),
        Some(Effect::Write(reason)) => write(reason),
        None => Kind::Execute { name },
    })
}

pub(super) fn set(cx: &Context, t: &Toks) -> Option<Kind> {
    let (scope, i) = if kw(t, 1, "LOCAL") {
        (SetScope::Local, 2)
    } else if kw(t, 1, "SESSION") && !kw_any(t, 2, &["AUTHORIZATION", "CHARACTERISTICS"]) {
        (SetScope::Session, 2)
    } else {
        (SetScope::Session, 1)
    };
    let statement = cx.text(t);
    let words = |words: &[&str]| words.iter().enumerate().all(|(k, w)| kw(t, i + k, w));
    let assigns = |j| kw(t, j, "TO") || is(t, j, &Token::Eq);
    let has_value = |j| t.len() > j;
    if words(&["TRANSACTION", "SNAPSHOT"]) {
        final_string(t, i + 2)?;
        return Some(Kind::Transaction(TxControl::SetTransaction {
            modes: Default::default(),
        }));
    }
    if words(&["TRANSACTION"]) && has_value(i + 1) {
        let modes = transaction_modes(t, i + 1)?;
        return Some(Kind::Transaction(TxControl::SetTransaction { modes }));
    }
    if words(&["SESSION", "CHARACTERISTICS", "AS", "TRANSACTION"]) && has_value(i + 4) {
        let modes = transaction_modes(t, i + 4)?;
        return Some(session(SessionChange::TransactionDefaults {
            modes,
            statement,
        }));
    }
    // `name TO|= value` first: as in the server's grammar, a keyword of
    // the special forms followed by TO or = is just a parameter name.
    // All forms take a value except SET NAMES (the default encoding).
    let generic = var_name(t, i).filter(|&(_, j)| assigns(j));
    let (name, scope) = match generic {
        // `transaction_isolation` and friends are the current block's
        // modes under another name: they end with it.
        Some((name, j)) if has_value(j + 1) && name.starts_with("transaction_") => {
            (name, SetScope::Local)
        }
        Some((name, j)) if has_value(j + 1) => (name, scope),
        Some(_) => return None,
        None if words(&["TIME", "ZONE"]) && has_value(i + 2) => ("timezone".into(), scope),
        None if words(&["SESSION", "AUTHORIZATION"]) && has_value(i + 2) => {
            ("session_authorization".into(), scope)
        }
        None if words(&["XML", "OPTION"]) && has_value(i + 2) => ("xmloption".into(), scope),
        None if words(&["ROLE"]) && has_value(i + 1) => ("role".into(), scope),
        None if words(&["SCHEMA"]) && has_value(i + 1) => ("search_path".into(), scope),
        None if words(&["NAMES"]) => ("client_encoding".into(), scope),
        None if words(&["CATALOG"]) && has_value(i + 1) => ("catalog".into(), scope),
        // SET CONSTRAINTS lasts until the end of the transaction.
        None if words(&["CONSTRAINTS"]) && has_value(i + 1) => {
            ("constraints".into(), SetScope::Local)
        }
        None => match var_name(t, i)? {
            (name, j) if kw(t, j, "FROM") && kw(t, j + 1, "CURRENT") && t.len() == j + 2 => {
                (name, scope)
            }
            _ => return None,
        },
    };
    Some(session(SessionChange::Set {
        name,
        scope,
        statement,
    }))
}

/// `SELECT [pg_catalog.]set_config('name', value, false) [[AS] alias]`:
/// a session-level setting the router can replay. The value is a literal
/// or a `$n` parameter (taken from the Bind). Anything else (a computed
/// value, a flag that is not a literal false) is `None`, and the call's
/// usual verdict (a pin) stands.
pub(super) fn select_set_config(cx: &Context, t: &Toks) -> Option<Kind> {
    let items = super::tokens::split_commas(t.get(1..)?);
    let mut settings = Vec::new();
    for item in &items {
        let item = without_alias(item);
        match config_call(item)? {
            ConfigCall::Set(name, value) => settings.push((name, value)),
            ConfigCall::Read => {}
        }
    }
    match settings.as_mut_slice() {
        [] => None,
        // One setting alone: replay the statement itself.
        [(name, ConfigValue::Literal(_))] if items.len() == 1 => {
            Some(session(SessionChange::Set {
                name: std::mem::take(name),
                scope: SetScope::Session,
                statement: cx.text(t),
            }))
        }
        [(name, ConfigValue::Parameter(param))] if items.len() == 1 => {
            Some(session(SessionChange::SetFromParameter {
                name: std::mem::take(name),
                param: *param,
            }))
        }
        // Several, or beside reads of settings (asyncpg's type
        // introspection: `SELECT current_setting('jit'), set_config('jit',
        // 'off', false)`): each replayed on its own.
        _ => Some(session(SessionChange::SetMany(settings))),
    }
}

/// An item of a select list without its `[AS] alias`.
fn without_alias<'t, 'a>(item: &'t Toks<'a>) -> &'t Toks<'a> {
    let n = item.len();
    let word = |i: usize| matches!(tok(item, i), Some(Token::Word(_)));
    if n >= 3 && kw(item, n - 2, "AS") && word(n - 1) {
        &item[..n - 2]
    } else if n >= 2 && word(n - 1) && is(item, n - 2, &Token::RParen) {
        &item[..n - 1]
    } else {
        item
    }
}

enum ConfigCall {
    /// `set_config('name', value, false)`.
    Set(String, ConfigValue),
    /// `current_setting('name' [, missing_ok])`: reads, changes nothing.
    Read,
}

/// A select-list item that is exactly a call of `set_config` at session
/// level with a literal name, or of `current_setting`; `None` otherwise.
fn config_call(item: &Toks) -> Option<ConfigCall> {
    let mut i = 0;
    if kw(item, 0, "PG_CATALOG") && is(item, 1, &Token::Period) {
        i = 2;
    }
    let reads = kw(item, i, "CURRENT_SETTING");
    if !(reads || kw(item, i, "SET_CONFIG")) || !lparen(item, i + 1) {
        return None;
    }
    let close = matching_paren(item, i + 1)?;
    if close + 1 != item.len() {
        return None;
    }
    let args = super::tokens::split_commas(&item[i + 2..close]);
    let literal = |arg: &&Toks| match arg {
        [one] => match &one.token.token {
            Token::SingleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    };
    if reads {
        return match args.as_slice() {
            [name] | [name, _] => literal(name).map(|_| ConfigCall::Read),
            _ => None,
        };
    }
    let [name, [value], [flag]] = args.as_slice() else {
        return None;
    };
    let name = literal(name)?.to_ascii_lowercase();
    let is_false = match &flag.token.token {
        Token::Word(w) => w.quote_style.is_none() && w.value.eq_ignore_ascii_case("false"),
        Token::SingleQuotedString(s) => ["f", "false", "off", "no", "0"]
            .iter()
            .any(|v| s.eq_ignore_ascii_case(v)),
        _ => false,
    };
    if !is_false || name.is_empty() {
        return None;
    }
    let value = match &value.token.token {
        Token::SingleQuotedString(s) => ConfigValue::Literal(s.clone()),
        Token::Placeholder(p) => {
            ConfigValue::Parameter(p.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1)?)
        }
        _ => return None,
    };
    Some(ConfigCall::Set(name, value))
}

pub(super) fn reset(t: &Toks) -> Option<SessionChange> {
    let words = |words: &[&str]| words.iter().enumerate().all(|(k, w)| kw(t, 1 + k, w));
    if words(&["ALL"]) && t.len() == 2 {
        return Some(SessionChange::ResetAll);
    }
    let (name, end) = if words(&["TIME", "ZONE"]) {
        ("timezone".into(), 3)
    } else if words(&["SESSION", "AUTHORIZATION"]) {
        ("session_authorization".into(), 3)
    } else if words(&["TRANSACTION", "ISOLATION", "LEVEL"]) {
        ("transaction_isolation".into(), 4)
    } else {
        var_name(t, 1)?
    };
    (end == t.len()).then_some(SessionChange::Reset { name })
}

pub(super) fn discard(t: &Toks) -> Option<DiscardTarget> {
    let target = match tok(t, 1)? {
        Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
        _ => return None,
    };
    let target = match target.as_str() {
        "ALL" => DiscardTarget::All,
        "PLANS" => DiscardTarget::Plans,
        "SEQUENCES" => DiscardTarget::Sequences,
        "TEMP" | "TEMPORARY" => DiscardTarget::Temp,
        _ => return None,
    };
    (t.len() == 2).then_some(target)
}
