//! A cache key for statement texts that differ only in their literals.
//!
//! Simple-protocol clients (psql, pgbench -M simple, many ORMs' raw SQL)
//! inline values: `... WHERE aid = 52` then `... WHERE aid = 7`. Each text
//! is new, so an exact-text cache never hits and every statement would be
//! parsed. Numbers and string contents never change whether a statement
//! reads or writes, so texts equal up to their literals can share a
//! verdict. This key blanks numeric literals and the insides of string
//! literals, and keeps everything else (identifiers, comments with their
//! hints, dollar-quoted bodies, parameters) byte for byte.
//!
//! The key is only ever used to look up a verdict computed from a real
//! text, and the session only shares verdicts that carry no text of their
//! own (no SET to replay): see `facts::cached`. A text the scanner is not
//! sure of (an unterminated quote or comment) has no key.

/// The literal-blind key of `sql`, or `None` when the text cannot be
/// scanned with certainty.
pub fn literal_blind_key(sql: &str) -> Option<String> {
    let mut out = String::with_capacity(sql.len());
    write_literal_blind_key(sql, &mut out).then_some(out)
}

/// Appends the literal-blind key of `sql` to `out`; false (and `out` in
/// an unspecified state) when the text cannot be scanned with certainty.
pub fn write_literal_blind_key(sql: &str, out: &mut String) -> bool {
    scan(sql, out).is_some()
}

/// A byte that continues a name: digits after it are part of the name.
fn ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn scan(sql: &str, out: &mut String) -> Option<()> {
    let bytes = sql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\'' => {
                // E'...' strings take backslash escapes; others only ''.
                let escapes = i >= 1
                    && matches!(bytes[i - 1], b'e' | b'E')
                    && (i < 2 || !ident(bytes[i - 2]));
                let end = string_end(bytes, i + 1, escapes)?;
                out.push_str("''");
                i = end;
            }
            b'"' => {
                let end = bytes[i + 1..].iter().position(|&c| c == b'"')? + i + 2;
                out.push_str(&sql[i..end]);
                i = end;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                let end = bytes[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(bytes.len(), |p| i + p);
                out.push_str(&sql[i..end]);
                i = end;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = comment_end(bytes, i)?;
                out.push_str(&sql[i..end]);
                i = end;
            }
            b'$' if i == 0 || !ident(bytes[i - 1]) => {
                // $1 parameters stay; $tag$ ... $tag$ bodies stay verbatim.
                let tag_end = bytes[i + 1..]
                    .iter()
                    .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
                    .map_or(bytes.len(), |p| i + 1 + p);
                if bytes.get(tag_end) == Some(&b'$')
                    && bytes.get(i + 1).is_some_and(|c| !c.is_ascii_digit())
                {
                    let tag = &sql[i..=tag_end];
                    let body = &sql[tag_end + 1..];
                    let close = body.find(tag)? + tag_end + 1 + tag.len();
                    out.push_str(&sql[i..close]);
                    i = close;
                } else {
                    out.push_str(&sql[i..tag_end]);
                    i = tag_end;
                }
            }
            b'0'..=b'9' if i == 0 || !ident(bytes[i - 1]) => {
                let end = bytes[i..]
                    .iter()
                    .position(|&c| !(c.is_ascii_digit() || c == b'.'))
                    .map_or(bytes.len(), |p| i + p);
                out.push('0');
                i = end;
            }
            _ => {
                // Copy a run of ordinary text at once, up to the next byte
                // that may start a literal, a quoted name, a comment or a
                // parameter. Those are ASCII, so the run ends on a
                // character boundary.
                let start = i;
                i = ordinary_run_end(bytes, i + 1);
                out.push_str(sql.get(start..i)?);
            }
        }
    }
    Some(())
}

const ORDINARY: u8 = 0;
const STOP: u8 = 1;
const DIGIT: u8 = 2;

/// What each byte is to a run of ordinary text: part of it, a digit (a
/// number starts there unless it ends a name), or a byte that may start a
/// literal, a quoted name, a comment or a parameter. One table load per
/// byte: every simple-protocol statement is scanned.
static STOPS: [u8; 256] = {
    let mut table = [ORDINARY; 256];
    table[b'\'' as usize] = STOP;
    table[b'"' as usize] = STOP;
    table[b'-' as usize] = STOP;
    table[b'/' as usize] = STOP;
    table[b'$' as usize] = STOP;
    let mut digit = b'0';
    while digit <= b'9' {
        table[digit as usize] = DIGIT;
        digit += 1;
    }
    table
};

/// Index of the first byte at or after `i` that ends a run of ordinary
/// text (see [`STOPS`]); a digit right after a name's byte is part of the
/// name (`t1`, `$2`). `i > 0`.
fn ordinary_run_end(bytes: &[u8], mut i: usize) -> usize {
    loop {
        // Eight bytes at a time while none is in 0x22..=0x39, the range that
        // holds every stop (with `#`, `%`, `(`, `,`, ..., which the byte
        // by byte look below lets through). SQL is mostly letters, spaces
        // and `_`, outside it.
        while let Some(chunk) = bytes.get(i..i + 8) {
            let Ok(chunk) = <[u8; 8]>::try_from(chunk) else {
                break;
            };
            if has_byte_in_stop_range(u64::from_le_bytes(chunk)) {
                break;
            }
            i += 8;
        }
        let Some(&c) = bytes.get(i) else {
            return bytes.len();
        };
        match STOPS[usize::from(c)] {
            ORDINARY => i += 1,
            DIGIT if ident(bytes[i - 1]) => i += 1,
            _ => return i,
        }
    }
}

/// Whether any byte of `word` is in 0x22..=0x39 ("has a byte between" from
/// the Stanford bit hacks; bytes from 0x80 up are never counted, and no
/// stop is among them).
fn has_byte_in_stop_range(word: u64) -> bool {
    const ONES: u64 = u64::MAX / 255;
    const LOW: u64 = 0x21; // one below the range
    const HIGH: u64 = 0x3a; // one above it
    let seven_bits = word & (ONES * 127);
    (ONES * (127 + HIGH)).wrapping_sub(seven_bits)
        & !word
        & seven_bits.wrapping_add(ONES * (127 - LOW))
        & (ONES * 128)
        != 0
}

/// Index just past the quote closing a string whose body starts at `from`.
fn string_end(bytes: &[u8], from: usize, escapes: bool) -> Option<usize> {
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if escapes => i += 2,
            b'\'' if bytes.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Index just past a (nested) block comment starting at `from`.
fn comment_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut depth = 0;
    let mut i = from;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> String {
        literal_blind_key(sql).unwrap_or_else(|| panic!("no key for {sql:?}"))
    }

    #[test]
    fn texts_that_differ_in_literals_share_a_key() {
        assert_eq!(
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 52;"),
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 1234567;")
        );
        assert_eq!(
            key("SELECT * FROM t WHERE s = 'a' AND x > 1.5"),
            key("SELECT * FROM t WHERE s = 'it''s' AND x > 20")
        );
        assert_eq!(key("SELECT E'a\\'b'"), key("SELECT E'c'"));
    }

    #[test]
    fn everything_but_literals_is_kept() {
        assert_ne!(key("SELECT * FROM t1"), key("SELECT * FROM t2"));
        assert_ne!(key("SELECT $1"), key("SELECT $2"));
        assert_ne!(
            key("/* causeway: primary */ SELECT 1"),
            key("/* causeway: replica */ SELECT 1")
        );
        assert_ne!(key("SELECT \"a'b\", 1"), key("SELECT \"c'd\", 1"));
        assert_ne!(key("SELECT $$a$$"), key("SELECT $$b$$"));
        assert_ne!(
            key("SELECT 1 -- x\n, nextval('s')"),
            key("SELECT 1 -- x\n, 2")
        );
    }

    #[test]
    fn quotes_inside_strings_never_hide_sql() {
        // If the scanner misread where a string ends, SQL after it would be
        // blanked and a write could share a read's key.
        assert_ne!(key("SELECT E'\\'', nextval('s')"), key("SELECT E'\\'', 1"));
        assert_ne!(key("SELECT 'a''', nextval('s')"), key("SELECT 'a''', 1"));
        assert_ne!(key("SELECT /* ' */ nextval('s')"), key("SELECT /* ' */ 1"));
        assert_ne!(
            key("SELECT $q$ ' $q$, nextval('s')"),
            key("SELECT $q$ ' $q$, 1")
        );
    }

    #[test]
    fn any_text_is_scanned_without_panic() {
        let alphabet = [
            "'", "\"", "$", "$a$", "E'", "\\", "--", "\n", "/*", "*/", "1", ".", "a", " ", "é", ";",
        ];
        let mut seed = 0x2545_f491_u64;
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..12 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let _ = literal_blind_key(&text);
        }
    }

    #[test]
    fn the_word_test_finds_exactly_the_stop_range() {
        for position in 0..8 {
            for byte in 0..=255u8 {
                let mut bytes = [b'a'; 8];
                bytes[position] = byte;
                assert_eq!(
                    has_byte_in_stop_range(u64::from_le_bytes(bytes)),
                    (0x22..=0x39).contains(&byte),
                    "byte {byte:#x} at {position}"
                );
            }
        }
        // Every stop is in the range.
        for byte in 0..=255u8 {
            if STOPS[usize::from(byte)] != ORDINARY {
                assert!((0x22..=0x39).contains(&byte), "{byte:#x}");
            }
        }
    }

    #[test]
    fn long_runs_keep_digits_in_names_and_blank_the_rest() {
        assert_eq!(
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 1234567;"),
            "SELECT abalance FROM pgbench_accounts WHERE aid = 0;"
        );
        assert_eq!(
            key("SELECT col1, t2.x FROM table_number_3 WHERE y>=10 AND z=$12"),
            "SELECT col1, t2.x FROM table_number_3 WHERE y>=0 AND z=$12"
        );
        assert_eq!(
            key("SELECT 'é', \"ü\" FROM über_table42"),
            "SELECT '', \"ü\" FROM über_table42"
        );
    }

    #[test]
    fn unsure_texts_have_no_key() {
        assert_eq!(literal_blind_key("SELECT 'open"), None);
        assert_eq!(literal_blind_key("SELECT /* open"), None);
        assert_eq!(literal_blind_key("SELECT \"open"), None);
        assert_eq!(literal_blind_key("SELECT $x$ open"), None);
    }
}
