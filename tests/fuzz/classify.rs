//! The SQL classifier (`router::classify::classify`), the facts the router
//! reads off it (`router::facts::from_sql`, `cached`), and the
//! literal-blind cache key (`router::normalize::literal_blind_key`): every
//! simple Query and Parse a client sends goes through them.
//!
//! What must hold: no panic and no runaway time on any text under 64 KiB;
//! statement spans lie inside the text, in order, on character
//! boundaries; a statement that writes makes the facts say so; and two
//! texts that share a literal-blind key share a routing verdict, since the
//! cache hands one text's verdict to the other.

use std::cell::RefCell;

use causeway::router::classify::{classify, Classification, Kind, SessionChange};
use causeway::router::facts::{cached, from_sql, FactsCache};
use causeway::router::normalize::literal_blind_key;
use causeway::router::UnitFacts;
use proptest::prelude::*;
use proptest::sample::Index;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::Tokenizer;

use super::check;
use super::corpus::{FRAGMENTS, SQL};
use super::mutate::{apply_text, text_edits, MAX_INPUT};

/// Functions configured as writing, as in the classifier's own corpus.
fn extras() -> Vec<String> {
    vec!["app.mark_seen".to_string(), "Touch_Session".to_string()]
}

thread_local! {
    /// A session-wide facts cache, as the proxy has: texts classified in
    /// one case are found by the next.
    static CACHE: RefCell<FactsCache> = RefCell::new(FactsCache::new(512));
}

/// Classifies `sql` every way the proxy does and checks what must hold of
/// any text.
fn classify_everything(sql: &str) -> Result<Classification, TestCaseError> {
    let extras = extras();
    let c = classify(sql, &extras);
    let mut end = 0;
    for statement in &c.statements {
        let span = statement.span.clone();
        prop_assert!(span.start >= end && span.start <= span.end && span.end <= sql.len());
        prop_assert!(sql.is_char_boundary(span.start) && sql.is_char_boundary(span.end));
        end = span.end;
    }
    match c.statements.as_slice() {
        [] => prop_assert_eq!(&c.kind, &Kind::Read { reason: "empty" }),
        [only] => prop_assert_eq!(&c.kind, &only.kind),
        all => {
            let all_read = all.iter().all(|s| matches!(s.kind, Kind::Read { .. }));
            prop_assert_eq!(matches!(c.kind, Kind::Read { .. }), all_read);
        }
    }
    let facts = from_sql(sql, &extras);
    let writes = c
        .statements
        .iter()
        .any(|s| matches!(s.kind, Kind::Write { .. }));
    prop_assert!(
        !writes || facts.writes(),
        "a write statement, facts {facts:?}"
    );
    let pins = c
        .statements
        .iter()
        .any(|s| matches!(s.kind, Kind::SessionState(SessionChange::Pin(_))));
    prop_assert!(!pins || !facts.pins.is_empty(), "a pin, facts {facts:?}");
    let _ = literal_blind_key(sql);
    CACHE.with(|cache| cached(&cache.borrow(), sql, &extras));
    Ok(c)
}

#[test]
fn classify_any_text() {
    let text = prop_oneof![
        ".{0,120}",
        any::<String>(),
        proptest::collection::vec(any::<u8>(), 0..120)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    check("classify_any_text", text, |sql| {
        classify_everything(&sql)?;
        Ok(())
    });
}

/// Words and fragments in any order: the classifier's grammars see every
/// keyword in every position.
fn token_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => proptest::sample::select(FRAGMENTS).prop_map(String::from),
        1 => proptest::sample::select(SQL).prop_map(String::from),
        1 => "[a-z_]{1,8}",
    ];
    let separator = proptest::sample::select(&[" ", " ", "", "\n", ", "][..]);
    proptest::collection::vec((piece, separator), 0..48).prop_map(|parts| {
        parts
            .into_iter()
            .map(|(piece, separator)| piece + separator)
            .collect()
    })
}

#[test]
fn classify_token_soup() {
    check("classify_token_soup", token_soup(), |sql| {
        classify_everything(&sql)?;
        Ok(())
    });
}

#[test]
fn classify_mutated_sql() {
    let strategy = (proptest::sample::select(SQL), text_edits());
    check("classify_mutated_sql", strategy, |(sql, edits)| {
        let mut text = sql.to_string();
        apply_text(&mut text, &edits);
        classify_everything(&text)?;
        Ok(())
    });
}

/// Long texts, up to 64 KiB, in the shapes that make parsers slow or deep:
/// a statement many times over; the start of one repeated before it
/// (`EXPLAIN ANALYZE EXPLAIN ANALYZE ... SELECT`, `((((...`); and nests of
/// calls, `CASE (`, subqueries or arrays, side by side.
#[derive(Debug, Clone)]
enum Long {
    Repeat {
        statement: &'static str,
        separator: &'static str,
        bytes: usize,
    },
    Prefix {
        statement: &'static str,
        cut: Index,
        bytes: usize,
    },
    Nest {
        open: &'static str,
        close: &'static str,
        depth: usize,
        bytes: usize,
    },
}

/// What opens and closes one level of a nest.
const NESTS: &[(&str, &str)] = &[
    ("f(", ")"),
    ("f(1, ", ")"),
    ("CASE (", ") END"),
    ("CAST(CASE (", ")))"),
    ("coalesce(", ", 0)"),
    ("(SELECT ", ")"),
    ("(", ")"),
    ("ARRAY[", "]"),
    ("x IN (SELECT ", ")"),
    ("EXISTS (SELECT ", ")"),
];

/// `piece`, then `separator`, as often as fits in `bytes`, then `last`.
fn fill(piece: &str, separator: &str, last: &str, bytes: usize) -> String {
    let unit = piece.len() + separator.len();
    let times = (bytes.saturating_sub(last.len()) / unit.max(1)).max(1);
    let mut text = String::with_capacity(bytes);
    for _ in 0..times {
        text.push_str(piece);
        text.push_str(separator);
    }
    text.push_str(last);
    if text.len() > MAX_INPUT {
        let mut end = MAX_INPUT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl Long {
    fn text(&self) -> String {
        match *self {
            Long::Repeat {
                statement,
                separator,
                bytes,
            } => fill(statement, separator, statement, bytes),
            Long::Prefix {
                statement,
                cut,
                bytes,
            } => {
                let mut cut = cut.index(statement.len()).max(1);
                while !statement.is_char_boundary(cut) {
                    cut -= 1;
                }
                fill(&statement[..cut], "", statement, bytes)
            }
            Long::Nest {
                open,
                close,
                depth,
                bytes,
            } => {
                let nest = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                format!("SELECT {}", fill(&nest, ", ", "1", bytes))
            }
        }
    }
}

fn long() -> impl Strategy<Value = Long> {
    let bytes = || 1024..MAX_INPUT;
    prop_oneof![
        (
            proptest::sample::select(SQL),
            proptest::sample::select(&["; ", " ", " UNION ALL ", ", ", "", "\n"][..]),
            bytes(),
        )
            .prop_map(|(statement, separator, bytes)| Long::Repeat {
                statement,
                separator,
                bytes
            }),
        (proptest::sample::select(SQL), any::<Index>(), bytes()).prop_map(
            |(statement, cut, bytes)| Long::Prefix {
                statement,
                cut,
                bytes
            }
        ),
        (proptest::sample::select(NESTS), 1..40usize, bytes()).prop_map(
            |((open, close), depth, bytes)| Long::Nest {
                open,
                close,
                depth,
                bytes
            }
        ),
    ]
}

#[test]
fn classify_long_sql() {
    check("classify_long_sql", long(), |long| {
        classify_everything(&long.text())?;
        Ok(())
    });
}

/// What the router does with a unit's facts. Left out: `changes_functions`
/// and `frees_database`, word heuristics over the whole text that may
/// read string contents and only ever over-approximate.
fn routing(facts: &UnitFacts) -> impl PartialEq + std::fmt::Debug {
    (
        facts.writes(),
        facts.is_read(),
        facts.begin,
        facts.ends_tx,
        facts.set_tx_read_only,
        facts.serializable,
        facts.read_write,
        facts.hint,
        facts.pins.clone(),
        facts.effects.is_empty(),
        facts.executes.clone(),
        facts.copy_in,
    )
}

/// Whether PostgreSQL's lexing rules (sqlparser's tokenizer) accept `sql`.
fn lexes(sql: &str) -> bool {
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .is_ok()
}

/// A change of one literal's content: a digit for another digit, or a
/// character added after a quote.
#[derive(Debug, Clone)]
enum LiteralChange {
    Digit { which: Index, to: char },
    AfterQuote { which: Index, c: char },
}

fn literal_change() -> impl Strategy<Value = LiteralChange> {
    prop_oneof![
        (any::<Index>(), proptest::char::range('0', '9'))
            .prop_map(|(which, to)| LiteralChange::Digit { which, to }),
        (
            any::<Index>(),
            proptest::sample::select(&['a', ' ', '\'', '\\', ';', 'x', 'é'][..])
        )
            .prop_map(|(which, c)| LiteralChange::AfterQuote { which, c }),
    ]
}

fn change_literal(text: &str, change: &LiteralChange) -> Option<String> {
    let positions = |wanted: fn(u8) -> bool| -> Vec<usize> {
        text.bytes()
            .enumerate()
            .filter(|(_, b)| wanted(*b))
            .map(|(i, _)| i)
            .collect()
    };
    let mut out = text.to_string();
    match change {
        LiteralChange::Digit { which, to } => {
            let digits = positions(|b| b.is_ascii_digit());
            let at = *digits.get(which.index(digits.len().max(1)))?;
            out.replace_range(at..at + 1, &to.to_string());
        }
        LiteralChange::AfterQuote { which, c } => {
            let quotes = positions(|b| b == b'\'');
            let at = *quotes.get(which.index(quotes.len().max(1)))?;
            out.insert(at + 1, *c);
        }
    }
    Some(out)
}

#[test]
fn literal_blind_key_is_sound() {
    let text = prop_oneof![
        proptest::sample::select(SQL).prop_map(str::to_string),
        (proptest::sample::select(SQL), text_edits()).prop_map(|(sql, edits)| {
            let mut text = sql.to_string();
            apply_text(&mut text, &edits);
            text
        }),
    ];
    check(
        "literal_blind_key_is_sound",
        (text, literal_change()),
        |(first, change)| {
            let Some(second) = change_literal(&first, &change) else {
                return Ok(());
            };
            // A text the lexer refuses (`E'\0'`, an unterminated string)
            // is refused by the server too, on whichever server it lands.
            if !lexes(&second) {
                return Ok(());
            }
            // The cache has seen the first text; what does it say of the
            // second, and what should it say?
            let extras = extras();
            let cache = FactsCache::new(16);
            cached(&cache, &first, &extras);
            let given = cached(&cache, &second, &extras);
            let own = from_sql(&second, &extras);
            prop_assert_eq!(
                routing(&given),
                routing(&own),
                "{:?} got the verdict of {:?} (literal-blind keys {:?} and {:?})",
                second,
                first,
                literal_blind_key(&second),
                literal_blind_key(&first)
            );
            Ok(())
        },
    );
}

/// The shapes that were slow or deep before the read gate and the
/// statement grammars were bounded, at sizes that would have taken hours
/// (sqlparser re-parses nested call arguments: 2× per `f(`, 3× per
/// `CASE (`) or overflowed the stack (`EXPLAIN ANALYZE` nested a hundred
/// thousand deep, 1.6 MB); each now finishes well within a second.
#[test]
fn deep_nesting_finishes() {
    let cases = [
        format!("SELECT {}1{}", "f(".repeat(40), ")".repeat(40)),
        format!("SELECT id, {}1", "row_number( ".repeat(40)),
        format!("SELECT {}1{}", "CAST(CASE (".repeat(30), ")".repeat(90)),
        format!("SELECT {}1{}", "CASE (".repeat(30), ") END".repeat(30)),
        format!("SELECT 1 FROM {}t{}", "(".repeat(200), ")".repeat(200)),
        format!("{}SELECT 1", "EXPLAIN ANALYZE ".repeat(100_000)),
        format!(
            "{}SELECT 1{}",
            "COPY (".repeat(10_000),
            ") TO STDOUT".repeat(10_000)
        ),
        format!("{}SELECT 1", "PREPARE p AS ".repeat(20_000)),
        format!("{}SELECT 1", "DECLARE c CURSOR FOR ".repeat(20_000)),
        // Many nests side by side: each within the depth that parses, all
        // together seconds of work before the read gate's budget.
        format!(
            "SELECT {}",
            fill("f(f(f(f(f(f(f(f(f(f(1))))))))))", ", ", "1", MAX_INPUT)
        ),
        format!(
            "SELECT {}",
            fill("CAST(CASE (CAST(CASE (1)))", ", ", "1", MAX_INPUT)
        ),
    ];
    for sql in cases {
        let started = std::time::Instant::now();
        let facts = from_sql(&sql, &[]);
        let took = started.elapsed();
        let shown: String = sql.chars().take(60).collect();
        assert!(
            took < std::time::Duration::from_secs(2),
            "{shown}... took {took:?}"
        );
        assert!(!facts.is_read(), "{shown}... is not a read: {facts:?}");
    }
    // Nesting that real queries have still parses and reads on a replica.
    let ten = format!("SELECT {}1{}", "f(".repeat(10), ")".repeat(10));
    assert!(from_sql(&ten, &[]).is_read());
}

/// What `literal_blind_key_is_sound` found: the cache handed a text the
/// verdict of another text that differs from it only in a literal, where
/// the literal decides (EXPLAIN's `ANALYZE 0` plans, `ANALYZE 1` runs a
/// DELETE), or where a blanked key equals a real text.
#[test]
fn cache_never_hands_a_text_another_verdict() {
    let pairs = [
        (
            "EXPLAIN (ANALYZE 0) DELETE FROM t",
            "EXPLAIN (ANALYZE 1) DELETE FROM t",
        ),
        (
            "EXPLAIN (ANALYZE 'off') DELETE FROM t",
            "EXPLAIN (ANALYZE 'on') DELETE FROM t",
        ),
        (
            "SELECT set_config('', '', false)",
            "SELECT set_config('search_path', 'x', false)",
        ),
    ];
    for (first, second) in pairs {
        let cache = FactsCache::new(16);
        cached(&cache, first, &[]);
        let given = cached(&cache, second, &[]);
        assert_eq!(
            *given,
            from_sql(second, &[]),
            "{second} got the facts of {first}"
        );
    }
}
