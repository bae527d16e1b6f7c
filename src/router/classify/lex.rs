//! From SQL text to lexemes and statements.
//!
//! sqlparser's PostgreSQL tokenizer does the lexing, so strings (a
//! backslash does not escape), `E''` strings, dollar quotes, nested
//! comments and quoted identifiers are never read as SQL by anything
//! downstream. It reports line and column; the router needs byte ranges
//! (statement spans, verbatim replay text), so [`lex`] converts them in one
//! forward pass. [`split`] then cuts the token stream into statements at
//! `;` the way the server does, not the way a character scan would.
//! The routing hint is read here too: it is a comment lexeme in front of a
//! statement's first token.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use super::tokens::is_keyword;
use super::Hint;

/// A token with its byte range in the text (sqlparser gives line/column).
pub(super) struct Lexeme {
    pub(super) token: TokenWithSpan,
    pub(super) start: usize,
    pub(super) end: usize,
}

pub(super) fn lex(sql: &str) -> Option<Vec<Lexeme>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    let mut cursor = ByteCursor {
        chars: sql.chars(),
        at: Location::new(1, 1),
        byte: 0,
    };
    Some(
        tokens
            .into_iter()
            .map(|token| {
                let start = cursor.seek(token.span.start);
                let end = cursor.seek(token.span.end);
                Lexeme { token, start, end }
            })
            .collect(),
    )
}

/// Walks the text forward, counting lines and columns as the tokenizer
/// does (a column is a char, `\n` starts a line), to turn token locations
/// into byte offsets in one pass.
struct ByteCursor<'a> {
    chars: std::str::Chars<'a>,
    at: Location,
    byte: usize,
}

impl ByteCursor<'_> {
    fn seek(&mut self, target: Location) -> usize {
        while (self.at.line, self.at.column) < (target.line, target.column) {
            let Some(c) = self.chars.next() else { break };
            self.byte += c.len_utf8();
            if c == '\n' {
                self.at = Location::new(self.at.line + 1, 1);
            } else {
                self.at.column += 1;
            }
        }
        self.byte
    }
}

/// Splits at `;` the way the server's grammar does: not inside parentheses
/// (`CREATE RULE ... DO (a; b)`) nor inside the `BEGIN ATOMIC ... END` body
/// of a `CREATE [OR REPLACE] FUNCTION|PROCEDURE` (psql's heuristic, but
/// counting `BEGIN` only before `ATOMIC`, so a function named `begin` does
/// not swallow the next statements).
pub(super) fn split(lexemes: &[Lexeme]) -> Vec<&[Lexeme]> {
    let mut pieces = Vec::new();
    let (mut start, mut parens, mut atomic) = (0, 0usize, 0usize);
    let mut head: Vec<&str> = Vec::new();
    for (i, lexeme) in lexemes.iter().enumerate() {
        match &lexeme.token.token {
            Token::SemiColon if parens == 0 && atomic == 0 => {
                pieces.push(&lexemes[start..i]);
                start = i + 1;
                head.clear();
            }
            Token::LParen => parens += 1,
            Token::RParen => parens = parens.saturating_sub(1),
            Token::Word(w) if w.quote_style.is_none() => {
                if head.len() < 4 {
                    head.push(&w.value);
                }
                if parens == 0 && defines_routine(&head) {
                    let word = |k: &str| w.value.eq_ignore_ascii_case(k);
                    let opens = word("begin") && next_is_atomic(&lexemes[i + 1..]);
                    if opens || (atomic > 0 && word("case")) {
                        atomic += 1;
                    } else if atomic > 0 && word("end") {
                        atomic -= 1;
                    }
                }
            }
            _ => {}
        }
    }
    pieces.push(&lexemes[start..]);
    pieces
}

fn defines_routine(head: &[&str]) -> bool {
    let is = |i: usize, word: &str| head.get(i).is_some_and(|w| w.eq_ignore_ascii_case(word));
    let routine = |i: usize| is(i, "function") || is(i, "procedure");
    is(0, "create") && (routine(1) || (is(1, "or") && is(2, "replace") && routine(3)))
}

fn next_is_atomic(rest: &[Lexeme]) -> bool {
    let next = rest
        .iter()
        .find(|l| !matches!(l.token.token, Token::Whitespace(_)));
    next.is_some_and(|l| is_keyword(&l.token.token, "atomic"))
}

/// `causeway: primary|replica`, any case, any whitespace around the parts.
pub(super) fn parse_hint(comment: &str) -> Option<Hint> {
    let text = comment.trim();
    let prefix = text.get(..8)?;
    if !prefix.eq_ignore_ascii_case("causeway") {
        return None;
    }
    let target = text.get(8..)?.trim_start().strip_prefix(':')?.trim();
    if target.eq_ignore_ascii_case("primary") {
        Some(Hint::Primary)
    } else if target.eq_ignore_ascii_case("replica") {
        Some(Hint::Replica)
    } else {
        None
    }
}
