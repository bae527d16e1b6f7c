//! The first packet (`protocol::startup::parse`): StartupMessage,
//! SSLRequest, GSSENCRequest, CancelRequest, and the `options` parameter
//! split Postgres's way (`parse_options`).
//!
//! What must hold: no panic on any bytes; a packet accepted as a startup
//! is protocol 3, its parameters are exactly the NUL-separated pairs of
//! its body, and a valid packet, unmutated, reads back as written.

use causeway::protocol::startup::{self, parse, parse_options, StartupError, StartupPacket};
use proptest::prelude::*;

use super::check;
use super::mutate::{apply, edits, Edit};

const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// Checks what `parse` said about `body`.
fn check_parsed(body: &[u8]) -> Result<Option<StartupPacket>, TestCaseError> {
    let parsed = parse(body);
    let Ok(packet) = parsed else {
        return Ok(None);
    };
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    match &packet {
        StartupPacket::SslRequest => prop_assert!(code == SSL_REQUEST && body.len() == 4),
        StartupPacket::GssEncRequest => prop_assert!(code == GSSENC_REQUEST && body.len() == 4),
        StartupPacket::Cancel { .. } => prop_assert!(code == CANCEL_REQUEST && body.len() == 12),
        StartupPacket::Startup(params) => {
            prop_assert_eq!(code >> 16, 3);
            prop_assert_eq!(params.minor_version, code & 0xffff);
            prop_assert_eq!(body.last(), Some(&0));
            // The pairs, written back, are the body.
            let mut again = code.to_be_bytes().to_vec();
            for (name, value) in &params.params {
                prop_assert!(!name.is_empty() && !name.contains('\0') && !value.contains('\0'));
                again.extend(name.as_bytes());
                again.push(0);
                again.extend(value.as_bytes());
                again.push(0);
            }
            again.push(0);
            prop_assert_eq!(&again[..], body);
            // What login reads from it next.
            let _ = (params.user(), params.database(), params.protocol_options());
            if let Some(options) = params.get("options") {
                let _ = parse_options(options);
            }
        }
    }
    Ok(Some(packet))
}

#[test]
fn startup_on_any_bytes() {
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..48),
        // A real code and bytes after it.
        (
            proptest::sample::select(
                &[PROTOCOL_3_0, SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST][..]
            ),
            proptest::collection::vec(any::<u8>(), 0..48),
        )
            .prop_map(|(code, rest)| {
                let mut b = code.to_be_bytes().to_vec();
                b.extend(rest);
                b
            }),
    ];
    check("startup_on_any_bytes", body, |body| {
        check_parsed(&body)?;
        Ok(())
    });
}

/// A first packet as a client writes it: a code (the real ones, protocol
/// versions near 3.0 and absurd ones) and the body that goes with it.
#[derive(Debug, Clone)]
struct Packet {
    code: i32,
    params: Vec<(String, String)>,
    cancel: (i32, i32),
    edits: Vec<Edit>,
}

impl Packet {
    fn body(&self) -> Vec<u8> {
        let mut b = self.code.to_be_bytes().to_vec();
        match self.code {
            SSL_REQUEST | GSSENC_REQUEST => {}
            CANCEL_REQUEST => {
                b.extend(self.cancel.0.to_be_bytes());
                b.extend(self.cancel.1.to_be_bytes());
            }
            _ => {
                for (name, value) in &self.params {
                    b.extend(name.as_bytes());
                    b.push(0);
                    b.extend(value.as_bytes());
                    b.push(0);
                }
                b.push(0);
            }
        }
        b
    }
}

fn code() -> impl Strategy<Value = i32> {
    prop_oneof![
        4 => Just(PROTOCOL_3_0),
        1 => Just(SSL_REQUEST),
        1 => Just(GSSENC_REQUEST),
        1 => Just(CANCEL_REQUEST),
        1 => (0..8i32).prop_map(|minor| PROTOCOL_3_0 + minor),
        1 => proptest::sample::select(&[0, 0x0002_0000, 0x0004_0000, 0x0003_ffff, -1, i32::MIN, i32::MAX][..]),
        1 => any::<i32>(),
    ]
}

fn param() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        proptest::sample::select(
            &[
                "user",
                "database",
                "options",
                "application_name",
                "replication",
                "client_encoding",
                "_pq_.x",
                "DateStyle"
            ][..]
        )
        .prop_map(str::to_string),
        "[a-z_.]{1,12}",
    ];
    let value = prop_oneof![
        "[a-z0-9 ]{0,12}",
        proptest::sample::select(
            &[
                "app",
                "",
                "-c search_path=a,b",
                "--work-mem=1MB -c x=a\\ b",
                "-c",
                "junk",
                "\\",
                "true",
                "database"
            ][..]
        )
        .prop_map(str::to_string),
        ".{0,16}",
    ];
    // A NUL would end the value early: that is a different packet.
    (name, value).prop_map(|(name, value)| (name, value.replace('\0', "")))
}

fn packet() -> impl Strategy<Value = Packet> {
    (
        code(),
        proptest::collection::vec(param(), 0..6),
        any::<(i32, i32)>(),
        prop_oneof![1 => Just(vec![]), 3 => edits()],
    )
        .prop_map(|(code, params, cancel, edits)| Packet {
            code,
            params,
            cancel,
            edits,
        })
}

#[test]
fn startup_mutated() {
    check("startup_mutated", packet(), |packet| {
        let valid = packet.body();
        let mut body = valid.clone();
        apply(&mut body, &packet.edits);
        let parsed = check_parsed(&body)?;
        if body == valid {
            match (packet.code, parsed) {
                (SSL_REQUEST, Some(StartupPacket::SslRequest)) => {}
                (GSSENC_REQUEST, Some(StartupPacket::GssEncRequest)) => {}
                (CANCEL_REQUEST, Some(StartupPacket::Cancel { pid, secret })) => {
                    prop_assert_eq!((pid, secret), packet.cancel)
                }
                (code, Some(StartupPacket::Startup(params))) if code >> 16 == 3 => {
                    prop_assert_eq!(params.params, packet.params.clone())
                }
                (code, None) if code >> 16 != 3 => prop_assert_eq!(
                    parse(&body),
                    Err(StartupError::UnsupportedVersion {
                        major: code >> 16,
                        minor: code & 0xffff
                    })
                ),
                (code, other) => {
                    prop_assert!(false, "valid packet {code} read as {other:?}")
                }
            }
        }
        Ok(())
    });
}

#[test]
fn startup_options_on_any_text() {
    let text = prop_oneof![
        ".{0,40}",
        proptest::collection::vec(
            proptest::sample::select(
                &["-c", "--", "-c ", "a=b", "=", "\\", "\\ ", " ", "x", "-"][..]
            ),
            0..12
        )
        .prop_map(|parts| parts.concat()),
    ];
    check("startup_options_on_any_text", text, |text| {
        if let Ok(settings) = startup::parse_options(&text) {
            for (name, _) in settings {
                prop_assert!(!name.contains('-'));
            }
        }
        Ok(())
    });
}
