//! A `DO` block's body, read for what it may do to the session.
//!
//! Postgres 15 reports no custom setting, so a `PERFORM set_config(...)` or
//! a `SET` inside a body would stay on the server connection unseen. The
//! body is lexed like SQL (PL/pgSQL is SQL-shaped where it matters) and
//! read for what `crate::catalog` reads function sources for: a call of
//! `set_config`, a `SET` or `RESET` that starts a statement, an `EXECUTE`
//! string that starts with one, and the functions it calls, which the
//! catalog may know as setters. A body that cannot be lexed may do
//! anything.

use sqlparser::tokenizer::Token;

use super::functions::called_names;
use super::lex::lex;

/// What a `DO` block may do that the proxy must know of.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DoBody {
    /// It may change the session's settings itself.
    pub sets: bool,
    /// The functions it calls, lowercased.
    pub calls: Vec<String>,
}

/// Reads the `DO` statement `statement` (`DO [LANGUAGE x] 'body'`).
pub fn do_body(statement: &str) -> DoBody {
    let unknown = DoBody {
        sets: true,
        calls: Vec::new(),
    };
    let Some(lexemes) = lex(statement) else {
        return unknown;
    };
    let body = lexemes.iter().find_map(|l| match &l.token.token {
        Token::DollarQuotedString(d) => Some(d.value.clone()),
        Token::SingleQuotedString(s) | Token::EscapedStringLiteral(s) => Some(s.clone()),
        _ => None,
    });
    let Some(body) = body else {
        return unknown;
    };
    let Some(tokens) = lex(&body) else {
        return unknown;
    };
    let calls = called_names(&tokens);
    let mut sets = calls.iter().any(|c| c == "set_config");
    // The token before each one, whitespace and comments left out.
    let mut before: Option<&Token> = None;
    for lexeme in &tokens {
        let token = &lexeme.token.token;
        if matches!(token, Token::Whitespace(_)) {
            continue;
        }
        sets |= match token {
            Token::Word(w) if w.quote_style.is_none() && is_set(&w.value) => {
                starts_statement(before)
            }
            Token::SingleQuotedString(s)
            | Token::EscapedStringLiteral(s)
            | Token::DollarQuotedString(sqlparser::ast::DollarQuotedString { value: s, .. }) => {
                s.split_whitespace().next().is_some_and(is_set)
            }
            _ => false,
        };
        before = Some(token);
    }
    DoBody { sets, calls }
}

fn is_set(word: &str) -> bool {
    word.eq_ignore_ascii_case("set") || word.eq_ignore_ascii_case("reset")
}

/// Whether a word after `before` starts a statement of PL/pgSQL.
fn starts_statement(before: Option<&Token>) -> bool {
    match before {
        None | Some(Token::SemiColon) => true,
        Some(Token::Word(w)) if w.quote_style.is_none() => ["begin", "then", "else", "loop"]
            .iter()
            .any(|k| w.value.eq_ignore_ascii_case(k)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets(sql: &str) -> bool {
        do_body(sql).sets
    }

    #[test]
    fn settings_changed_in_a_body_are_seen() {
        assert!(sets(
            "DO $$ BEGIN PERFORM set_config('app.t', '1', false); END $$"
        ));
        assert!(sets("DO $$ BEGIN SET search_path = app; END $$"));
        assert!(sets("DO $$ BEGIN IF true THEN RESET app.t; END IF; END $$"));
        assert!(sets("DO $$ BEGIN EXECUTE 'SET app.t = 1'; END $$"));
        assert!(sets(
            "DO $$ BEGIN EXECUTE format('set %I = %L', 'a.b', 'c'); END $$"
        ));
        assert!(sets("DO LANGUAGE plpgsql 'BEGIN SET app.t = 1; END'"));
        assert!(
            sets("DO $$ BEGIN PERFORM 'unterminated; END $$"),
            "unreadable"
        );
    }

    #[test]
    fn bodies_that_only_work_change_nothing() {
        assert!(!sets(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'mood') \
             THEN CREATE TYPE mood AS ENUM ('sad', 'ok'); END IF; END $$"
        ));
        assert!(!sets(
            "DO $$ BEGIN UPDATE t SET x = 1; INSERT INTO t VALUES (2); END $$"
        ));
        assert!(!sets(
            "DO $$ BEGIN INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET x = 2; END $$"
        ));
    }

    #[test]
    fn calls_in_a_body_are_listed_for_the_catalog() {
        let body = do_body("DO $$ BEGIN PERFORM app.set_tenant(42); PERFORM lower('X'); END $$");
        assert!(!body.sets);
        assert!(
            body.calls.contains(&"set_tenant".to_string()),
            "{:?}",
            body.calls
        );
    }
}
