//! Statements the proxy answers itself: `SET`, `RESET` and `SHOW` of the
//! `causeway.*` settings. They name the client for shared read-your-writes
//! (`causeway.client_id`), hand in a causal token from elsewhere
//! (`causeway.min_lsn`), and read the session's token (`causeway.lsn`).
//! No server ever sees them.

use bytes::BytesMut;

use super::units::Unit;
use crate::lsn::Lsn;
use crate::protocol::messages::{self, Severity};
use crate::protocol::{self};

/// One `causeway.*` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// `SET causeway.client_id = 'x'`; `None` for RESET.
    ClientId(Option<String>),
    /// `SET causeway.min_lsn = 'X/Y'`, parsed; `None` for RESET.
    MinLsn(Option<Result<Lsn, String>>),
    /// `SHOW causeway.name`.
    Show(String),
    /// A `causeway.` setting that does not exist.
    Unknown(String),
}

/// Recognises a `causeway.*` statement in a SQL text (one statement, an
/// optional trailing `;`). Anything else is `None` and goes to a server.
pub fn parse(sql: &str) -> Option<Local> {
    // Every statement passes here: rule out the rest without allocating.
    // The verb is SET, SHOW or RESET, a first word of 3 to 5 letters:
    // SELECT, INSERT, UPDATE and the like stop at their first byte past 5,
    // most others at their first.
    let head = sql.trim_start().as_bytes();
    if !matches!(head.first(), Some(b's' | b'S' | b'r' | b'R')) {
        return None;
    }
    let verb_len = head
        .iter()
        .take(6)
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(head.len().min(6));
    if !(3..=5).contains(&verb_len) {
        return None;
    }
    let bytes = sql.as_bytes();
    // Dots are few: find them with memchr, then look behind each.
    let mentions = bytes.contains(&b'.')
        && sql
            .match_indices('.')
            .any(|(i, _)| i >= 8 && bytes[i - 8..i].eq_ignore_ascii_case(b"causeway"));
    if !mentions {
        return None;
    }
    let text = sql.trim().trim_end_matches(';').trim();
    if text.contains(';') {
        return None;
    }
    let mut words = text.split_whitespace();
    let verb = words.next()?.to_ascii_lowercase();
    let rest = text[verb.len()..].trim_start();
    let (name, value) = match verb.as_str() {
        "set" => {
            let rest = strip_keyword(rest, "session")
                .map(str::trim_start)
                .unwrap_or(rest);
            let (name, tail) = split_name(rest)?;
            let tail = tail.trim_start();
            let value = if let Some(v) = tail.strip_prefix('=') {
                v
            } else {
                strip_keyword(tail, "to")?
            };
            (name, Some(unquote(value.trim())?))
        }
        "reset" | "show" => {
            let (name, tail) = split_name(rest)?;
            if !tail.trim().is_empty() {
                return None;
            }
            (name, None)
        }
        _ => return None,
    };
    let name = name.to_ascii_lowercase();
    let setting = name.strip_prefix("causeway.")?.to_string();
    Some(match (verb.as_str(), setting.as_str()) {
        ("show", _) => Local::Show(setting),
        (_, "client_id") => Local::ClientId(value.filter(|v| !v.is_empty())),
        (_, "min_lsn") => Local::MinLsn(value.map(|v| v.parse::<Lsn>().map_err(|e| e.to_string()))),
        _ => Local::Unknown(name),
    })
}

fn strip_keyword<'a>(text: &'a str, keyword: &str) -> Option<&'a str> {
    let head = text.get(..keyword.len())?;
    let rest = &text[keyword.len()..];
    (head.eq_ignore_ascii_case(keyword)
        && rest.starts_with(|c: char| c.is_whitespace() || c == '\''))
    .then_some(rest)
}

/// A dotted setting name, possibly double-quoted, and what follows it.
fn split_name(text: &str) -> Option<(String, &str)> {
    let end = text
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(text.len());
    let name = text[..end].replace('"', "");
    (!name.is_empty()).then_some((name, &text[end..]))
}

/// A value as SET takes it: 'quoted' (with '' escapes), or a bare word.
fn unquote(value: &str) -> Option<String> {
    if let Some(inner) = value.strip_prefix('\'') {
        let inner = inner.strip_suffix('\'')?;
        return Some(inner.replace("''", "'"));
    }
    if value.is_empty() || value.contains(char::is_whitespace) {
        return None;
    }
    Some(value.trim_matches('"').to_string())
}

/// What a local statement answers: rows of a one-column result, or an error.
pub enum Answer {
    Set,
    /// A command that returns no rows, with its tag.
    Tag(&'static str),
    Show {
        name: String,
        value: String,
    },
    Error {
        code: &'static str,
        message: String,
    },
}

/// Writes the answers a server would give to the messages of `unit_bytes`
/// (a simple Query, or an extended batch) for a statement answered by `answer`.
pub fn respond(out: &mut BytesMut, unit_bytes: &[u8], answer: &Answer, tx_status: u8) {
    let mut failed = false;
    for (tag, body) in protocol::frontend_messages(unit_bytes) {
        if failed && tag != b'S' {
            continue;
        }
        match tag {
            b'Q' | b'E' => match answer {
                Answer::Set => messages::command_complete(out, "SET"),
                Answer::Tag(tag) => messages::command_complete(out, tag),
                Answer::Show { name, value } => {
                    if tag == b'Q' {
                        messages::row_description_text(out, &[name]);
                    }
                    messages::data_row_text(out, &[Some(value)]);
                    messages::command_complete(out, "SHOW");
                }
                Answer::Error { code, message } => {
                    messages::error_response(out, Severity::Error, code, message, None);
                    failed = true;
                }
            },
            b'P' => messages::simple_message(out, b'1'),
            b'B' => messages::simple_message(out, b'2'),
            b'C' => messages::simple_message(out, b'3'),
            b'D' => {
                if body.first() == Some(&b'S') {
                    messages::parameter_description_empty(out);
                }
                match answer {
                    Answer::Show { name, .. } => messages::row_description_text(out, &[name]),
                    _ => messages::simple_message(out, b'n'),
                }
            }
            _ => {}
        }
        if tag == b'Q' || tag == b'S' {
            messages::ready_for_query(out, tx_status);
            failed = false;
        }
    }
}

impl super::Session {
    /// Answers a `causeway.*` statement without any server.
    pub(super) fn answer_local(&mut self, unit: &Unit) {
        let Some(local) = &unit.local else { return };
        // Named for later Binds (asyncpg, and psycopg from the sixth run).
        for (name, _) in unit.parses.named() {
            self.state
                .local_prepared
                .insert(name.clone(), local.clone());
        }
        for name in &unit.closes {
            self.state.local_prepared.remove(name);
        }
        // Only a batch that executes the command changes anything; one
        // that only prepares or describes it does not.
        if !super::units::executes(&unit.bytes) {
            let answer = match local {
                Local::Show(name) => Answer::Show {
                    name: format!("causeway.{name}"),
                    value: String::new(),
                },
                _ => Answer::Set,
            };
            respond(&mut self.to_client, &unit.bytes, &answer, self.tx_status);
            return;
        }
        if self.tx_status == b'E' {
            // As the server answers any command in a failed block.
            let answer = Answer::Error {
                code: "25P02",
                message: "current transaction is aborted, commands ignored until end of transaction block".into(),
            };
            respond(&mut self.to_client, &unit.bytes, &answer, self.tx_status);
            return;
        }
        let answer = match local {
            Local::ClientId(id) => {
                if self.tx_status == b'T' && self.client_id_before_block.is_none() {
                    self.client_id_before_block = Some((self.client_id.clone(), self.causal));
                }
                // A connection that now acts for another client (a pooled
                // connection handed to the next user) stops carrying the
                // previous client's writes; those stay with that client's id.
                if id.is_some() && *id != self.client_id {
                    self.causal = None;
                }
                self.client_id = id.clone();
                self.shown = None;
                Answer::Set
            }
            Local::MinLsn(None) => Answer::Set,
            Local::MinLsn(Some(Ok(lsn))) => {
                // A token names no timeline: taken as one of the current.
                let mark = self.proxy.monitor.mark(*lsn);
                self.causal = Some(self.causal.map_or(mark, |c| c.max(mark)));
                if let Some(key) = self.causal_key() {
                    self.proxy.causal.advance(&key, mark);
                }
                Answer::Set
            }
            Local::MinLsn(Some(Err(e))) => Answer::Error {
                code: "22023",
                message: format!("invalid value for parameter \"causeway.min_lsn\": {e}"),
            },
            Local::Show(name) => match name.as_str() {
                "lsn" => Answer::Show {
                    name: "causeway.lsn".into(),
                    value: self.effective_causal().unwrap_or_default().to_string(),
                },
                "client_id" => Answer::Show {
                    name: "causeway.client_id".into(),
                    value: self.client_id.clone().unwrap_or_default(),
                },
                "min_lsn" => Answer::Show {
                    name: "causeway.min_lsn".into(),
                    value: self.causal.unwrap_or_default().lsn.to_string(),
                },
                other => Answer::Error {
                    code: "42704",
                    message: format!("unrecognized configuration parameter \"causeway.{other}\""),
                },
            },
            Local::Unknown(name) => Answer::Error {
                code: "42704",
                message: format!("unrecognized configuration parameter \"{name}\""),
            },
        };
        respond(&mut self.to_client, &unit.bytes, &answer, self.tx_status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_causeway_settings() {
        assert_eq!(
            parse("SET causeway.client_id = 'alice'"),
            Some(Local::ClientId(Some("alice".into())))
        );
        assert_eq!(
            parse("set Causeway.Client_Id to bob;"),
            Some(Local::ClientId(Some("bob".into())))
        );
        assert_eq!(
            parse("RESET causeway.client_id"),
            Some(Local::ClientId(None))
        );
        assert_eq!(
            parse("SET causeway.min_lsn = '0/3000148'"),
            Some(Local::MinLsn(Some(Ok(Lsn(0x300_0148)))))
        );
        assert!(matches!(
            parse("SET causeway.min_lsn = 'soon'"),
            Some(Local::MinLsn(Some(Err(_))))
        ));
        assert_eq!(parse("SHOW causeway.lsn"), Some(Local::Show("lsn".into())));
        assert_eq!(
            parse("SET causeway.nope = 1"),
            Some(Local::Unknown("causeway.nope".into()))
        );
        assert_eq!(
            parse("SET SESSION causeway.client_id = 'o''brien'"),
            Some(Local::ClientId(Some("o'brien".into())))
        );
        // Leading white space, a verb alone on its line, a bare SHOW.
        assert_eq!(
            parse("\n\t reset\ncauseway.client_id"),
            Some(Local::ClientId(None))
        );
        assert_eq!(parse("show causeway.lsn;"), Some(Local::Show("lsn".into())));
    }

    #[test]
    fn leaves_everything_else_alone() {
        assert_eq!(parse("SET search_path = public"), None);
        assert_eq!(parse("SELECT 'causeway.client_id'"), None);
        assert_eq!(parse("SET causeway.client_id = 'a'; SELECT 1"), None);
        // First words that are not SET, SHOW or RESET, whatever follows.
        assert_eq!(parse("SETTING causeway.client_id = 'a'"), None);
        assert_eq!(parse("SE causeway.client_id"), None);
        assert_eq!(parse("/* c */ SHOW causeway.lsn"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("SHOW"), None);
    }

    #[test]
    fn answers_an_extended_batch_like_a_server() {
        let mut unit = BytesMut::new();
        for (tag, body) in [
            (b'P', &b"\0SET causeway.client_id = 'a'\0\0\0"[..]),
            (b'B', b"\0\0\0\0\0\0\0\0"),
            (b'E', b"\0\0\0\0\0"),
            (b'S', b""),
        ] {
            unit.extend_from_slice(&[tag]);
            unit.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            unit.extend_from_slice(body);
        }
        let mut out = BytesMut::new();
        respond(&mut out, &unit, &Answer::Set, b'I');
        let tags: Vec<u8> = {
            let mut tags = Vec::new();
            let mut rest = &out[..];
            while rest.len() >= 5 {
                let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                tags.push(rest[0]);
                rest = &rest[len + 1..];
            }
            tags
        };
        assert_eq!(tags, b"12CZ".to_vec());
    }
}
