//! The messages the proxy writes itself, and readers for the few server
//! messages it must look inside.
//!
//! Builders append to a `BytesMut` so a reply of several messages goes out
//! in one write.

use bytes::{BufMut, BytesMut};

/// Appends one message: tag, length, then whatever `body` writes.
fn message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// How bad an error the proxy reports is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An ErrorResponse shaped exactly as Postgres shapes its own.
pub fn error_response(
    out: &mut BytesMut,
    severity: Severity,
    code: &str,
    text: &str,
    detail: Option<&str>,
) {
    message(out, b'E', |b| {
        b.put_u8(b'S');
        cstr(b, severity.as_str());
        b.put_u8(b'V');
        cstr(b, severity.as_str());
        b.put_u8(b'C');
        cstr(b, code);
        b.put_u8(b'M');
        cstr(b, text);
        if let Some(detail) = detail {
            b.put_u8(b'D');
            cstr(b, detail);
        }
        b.put_u8(0);
    });
}

/// A NoticeResponse of severity WARNING, as Postgres sends one.
pub fn warning(out: &mut BytesMut, code: &str, text: &str) {
    message(out, b'N', |b| {
        for (field, value) in [
            (b'S', "WARNING"),
            (b'V', "WARNING"),
            (b'C', code),
            (b'M', text),
        ] {
            b.put_u8(field);
            cstr(b, value);
        }
        b.put_u8(0);
    });
}

pub fn authentication_ok(out: &mut BytesMut) {
    message(out, b'R', |b| b.put_i32(0));
}

pub fn authentication_md5(out: &mut BytesMut, salt: [u8; 4]) {
    message(out, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

pub fn authentication_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    message(out, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            cstr(b, m);
        }
        b.put_u8(0);
    });
}

pub fn authentication_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    message(out, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

pub fn authentication_sasl_final(out: &mut BytesMut, data: &[u8]) {
    message(out, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    message(out, b'S', |b| {
        cstr(b, name);
        cstr(b, value);
    });
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    message(out, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    message(out, b'Z', |b| b.put_u8(status));
}

/// Tells a client asking for protocol 3.x (x > 0) or for `_pq_.` options
/// what this side speaks, as Postgres does.
pub fn negotiate_protocol_version(out: &mut BytesMut, minor: i32, unrecognized: &[String]) {
    message(out, b'v', |b| {
        b.put_i32(minor);
        b.put_i32(unrecognized.len() as i32);
        for option in unrecognized {
            cstr(b, option);
        }
    });
}

/// CommandComplete with a command tag such as `BEGIN`.
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    message(out, b'C', |b| cstr(b, tag));
}

/// A message with no body (ParseComplete '1', BindComplete '2', NoData 'n'...).
pub fn simple_message(out: &mut BytesMut, tag: u8) {
    message(out, tag, |_| {});
}

/// ParameterDescription for a statement without parameters.
pub fn parameter_description_empty(out: &mut BytesMut) {
    message(out, b't', |b| b.put_i16(0));
}

/// RowDescription of text columns.
pub fn row_description_text(out: &mut BytesMut, columns: &[&str]) {
    message(out, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for column in columns {
            cstr(b, column);
            b.put_i32(0); // table oid
            b.put_i16(0); // column number
            b.put_i32(25); // text
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(0); // text format
        }
    });
}

/// DataRow of text values (`None` is NULL).
pub fn data_row_text(out: &mut BytesMut, values: &[Option<&str>]) {
    message(out, b'D', |b| {
        b.put_i16(values.len() as i16);
        for value in values {
            match value {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

/// A simple-protocol Query, for the proxy's own statements on a server.
pub fn query(out: &mut BytesMut, sql: &str) {
    message(out, b'Q', |b| cstr(b, sql));
}

/// Terminate, sent before the proxy closes a server connection.
pub fn terminate(out: &mut BytesMut) {
    message(out, b'X', |_| {});
}

/// A password message (also carries SASL responses), for logging in to servers.
pub fn password_message(out: &mut BytesMut, data: &[u8]) {
    message(out, b'p', |b| b.put_slice(data));
}

/// A SASLInitialResponse, for logging in to servers.
pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    message(out, b'p', |b| {
        cstr(b, mechanism);
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

/// A protocol 3.0 StartupMessage with the given parameters.
pub fn startup_message(out: &mut BytesMut, params: &[(&str, &str)]) {
    let at = out.len();
    out.put_i32(0);
    out.put_i32(196_608);
    for (k, v) in params {
        cstr(out, k);
        cstr(out, v);
    }
    out.put_u8(0);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// The fields of an ErrorResponse or NoticeResponse body that the proxy reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
    /// The server function that raised it (`R`), which, unlike the
    /// message, `lc_messages` does not translate.
    pub routine: String,
}

/// Reads the severity, SQLSTATE, message and routine out of an
/// ErrorResponse body.
pub fn parse_error_fields(body: &[u8]) -> ErrorFields {
    let mut fields = ErrorFields::default();
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let Some(end) = tail.iter().position(|&b| b == 0) else {
            break;
        };
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match kind {
            b'V' => fields.severity = value,
            b'S' if fields.severity.is_empty() => fields.severity = value,
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            b'R' => fields.routine = value,
            _ => {}
        }
        rest = &tail[end + 1..];
    }
    fields
}

/// Splits a body into NUL-terminated strings (ParameterStatus, startup).
pub fn cstrings(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|&b| b == 0)
}

/// Reads a ParameterStatus body: name and value.
pub fn parse_parameter_status(body: &[u8]) -> Option<(String, String)> {
    let mut parts = cstrings(body);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name.to_string(), value.to_string()))
}

/// Reads the first column of a DataRow body as text, if it is not NULL.
pub fn first_column_text(body: &[u8]) -> Option<&str> {
    if body.len() < 6 {
        return None;
    }
    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
    if len < 0 {
        return None;
    }
    let value = body.get(6..6 + len as usize)?;
    std::str::from_utf8(value).ok()
}

/// Every column of a DataRow body, as text: `None` for NULL (or not
/// UTF-8); `None` for the whole row if it is malformed.
pub fn data_row_columns(body: &[u8]) -> Option<Vec<Option<String>>> {
    let count = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
    let mut rest = body.get(2..)?;
    let mut columns = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            columns.push(None);
            continue;
        }
        let value = rest.get(..len as usize)?;
        columns.push(std::str::from_utf8(value).ok().map(str::to_string));
        rest = &rest[len as usize..];
    }
    Some(columns)
}

/// The parameter values of a Bind body, as text: `None` for the whole
/// message if it is malformed, `None` for a value that is NULL or not
/// UTF-8. (A `text` value's binary format is its text, so the format codes
/// do not matter for the settings this is used for.)
pub fn bind_text_parameters(body: &[u8]) -> Option<Vec<Option<String>>> {
    let mut rest = body;
    for _ in 0..2 {
        let end = rest.iter().position(|&b| b == 0)?;
        rest = rest.get(end + 1..)?;
    }
    let take_i16 = |rest: &mut &[u8]| -> Option<i16> {
        let v = i16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
        *rest = rest.get(2..)?;
        Some(v)
    };
    let formats = usize::try_from(take_i16(&mut rest)?).ok()?;
    rest = rest.get(formats * 2..)?;
    let count = usize::try_from(take_i16(&mut rest)?).ok()?;
    let mut values = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = rest.get(4..)?;
        if len < 0 {
            values.push(None);
            continue;
        }
        let value = rest.get(..len as usize)?;
        rest = rest.get(len as usize..)?;
        values.push(std::str::from_utf8(value).ok().map(str::to_string));
    }
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields_keep_the_routine() {
        let body = b"SFEHLER\0VERROR\0C0A000\0Mgecachter Plan\0Fplancache.c\0L722\0RRevalidateCachedQuery\0\0";
        let fields = parse_error_fields(body);
        assert_eq!(fields.severity, "ERROR");
        assert_eq!(fields.code, "0A000");
        assert_eq!(fields.message, "gecachter Plan");
        assert_eq!(fields.routine, "RevalidateCachedQuery");
    }

    #[test]
    fn bind_parameters_are_read_as_text() {
        // portal "", statement "s1", one format (text), two values: "UTC", NULL.
        let body = b"\0s1\0\0\x01\0\0\0\x02\0\0\0\x03UTC\xff\xff\xff\xff\0\0";
        assert_eq!(
            bind_text_parameters(body),
            Some(vec![Some("UTC".to_string()), None])
        );
        assert_eq!(bind_text_parameters(b"\0s1\0\0\x01\0"), None);
        assert_eq!(bind_text_parameters(b"\0\0\0\0\0\x01\0\0\0\x09ab"), None);
        assert_eq!(bind_text_parameters(b""), None);
    }

    #[test]
    fn error_response_round_trips() {
        let mut out = BytesMut::new();
        error_response(
            &mut out,
            Severity::Fatal,
            "28P01",
            "password authentication failed for user \"a\"",
            None,
        );
        assert_eq!(out[0], b'E');
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        let fields = parse_error_fields(&out[5..]);
        assert_eq!(fields.severity, "FATAL");
        assert_eq!(fields.code, "28P01");
        assert_eq!(
            fields.message,
            "password authentication failed for user \"a\""
        );
    }

    #[test]
    fn ready_for_query_is_six_bytes() {
        let mut out = BytesMut::new();
        ready_for_query(&mut out, b'I');
        assert_eq!(&out[..], b"Z\0\0\0\x05I");
    }

    #[test]
    fn startup_message_has_version_and_terminator() {
        let mut out = BytesMut::new();
        startup_message(&mut out, &[("user", "app")]);
        assert_eq!(&out[..], b"\0\0\0\x12\0\x03\0\0user\0app\0\0");
    }

    #[test]
    fn first_column_reads_text_and_null() {
        assert_eq!(first_column_text(b"\0\x01\0\0\0\x030/1"), Some("0/1"));
        assert_eq!(first_column_text(b"\0\x01\xff\xff\xff\xff"), None);
        assert_eq!(first_column_text(b"\0\x01\0\0\0\x09ab"), None);
    }

    #[test]
    fn parameter_status_is_read() {
        assert_eq!(
            parse_parameter_status(b"TimeZone\0UTC\0"),
            Some(("TimeZone".to_string(), "UTC".to_string()))
        );
    }
}
