//! Mutations of valid input: byte edits for wire messages, text edits for
//! SQL. Each edit is a value proptest generates and shrinks, with its
//! position as a `prop::sample::Index` so it scales to whatever input it
//! lands on.

use proptest::prelude::*;
use proptest::sample::Index;

use super::corpus::{FRAGMENTS, SQL};

/// No mutation grows an input past this: the properties promise to finish
/// on inputs under 64 KiB.
pub const MAX_INPUT: usize = 64 * 1024;

/// Lengths that sit on a limit or a sign boundary, or lie absurdly.
pub const LENGTHS: &[i32] = &[
    i32::MIN,
    -1,
    0,
    1,
    3,
    4,
    5,
    7,
    8,
    9,
    255,
    9_999,
    10_000,
    10_001,
    65_536,
    0x3fff_fffe,
    0x3fff_ffff,
    0x4000_0000,
    i32::MAX,
];

/// A length: mostly one of [`LENGTHS`], sometimes any at all.
pub fn length() -> impl Strategy<Value = i32> {
    prop_oneof![4 => proptest::sample::select(LENGTHS), 1 => any::<i32>()]
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
pub enum Edit {
    Flip {
        at: Index,
        bit: u8,
    },
    Set {
        at: Index,
        byte: u8,
    },
    Insert {
        at: Index,
        bytes: Vec<u8>,
    },
    Remove {
        at: Index,
        len: usize,
    },
    Truncate {
        at: Index,
    },
    /// Repeats a slice in place: long runs of one construct.
    Repeat {
        at: Index,
        len: usize,
        times: usize,
    },
    /// Writes a big-endian length over four bytes.
    Length {
        at: Index,
        value: i32,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Edit::Flip { at, bit }),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Edit::Set { at, byte }),
        2 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        2 => (any::<Index>(), 1..32usize).prop_map(|(at, len)| Edit::Remove { at, len }),
        1 => any::<Index>().prop_map(|at| Edit::Truncate { at }),
        1 => (any::<Index>(), 1..16usize, 1..64usize)
            .prop_map(|(at, len, times)| Edit::Repeat { at, len, times }),
        3 => (any::<Index>(), length()).prop_map(|(at, value)| Edit::Length { at, value }),
    ]
}

/// One to six edits.
pub fn edits() -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec(edit(), 1..=6)
}

/// Applies `edits` in order.
pub fn apply(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for edit in edits {
        let at = |i: &Index| i.index(bytes.len() + 1);
        match edit {
            Edit::Flip { at: i, bit } => {
                if !bytes.is_empty() {
                    let i = i.index(bytes.len());
                    bytes[i] ^= 1 << bit;
                }
            }
            Edit::Set { at: i, byte } => {
                if !bytes.is_empty() {
                    let i = i.index(bytes.len());
                    bytes[i] = *byte;
                }
            }
            Edit::Insert { at: i, bytes: new } => {
                let i = at(i);
                bytes.splice(i..i, new.iter().copied());
            }
            Edit::Remove { at: i, len } => {
                let i = at(i);
                let end = (i + len).min(bytes.len());
                bytes.drain(i..end);
            }
            Edit::Truncate { at: i } => {
                let i = at(i);
                bytes.truncate(i);
            }
            Edit::Repeat { at: i, len, times } => {
                let i = at(i);
                let end = (i + len).min(bytes.len());
                let piece = bytes[i..end].to_vec();
                for _ in 0..*times {
                    if bytes.len() + piece.len() > MAX_INPUT {
                        break;
                    }
                    bytes.splice(end..end, piece.iter().copied());
                }
            }
            Edit::Length { at: i, value } => {
                let i = at(i);
                let end = (i + 4).min(bytes.len());
                bytes.splice(i..end, value.to_be_bytes());
            }
        }
    }
}

/// One edit of a SQL text, at character boundaries so the text stays a
/// `str`: fragments that change the lexer's state, pieces of other real
/// statements, repeats.
#[derive(Debug, Clone)]
pub enum TextEdit {
    Insert {
        at: Index,
        fragment: &'static str,
    },
    Remove {
        at: Index,
        len: usize,
    },
    Replace {
        at: Index,
        len: usize,
        fragment: &'static str,
    },
    /// Part of another corpus statement.
    Splice {
        at: Index,
        other: Index,
        from: Index,
        len: usize,
    },
    Repeat {
        at: Index,
        len: usize,
        times: usize,
    },
    /// Any character, from all of Unicode.
    Char {
        at: Index,
        c: char,
    },
}

fn text_edit() -> impl Strategy<Value = TextEdit> {
    let fragment = || proptest::sample::select(FRAGMENTS);
    prop_oneof![
        4 => (any::<Index>(), fragment()).prop_map(|(at, fragment)| TextEdit::Insert { at, fragment }),
        2 => (any::<Index>(), 1..16usize).prop_map(|(at, len)| TextEdit::Remove { at, len }),
        3 => (any::<Index>(), 1..8usize, fragment())
            .prop_map(|(at, len, fragment)| TextEdit::Replace { at, len, fragment }),
        2 => (any::<Index>(), any::<Index>(), any::<Index>(), 1..64usize)
            .prop_map(|(at, other, from, len)| TextEdit::Splice { at, other, from, len }),
        1 => (any::<Index>(), 1..24usize, 1..200usize)
            .prop_map(|(at, len, times)| TextEdit::Repeat { at, len, times }),
        1 => (any::<Index>(), any::<char>()).prop_map(|(at, c)| TextEdit::Char { at, c }),
    ]
}

/// One to eight text edits.
pub fn text_edits() -> impl Strategy<Value = Vec<TextEdit>> {
    proptest::collection::vec(text_edit(), 1..=8)
}

/// The char boundary at or before byte `i`.
fn floor(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Applies `edits` to `text` in order.
pub fn apply_text(text: &mut String, edits: &[TextEdit]) {
    for edit in edits {
        let at = |i: &Index, text: &str| floor(text, i.index(text.len() + 1));
        match edit {
            TextEdit::Insert { at: i, fragment } => {
                let i = at(i, text);
                text.insert_str(i, fragment);
            }
            TextEdit::Remove { at: i, len } => {
                let i = at(i, text);
                let end = floor(text, i + len);
                text.replace_range(i..end, "");
            }
            TextEdit::Replace {
                at: i,
                len,
                fragment,
            } => {
                let i = at(i, text);
                let end = floor(text, i + len);
                text.replace_range(i..end, fragment);
            }
            TextEdit::Splice {
                at: i,
                other,
                from,
                len,
            } => {
                let other = other.get(SQL);
                let start = floor(other, from.index(other.len() + 1));
                let end = floor(other, start + len);
                let i = at(i, text);
                text.insert_str(i, &other[start..end]);
            }
            TextEdit::Repeat { at: i, len, times } => {
                let i = at(i, text);
                let end = floor(text, i + len);
                let piece = text[i..end].to_string();
                let room = MAX_INPUT.saturating_sub(text.len()) / piece.len().max(1);
                text.insert_str(end, &piece.repeat((*times).min(room)));
            }
            TextEdit::Char { at: i, c } => {
                let i = at(i, text);
                text.insert(i, *c);
            }
        }
        if text.len() > MAX_INPUT {
            let end = floor(text, MAX_INPUT);
            text.truncate(end);
        }
    }
}
