//! The PostgreSQL v3 wire protocol, as far as the proxy needs it.
//!
//! The proxy passes almost every message through untouched, so this module
//! is about *framing* (where a message starts and ends, whether its length is
//! sane) and about building or reading the handful of messages the proxy
//! speaks itself. Nothing here touches a socket: everything works on byte
//! slices, so it is tested with byte arrays.

pub mod messages;
pub mod startup;

/// Postgres refuses startup packets longer than this (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Postgres's own limit for one message (`PQ_LARGE_MESSAGE_LIMIT`, 1 GB - 1).
pub const MAX_MESSAGE: usize = 0x3fff_ffff;

/// Messages a client may send once logged in, and how far their length may go.
/// Anything not listed is a protocol violation.
pub fn frontend_limit(tag: u8) -> Option<usize> {
    match tag {
        // Query, Parse, Bind, FunctionCall, CopyData can be large.
        b'Q' | b'P' | b'B' | b'F' | b'd' => Some(MAX_MESSAGE),
        // Describe, Execute, Close, CopyFail carry a name or a short text.
        b'D' | b'E' | b'C' | b'f' => Some(MAX_STARTUP_PACKET),
        // Sync, Flush, CopyDone, Terminate have no body.
        b'S' | b'H' | b'c' | b'X' => Some(4),
        _ => None,
    }
}

/// The header of one message: its tag and the length of its body (without
/// the four length bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    pub body_len: usize,
}

impl Header {
    /// Total bytes of the message on the wire: tag + length + body.
    pub fn wire_len(&self) -> usize {
        5 + self.body_len
    }
}

/// Why a byte stream is not a valid message sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid frontend message type {0}")]
    UnknownType(u8),
    #[error("invalid message length")]
    BadLength,
}

/// Reads a frontend message header, if five bytes are there.
/// Checks the tag and the length against Postgres's limits before any body
/// is buffered, so a hostile length never makes the proxy allocate.
pub fn frontend_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    let Some(header) = header(buf) else {
        return Ok(None);
    };
    let limit = frontend_limit(header.tag).ok_or(FrameError::UnknownType(header.tag))?;
    let fixed = matches!(header.tag, b'S' | b'H' | b'c' | b'X');
    if header.body_len > limit - 4 || (fixed && header.body_len != 0) {
        return Err(FrameError::BadLength);
    }
    Ok(Some(header))
}

/// The whole messages of bytes already framed (a unit's): tag and body,
/// stopping at the first that is cut short or malformed.
pub fn frontend_messages(mut bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let header = frontend_header(bytes).ok()??;
        let len = header.wire_len();
        let body = bytes.get(5..len)?;
        bytes = &bytes[len..];
        Some((header.tag, body))
    })
}

/// Reads a backend message header, if five bytes are there. Servers are
/// trusted more than clients, but a broken length still must not be obeyed.
pub fn backend_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    match header(buf) {
        Some(h) if h.body_len > MAX_MESSAGE => Err(FrameError::BadLength),
        other => Ok(other),
    }
}

fn header(buf: &[u8]) -> Option<Header> {
    if buf.len() < 5 {
        return None;
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    // A length below 4 cannot even cover itself; map it to a huge body so
    // the limit checks reject it.
    let body_len = if len < 4 {
        usize::MAX
    } else {
        len as usize - 4
    };
    Some(Header {
        tag: buf[0],
        body_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_buffers_wait_for_more() {
        assert_eq!(frontend_header(b"Q\0\0"), Ok(None));
    }

    #[test]
    fn query_header_is_read() {
        assert_eq!(
            frontend_header(b"Q\0\0\0\x0dSELECT 1\0"),
            Ok(Some(Header {
                tag: b'Q',
                body_len: 9
            }))
        );
    }

    #[test]
    fn huge_length_is_refused_before_buffering() {
        assert_eq!(
            frontend_header(&[b'Q', 0x80, 0, 0, 0]),
            Err(FrameError::BadLength)
        );
        assert_eq!(
            frontend_header(&[b'Q', 0x7f, 0xff, 0xff, 0xff]),
            Err(FrameError::BadLength)
        );
    }

    #[test]
    fn length_below_four_is_refused() {
        assert_eq!(
            frontend_header(&[b'Q', 0, 0, 0, 3]),
            Err(FrameError::BadLength)
        );
        assert_eq!(
            backend_header(&[b'Z', 0, 0, 0, 0]),
            Err(FrameError::BadLength)
        );
    }

    #[test]
    fn unknown_type_is_refused() {
        assert_eq!(
            frontend_header(b"x\0\0\0\x04"),
            Err(FrameError::UnknownType(b'x'))
        );
    }

    #[test]
    fn fixed_size_messages_must_be_empty() {
        assert_eq!(frontend_header(b"S\0\0\0\x05"), Err(FrameError::BadLength));
        assert!(frontend_header(b"S\0\0\0\x04").is_ok());
    }
}
