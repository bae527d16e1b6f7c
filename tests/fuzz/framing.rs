//! The frontend framer (`protocol::frontend_header`, `backend_header`) and
//! what is built on it: the unit builder that turns a client's bytes into
//! units of work, and the readers of a unit's bytes and of a Bind body.
//!
//! What must hold: no panic on any bytes; a header is exactly what its five
//! bytes say, and a declared length beyond the tag's limit is refused
//! before any body is waited for; walking a stream frame by frame ends
//! within one step per five bytes; a valid stream, cut into chunks
//! anywhere, comes out of the unit builder byte for byte.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use causeway::catalog::Catalog;
use causeway::frontend::session::state::{Prepared, Replay, SessionState};
use causeway::frontend::session::units::{self, CachedFacts, Parsed, UnitBuilder};
use causeway::protocol::{
    backend_header, frontend_header, frontend_limit, messages, FrameError, Header, MAX_MESSAGE,
};
use causeway::router::facts::{from_sql, FactsCache};
use proptest::prelude::*;
use proptest::sample::Index;

use super::check;
use super::corpus::SQL;
use super::mutate::{apply, edits, length, Edit};

/// What a header must read as, from the five bytes alone.
fn expected_frontend(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let declared = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let limit = frontend_limit(tag).ok_or(FrameError::UnknownType(tag))?;
    let fixed = matches!(tag, b'S' | b'H' | b'c' | b'X');
    if declared < 4 || declared as usize > limit || (fixed && declared != 4) {
        return Err(FrameError::BadLength);
    }
    Ok(Some(Header {
        tag,
        body_len: declared as usize - 4,
    }))
}

/// Five-ish bytes: a tag (often a real one) and a length (often a
/// boundary), or bytes at random.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    let tag = prop_oneof![
        3 => proptest::sample::select(b"QPBFdDECfSHcXpZ".to_vec()),
        1 => any::<u8>(),
    ];
    prop_oneof![
        3 => (tag, length(), proptest::collection::vec(any::<u8>(), 0..4)).prop_map(
            |(tag, len, tail)| {
                let mut b = vec![tag];
                b.extend_from_slice(&len.to_be_bytes());
                b.extend(tail);
                b
            }
        ),
        1 => proptest::collection::vec(any::<u8>(), 0..12),
    ]
}

#[test]
fn frontend_header_on_any_bytes() {
    check("frontend_header_on_any_bytes", header_bytes(), |buf| {
        let got = frontend_header(&buf);
        prop_assert_eq!(&got, &expected_frontend(&buf));
        if let Ok(Some(header)) = got {
            prop_assert!(header.wire_len() <= MAX_MESSAGE + 1);
        }
        Ok(())
    });
}

#[test]
fn backend_header_on_any_bytes() {
    check("backend_header_on_any_bytes", header_bytes(), |buf| {
        match backend_header(&buf) {
            Ok(None) => prop_assert!(buf.len() < 5),
            Ok(Some(header)) => {
                let declared = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                prop_assert!(declared >= 4);
                prop_assert_eq!(header.body_len, declared as usize - 4);
                prop_assert!(header.body_len <= MAX_MESSAGE);
            }
            Err(e) => prop_assert_eq!(e, FrameError::BadLength),
        }
        Ok(())
    });
}

/// A cstring: bytes and a NUL.
fn cstr(text: &str) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    b.push(0);
    b
}

fn statement_name() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(&["", "", "s1", "get_ride", "q", "S_1", "nope"][..])
}

/// A Bind body: portal, statement, format codes, text values (some NULL),
/// result formats.
fn bind_body() -> impl Strategy<Value = Vec<u8>> {
    (
        statement_name(),
        statement_name(),
        proptest::collection::vec(0..2i16, 0..3),
        proptest::collection::vec(proptest::option::of(".{0,12}"), 0..4),
    )
        .prop_map(|(portal, statement, formats, values)| {
            let mut b = cstr(portal);
            b.extend(cstr(statement));
            b.extend((formats.len() as i16).to_be_bytes());
            for f in &formats {
                b.extend(f.to_be_bytes());
            }
            b.extend((values.len() as i16).to_be_bytes());
            for v in &values {
                match v {
                    Some(v) => {
                        b.extend((v.len() as i32).to_be_bytes());
                        b.extend(v.as_bytes());
                    }
                    None => b.extend((-1i32).to_be_bytes()),
                }
            }
            b.extend(0i16.to_be_bytes());
            b
        })
}

/// One frontend message a logged-in client may send, valid.
fn message() -> impl Strategy<Value = (u8, Vec<u8>)> {
    let sql = || proptest::sample::select(SQL);
    prop_oneof![
        4 => sql().prop_map(|sql| (b'Q', cstr(sql))),
        3 => (statement_name(), sql(), 0..3i16).prop_map(|(name, sql, params)| {
            let mut b = cstr(name);
            b.extend(cstr(sql));
            b.extend(params.to_be_bytes());
            for _ in 0..params {
                b.extend(25i32.to_be_bytes());
            }
            (b'P', b)
        }),
        3 => bind_body().prop_map(|b| (b'B', b)),
        2 => (proptest::sample::select(b"SP".to_vec()), statement_name()).prop_map(|(kind, name)| {
            let mut b = vec![kind];
            b.extend(cstr(name));
            (b'D', b)
        }),
        2 => (statement_name(), any::<i32>()).prop_map(|(portal, rows)| {
            let mut b = cstr(portal);
            b.extend(rows.to_be_bytes());
            (b'E', b)
        }),
        1 => (proptest::sample::select(b"SP".to_vec()), statement_name()).prop_map(|(kind, name)| {
            let mut b = vec![kind];
            b.extend(cstr(name));
            (b'C', b)
        }),
        3 => Just((b'S', vec![])),
        1 => Just((b'H', vec![])),
        1 => proptest::collection::vec(any::<u8>(), 0..24).prop_map(|b| (b'F', b)),
        1 => proptest::collection::vec(any::<u8>(), 0..24).prop_map(|b| (b'd', b)),
        1 => Just((b'c', vec![])),
        1 => Just((b'f', cstr("cancelled"))),
        1 => Just((b'X', vec![])),
    ]
}

/// A lie told in one message's header.
#[derive(Debug, Clone)]
enum Lie {
    Length(i32),
    Tag(u8),
    /// The body cut short, the length left as it was.
    Truncate(Index),
}

/// A stream of valid messages, then maybe lies in some headers and byte
/// edits anywhere.
#[derive(Debug, Clone)]
struct Stream {
    messages: Vec<(u8, Vec<u8>)>,
    lies: Vec<(Index, Lie)>,
    edits: Vec<Edit>,
}

impl Stream {
    fn is_valid(&self) -> bool {
        self.lies.is_empty() && self.edits.is_empty()
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (tag, body)) in self.messages.iter().enumerate() {
            let mut tag = *tag;
            let mut len = body.len() as i32 + 4;
            let mut body = &body[..];
            for (at, lie) in &self.lies {
                if at.index(self.messages.len()) == i {
                    match lie {
                        Lie::Length(l) => len = *l,
                        Lie::Tag(t) => tag = *t,
                        Lie::Truncate(cut) => body = &body[..cut.index(body.len() + 1)],
                    }
                }
            }
            out.push(tag);
            out.extend(len.to_be_bytes());
            out.extend(body);
        }
        apply(&mut out, &self.edits);
        out
    }
}

fn lie() -> impl Strategy<Value = Lie> {
    prop_oneof![
        3 => length().prop_map(Lie::Length),
        1 => any::<u8>().prop_map(Lie::Tag),
        1 => any::<Index>().prop_map(Lie::Truncate),
    ]
}

fn stream() -> impl Strategy<Value = Stream> {
    (
        proptest::collection::vec(message(), 0..10),
        prop_oneof![
            1 => Just(vec![]),
            2 => proptest::collection::vec((any::<Index>(), lie()), 1..3),
        ],
        prop_oneof![1 => Just(vec![]), 2 => edits()],
    )
        .prop_map(|(messages, lies, edits)| Stream {
            messages,
            lies,
            edits,
        })
}

#[test]
fn frame_streams_mutated() {
    check("frame_streams_mutated", stream(), |stream| {
        let bytes = stream.bytes();
        let mut rest = &bytes[..];
        let mut frames = Vec::new();
        loop {
            prop_assert!(
                frames.len() <= bytes.len() / 5,
                "more frames than bytes allow"
            );
            match frontend_header(rest) {
                Ok(Some(header)) => {
                    prop_assert!(header.body_len <= frontend_limit(header.tag).unwrap_or(0));
                    if rest.len() < header.wire_len() {
                        break; // a reader would wait here for the rest
                    }
                    frames.push(header.tag);
                    rest = &rest[header.wire_len()..];
                }
                Ok(None) | Err(_) => break,
            }
        }
        if stream.is_valid() {
            let tags: Vec<u8> = stream.messages.iter().map(|m| m.0).collect();
            prop_assert_eq!(frames, tags);
            prop_assert!(rest.is_empty());
        }
        Ok(())
    });
}

/// A session's state with two prepared statements, so Bind, Describe and
/// EXECUTE of known names take the paths they take in a live session.
fn session_state() -> SessionState {
    let mut state = SessionState::default();
    for (name, sql) in [("s1", "SELECT 1"), ("get_ride", "INSERT INTO t VALUES (1)")] {
        let facts = Arc::new(from_sql(sql, &[]));
        state.prepared.insert(
            name.to_string(),
            Prepared::new(Replay::Sql(sql.to_string()), facts),
        );
    }
    state
}

/// Feeds `bytes` to a unit builder in chunks of the given sizes (the rest
/// in one), as reads from a socket would. Returns the units' bytes, the
/// bytes passed on as COPY data, and how many bytes the builder consumed.
fn build_units(bytes: &[u8], chunks: &[usize]) -> Result<(Vec<units::Unit>, usize, usize), String> {
    let cache = FactsCache::new(64);
    let catalog = Catalog::default();
    let source = CachedFacts {
        cache: &cache,
        extra_write_functions: &[],
        catalog: &catalog,
    };
    let state = session_state();
    let mut builder = UnitBuilder::default();
    let mut cbuf = BytesMut::new();
    let mut out = VecDeque::new();
    let mut copy_out = BytesMut::new();
    let mut copy_streaming = 0usize;
    let mut units = Vec::new();
    let max_units = 3;
    let mut fed = 0;
    let mut sizes = chunks.iter().copied().chain(std::iter::once(usize::MAX));
    let mut calls = 0usize;
    'feed: while fed < bytes.len() {
        let size = sizes.next().unwrap_or(usize::MAX).max(1);
        let end = bytes.len().min(fed.saturating_add(size));
        cbuf.extend_from_slice(&bytes[fed..end]);
        fed = end;
        loop {
            calls += 1;
            if calls > bytes.len() + 16 {
                return Err(format!("{calls} parse calls for {} bytes", bytes.len()));
            }
            let result = builder.parse(
                &mut cbuf,
                &mut out,
                &mut copy_out,
                &mut copy_streaming,
                &state,
                &source,
                max_units,
            );
            let produced = out.len();
            units.extend(out.drain(..));
            match result {
                Err(_) | Ok(Parsed::Terminate) => break 'feed,
                Ok(Parsed::More) if produced < max_units => break,
                Ok(Parsed::More) => {}
            }
        }
    }
    Ok((units, copy_out.len(), fed - cbuf.len()))
}

/// What a valid stream must come out as: the bytes of every unit (up to
/// the last Sync, Flush, Query or FunctionCall, and not past a Terminate),
/// and the COPY bytes.
fn expected_units(messages: &[(u8, Vec<u8>)]) -> (usize, usize) {
    let (mut in_units, mut copy, mut pending) = (0, 0, 0);
    for (tag, body) in messages {
        let len = body.len() + 5;
        match tag {
            b'X' => break,
            b'd' | b'c' | b'f' => copy += len,
            b'Q' | b'F' => {
                in_units += pending + len;
                pending = 0;
            }
            // A Flush alone is not a unit: there is nothing to send.
            b'H' if pending == 0 && body.is_empty() => {}
            b'S' | b'H' => {
                in_units += pending + len;
                pending = 0;
            }
            _ => pending += len,
        }
    }
    (in_units, copy)
}

#[test]
fn unit_builder_on_mutated_streams() {
    let strategy = (stream(), proptest::collection::vec(1..48usize, 0..6));
    check(
        "unit_builder_on_mutated_streams",
        strategy,
        |(stream, chunks)| {
            let bytes = stream.bytes();
            let (units, copied, consumed) =
                build_units(&bytes, &chunks).map_err(TestCaseError::fail)?;
            let in_units: usize = units.iter().map(|u| u.bytes.len()).sum();
            prop_assert!(in_units + copied <= consumed);
            for unit in &units {
                // What the session later reads off a unit's bytes.
                let _ = units::executes(&unit.bytes);
                for text in units::sql_texts(&unit.bytes) {
                    match text {
                        Cow::Borrowed(text) => prop_assert!(text.len() < unit.bytes.len()),
                        // Only a text that is not UTF-8 is copied, with
                        // each foreign byte (or broken sequence) replaced.
                        Cow::Owned(text) => {
                            prop_assert!(text.contains(char::REPLACEMENT_CHARACTER));
                            prop_assert!(text.len() < 3 * unit.bytes.len());
                        }
                    }
                }
                let _ = (unit.creates(), unit.needs());
            }
            if stream.is_valid() {
                let (want_units, want_copy) = expected_units(&stream.messages);
                prop_assert_eq!((in_units, copied), (want_units, want_copy));
            }
            Ok(())
        },
    );
}

#[test]
fn unit_bytes_readers_on_any_bytes() {
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        stream().prop_map(|s| s.bytes()),
    ];
    check("unit_bytes_readers_on_any_bytes", strategy, |bytes| {
        let _ = units::executes(&bytes);
        let range = bytes.as_ptr_range();
        for text in units::sql_texts(&bytes) {
            match text {
                Cow::Borrowed(text) => {
                    prop_assert!(range.contains(&text.as_ptr()) || text.is_empty())
                }
                Cow::Owned(text) => prop_assert!(text.contains(char::REPLACEMENT_CHARACTER)),
            }
        }
        let _ = messages::parse_error_fields(&bytes);
        let _ = messages::parse_parameter_status(&bytes);
        let _ = messages::first_column_text(&bytes);
        let _ = messages::bind_text_parameters(&bytes);
        let _ = Replay::Parse(bytes.clone().into()).sql();
        Ok(())
    });
}

#[test]
fn bind_parameters_mutated() {
    let strategy = (bind_body(), prop_oneof![1 => Just(vec![]), 3 => edits()]);
    check("bind_parameters_mutated", strategy, |(body, edits)| {
        let mut mutated = body.clone();
        apply(&mut mutated, &edits);
        if let Some(values) = messages::bind_text_parameters(&mutated) {
            let text: usize = values.iter().flatten().map(String::len).sum();
            prop_assert!(text <= mutated.len());
        }
        if edits.is_empty() {
            prop_assert!(messages::bind_text_parameters(&body).is_some());
        }
        Ok(())
    });
}
