//! Reading one statement's tokens by position: `kw(t, 2, "READ")`,
//! `ident(t, 1)`, `matching_paren(t, i)`...
//!
//! Every grammar in this module is written as exact index checks over a
//! statement's [`Toks`] rather than with sqlparser's AST, which lacks many
//! of these statements. An index past the end simply does not match, so a
//! grammar that meets something unexpected returns `None` and the
//! statement goes to the primary. Keywords match unquoted words only: as
//! in the server, quoting turns a keyword into an identifier.

use sqlparser::tokenizer::Token;

use super::lex::Lexeme;

/// The tokens of one statement, whitespace and comments left out.
pub(super) type Toks<'a> = [&'a Lexeme];

pub(super) fn tok<'a>(t: &'a Toks, i: usize) -> Option<&'a Token> {
    t.get(i).map(|l| &l.token.token)
}

pub(super) fn is(t: &Toks, i: usize, token: &Token) -> bool {
    tok(t, i) == Some(token)
}

pub(super) fn lparen(t: &Toks, i: usize) -> bool {
    is(t, i, &Token::LParen)
}

/// An unquoted keyword (quoting makes a keyword an identifier).
pub(super) fn is_keyword(token: &Token, keyword: &str) -> bool {
    match token {
        Token::Word(w) => w.quote_style.is_none() && w.value.eq_ignore_ascii_case(keyword),
        _ => false,
    }
}

pub(super) fn kw(t: &Toks, i: usize, keyword: &str) -> bool {
    tok(t, i).is_some_and(|token| is_keyword(token, keyword))
}

pub(super) fn kw_any(t: &Toks, i: usize, keywords: &[&str]) -> bool {
    keywords.iter().any(|k| kw(t, i, k))
}

/// An identifier as the server folds it: unquoted is lowercased.
pub(super) fn ident(t: &Toks, i: usize) -> Option<String> {
    match tok(t, i)? {
        Token::Word(w) if w.quote_style.is_some() => Some(w.value.clone()),
        Token::Word(w) => Some(w.value.to_ascii_lowercase()),
        _ => None,
    }
}

/// An identifier that ends the statement.
pub(super) fn final_ident(t: &Toks, i: usize) -> Option<String> {
    ident(t, i).filter(|_| t.len() == i + 1)
}

/// `ALL` (`None`) or a name, ending the statement.
pub(super) fn name_or_all(t: &Toks, i: usize) -> Option<Option<String>> {
    if kw(t, i, "ALL") && t.len() == i + 1 {
        Some(None)
    } else {
        final_ident(t, i).map(Some)
    }
}

/// A string literal that ends the statement.
pub(super) fn final_string(t: &Toks, i: usize) -> Option<String> {
    string_lit(t, i).filter(|_| t.len() == i + 1)
}

pub(super) fn string_lit(t: &Toks, i: usize) -> Option<String> {
    match tok(t, i)? {
        Token::SingleQuotedString(s)
        | Token::EscapedStringLiteral(s)
        | Token::UnicodeStringLiteral(s)
        | Token::NationalStringLiteral(s) => Some(s.clone()),
        Token::DollarQuotedString(d) => Some(d.value.clone()),
        _ => None,
    }
}

/// A configuration parameter name, `a` or `a.b`, lowercased (the server
/// compares them case-insensitively even when quoted), and where it ends.
pub(super) fn var_name(t: &Toks, i: usize) -> Option<(String, usize)> {
    let Some(Token::Word(first)) = tok(t, i) else {
        return None;
    };
    let mut name = first.value.to_ascii_lowercase();
    let mut j = i + 1;
    while is(t, j, &Token::Period) {
        let Some(Token::Word(part)) = tok(t, j + 1) else {
            return None;
        };
        name.push('.');
        name.push_str(&part.value.to_ascii_lowercase());
        j += 2;
    }
    Some((name, j))
}

/// Where `name[.name...]` starting at `i` ends.
pub(super) fn qualified_name_end(t: &Toks, i: usize) -> Option<usize> {
    var_name(t, i).map(|(_, end)| end)
}

pub(super) fn starts_query(t: &Toks, i: usize) -> bool {
    kw_any(t, i, &["SELECT", "WITH", "VALUES", "TABLE"]) || lparen(t, i)
}

/// The index of the `)` closing the `(` at `open`.
pub(super) fn matching_paren(t: &Toks, open: usize) -> Option<usize> {
    if !lparen(t, open) {
        return None;
    }
    let mut depth = 0usize;
    for (i, lexeme) in t.iter().enumerate().skip(open) {
        match lexeme.token.token {
            Token::LParen => depth += 1,
            Token::RParen if depth <= 1 => return Some(i),
            Token::RParen => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Splits a list at its top-level commas.
pub(super) fn split_commas<'t, 'a>(t: &'t Toks<'a>) -> Vec<&'t Toks<'a>> {
    let mut parts = Vec::new();
    let (mut start, mut depth) = (0, 0usize);
    for (i, lexeme) in t.iter().enumerate() {
        match lexeme.token.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Comma if depth == 0 => {
                parts.push(&t[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&t[start..]);
    parts
}

pub(super) fn in_pg_temp(t: &Toks, i: usize) -> bool {
    let schema = match tok(t, i) {
        Some(Token::Word(w)) => w.value.eq_ignore_ascii_case("pg_temp"),
        _ => false,
    };
    schema && is(t, i + 1, &Token::Period)
}
