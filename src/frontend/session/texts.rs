//! Whether the server reads a session's statement texts the way the proxy's
//! scanner does.
//!
//! The scanner (the classifier's lexer, the literal-blind cache key) reads
//! quoted strings as Postgres does with its defaults: a backslash escapes
//! only inside `E'...'`, and a byte below 0x80 is always the ASCII
//! character it looks like. Two session settings break that:
//! - `standard_conforming_strings = off`: a backslash escapes in every
//!   string, so `'a\''` is one string to the server and two to the scanner;
//! - a client-only encoding (SJIS, BIG5, GBK, ...): a two-byte character
//!   may end in byte 0x5C, a backslash to the scanner, so `E'ソ'` does not
//!   seem to end where it does.
//!
//! Either way, SQL can sit where the scanner sees a string. A `SET` there
//! would run unseen and stay on a connection that the next client gets. In
//! such a session a text with a backslash pins the session to its
//! connection, where the server reads it as it should and nothing it does
//! leaves the session. Texts without a backslash read the same either way.
//!
//! The rules come from what the server reports (`ParameterStatus`), and a
//! unit that may change either setting makes every text after it careful
//! until the server has answered everything sent so far.

use crate::router::facts::BACKSLASH;
use crate::router::Effect;

/// Postgres's client-only encodings (`PG_ENCODING_IS_CLIENT_ONLY`), as the
/// server names them. Postgres's own `backslash_quote = safe_encoding`
/// distrusts backslashes in exactly these.
const CLIENT_ONLY_ENCODINGS: [&str; 7] = [
    "BIG5",
    "GB18030",
    "GBK",
    "JOHAB",
    "SHIFT_JIS_2004",
    "SJIS",
    "UHC",
];

#[derive(Debug, Default, Clone)]
pub struct TextRules {
    /// The server reported `standard_conforming_strings = off`.
    backslash_escapes: bool,
    /// The server reported a client-only `client_encoding`.
    client_only_encoding: bool,
    /// A unit that may change either setting has not been answered yet.
    changing: bool,
}

impl TextRules {
    /// Takes a setting the server reported.
    pub fn note_parameter(&mut self, name: &str, value: &str) {
        if name.eq_ignore_ascii_case("standard_conforming_strings") {
            self.backslash_escapes = !value.eq_ignore_ascii_case("on");
        } else if name.eq_ignore_ascii_case("client_encoding") {
            self.client_only_encoding = CLIENT_ONLY_ENCODINGS
                .iter()
                .any(|e| value.eq_ignore_ascii_case(e));
        }
    }

    /// Takes the effects of a unit about to be sent: one that may change
    /// how texts are read makes the texts after it careful.
    pub fn note_effects(&mut self, effects: &[Effect]) {
        if effects.iter().any(changes_reading) {
            self.changing = true;
        }
    }

    /// The server has answered everything sent: what it reported is how
    /// it reads the next text.
    pub fn settle(&mut self) {
        self.changing = false;
    }

    pub fn is_changing(&self) -> bool {
        self.changing
    }

    /// Why `raw`, a statement text, must pin its session, if it must.
    pub fn pin_for(&self, raw: &[u8]) -> Option<&'static str> {
        let unsure = self.backslash_escapes || self.client_only_encoding || self.changing;
        (unsure && raw.contains(&b'\\')).then_some(BACKSLASH)
    }
}

fn changes_reading(effect: &Effect) -> bool {
    let reads = |name: &str| name == "standard_conforming_strings" || name == "client_encoding";
    match effect {
        Effect::Set { name, .. }
        | Effect::SetFromParameter { name, .. }
        | Effect::Reset { name } => reads(name),
        Effect::ResetAll | Effect::DiscardAll => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_trust_backslashes() {
        let rules = TextRules::default();
        assert_eq!(rules.pin_for(b"SELECT E'a\\'b'"), None);
    }

    #[test]
    fn reported_settings_make_backslashes_pin() {
        let mut rules = TextRules::default();
        rules.note_parameter("standard_conforming_strings", "off");
        assert_eq!(rules.pin_for(b"SELECT 'a\\''"), Some(BACKSLASH));
        assert_eq!(rules.pin_for(b"SELECT 'a'"), None);
        rules.note_parameter("standard_conforming_strings", "on");
        assert_eq!(rules.pin_for(b"SELECT 'a\\''"), None);
        for encoding in ["SJIS", "big5", "GBK", "GB18030", "JOHAB", "UHC"] {
            rules.note_parameter("client_encoding", encoding);
            assert_eq!(
                rules.pin_for(b"SELECT E'\x83\\'"),
                Some(BACKSLASH),
                "{encoding}"
            );
        }
        for encoding in ["UTF8", "LATIN1", "EUC_JP", "SQL_ASCII"] {
            rules.note_parameter("client_encoding", encoding);
            assert_eq!(rules.pin_for(b"SELECT E'\\''"), None, "{encoding}");
        }
    }

    #[test]
    fn a_unit_changing_them_makes_texts_careful_until_answered() {
        let mut rules = TextRules::default();
        rules.note_effects(&[Effect::Set {
            name: "work_mem".into(),
            sql: "SET work_mem = '8MB'".into(),
        }]);
        assert_eq!(rules.pin_for(b"SELECT '\\'"), None);
        for effect in [
            Effect::Set {
                name: "standard_conforming_strings".into(),
                sql: "SET standard_conforming_strings = off".into(),
            },
            Effect::Reset {
                name: "client_encoding".into(),
            },
            Effect::ResetAll,
            Effect::DiscardAll,
        ] {
            rules.note_effects(&[effect]);
            assert!(rules.is_changing());
            assert_eq!(rules.pin_for(b"SELECT '\\'"), Some(BACKSLASH));
            rules.settle();
            assert_eq!(rules.pin_for(b"SELECT '\\'"), None);
        }
    }
}
