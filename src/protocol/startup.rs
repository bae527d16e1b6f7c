//! The first packet a client sends: a StartupMessage, or one of the special
//! requests (SSL, GSS encryption, cancel) that share its framing.

const SSL_REQUEST: i32 = 80_877_103;

/// A whole SSLRequest packet, as a client (the proxy, towards a server)
/// sends it: length 8, then the request code.
pub const SSL_REQUEST_PACKET: [u8; 8] = {
    let code = SSL_REQUEST.to_be_bytes();
    [0, 0, 0, 8, code[0], code[1], code[2], code[3]]
};
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// What the first packet asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
    Startup(StartupParams),
}

/// The parameters of a protocol 3.x StartupMessage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupParams {
    pub minor_version: i32,
    /// In the order the client sent them; `user`, `database` and `options`
    /// included.
    pub params: Vec<(String, String)>,
}

impl StartupParams {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The login role. Postgres requires it.
    pub fn user(&self) -> Option<&str> {
        self.get("user").filter(|u| !u.is_empty())
    }

    /// The database, which defaults to the user name as in Postgres.
    pub fn database(&self) -> Option<&str> {
        self.get("database")
            .filter(|d| !d.is_empty())
            .or(self.user())
    }

    /// `_pq_.` protocol options, which Postgres 15 answers by saying it does
    /// not know them.
    pub fn protocol_options(&self) -> Vec<String> {
        self.params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Why a first packet was refused, worded as Postgres words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    BadLength,
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedVersion { major: i32, minor: i32 },
    #[error("invalid startup packet layout: expected terminator as last byte")]
    BadLayout,
    #[error("invalid byte sequence in startup packet")]
    NotUtf8,
}

/// Parses the bytes after the length word of a first packet.
pub fn parse(body: &[u8]) -> Result<StartupPacket, StartupError> {
    if body.len() < 4 {
        return Err(StartupError::BadLength);
    }
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST if rest.is_empty() => return Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST if rest.is_empty() => return Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST if rest.len() == 8 => {
            let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let secret = i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            return Ok(StartupPacket::Cancel { pid, secret });
        }
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => return Err(StartupError::BadLength),
        _ => {}
    }
    let (major, minor) = (code >> 16, code & 0xffff);
    if major != 3 {
        return Err(StartupError::UnsupportedVersion { major, minor });
    }
    // Walk name/value pairs the way Postgres's ProcessStartupPacket does,
    // then insist that exactly the terminator byte is left.
    let mut params = Vec::new();
    let mut offset = 0;
    let text = |from: usize| -> Result<(&str, usize), StartupError> {
        let len = rest[from..]
            .iter()
            .position(|&b| b == 0)
            .ok_or(StartupError::BadLayout)?;
        let s = std::str::from_utf8(&rest[from..from + len]).map_err(|_| StartupError::NotUtf8)?;
        Ok((s, from + len + 1))
    };
    while offset < rest.len() {
        if rest[offset] == 0 {
            break;
        }
        let (name, value_at) = text(offset)?;
        if value_at >= rest.len() {
            return Err(StartupError::BadLayout);
        }
        let (value, next) = text(value_at)?;
        params.push((name.to_string(), value.to_string()));
        offset = next;
    }
    if rest.is_empty() || offset != rest.len() - 1 {
        return Err(StartupError::BadLayout);
    }
    Ok(StartupPacket::Startup(StartupParams {
        minor_version: minor,
        params,
    }))
}

/// Splits the `options` startup parameter into `name=value` settings, as
/// Postgres does: words separated by spaces, a backslash escapes the next
/// character, and each setting is `-c name=value` or `--name=value`.
/// Returns the settings, or the word that is not a setting.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut iter = words.into_iter();
    while let Some(word) = iter.next() {
        let setting = if word == "-c" {
            iter.next().ok_or_else(|| word.clone())?
        } else if let Some(s) = word.strip_prefix("--") {
            s.to_string()
        } else if let Some(s) = word.strip_prefix("-c") {
            s.to_string()
        } else {
            return Err(word);
        };
        let (name, value) = setting.split_once('=').ok_or_else(|| setting.clone())?;
        // Postgres treats '-' in option names as '_'.
        settings.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn special_requests() {
        assert_eq!(
            parse(&body(SSL_REQUEST, b"")),
            Ok(StartupPacket::SslRequest)
        );
        assert_eq!(
            parse(&body(GSSENC_REQUEST, b"")),
            Ok(StartupPacket::GssEncRequest)
        );
        assert_eq!(
            parse(&body(CANCEL_REQUEST, &[0, 0, 0, 7, 0, 0, 0, 9])),
            Ok(StartupPacket::Cancel { pid: 7, secret: 9 })
        );
        assert_eq!(
            parse(&body(CANCEL_REQUEST, &[0, 0])),
            Err(StartupError::BadLength)
        );
    }

    #[test]
    fn startup_params_in_order() {
        let p = parse(&body(196_608, b"user\0app\0application_name\0psql\0\0")).expect("valid");
        let StartupPacket::Startup(p) = p else {
            panic!("not a startup: {p:?}")
        };
        assert_eq!(p.user(), Some("app"));
        assert_eq!(p.database(), Some("app"));
        assert_eq!(p.get("application_name"), Some("psql"));
        assert_eq!(p.minor_version, 0);
    }

    #[test]
    fn newer_minor_version_is_accepted_for_negotiation() {
        let p = parse(&body(196_610, b"user\0a\0_pq_.x\0y\0\0")).expect("valid");
        let StartupPacket::Startup(p) = p else {
            panic!("not a startup")
        };
        assert_eq!(p.minor_version, 2);
        assert_eq!(p.protocol_options(), vec!["_pq_.x".to_string()]);
    }

    #[test]
    fn bad_versions_and_layouts() {
        assert_eq!(
            parse(&body(0x0002_0000, b"\0")),
            Err(StartupError::UnsupportedVersion { major: 2, minor: 0 })
        );
        assert_eq!(
            parse(&body(196_608, b"user\0a")),
            Err(StartupError::BadLayout)
        );
        assert_eq!(
            parse(&body(196_608, b"user\0\0")),
            Err(StartupError::BadLayout)
        );
        assert_eq!(parse(b"ab"), Err(StartupError::BadLength));
    }

    #[test]
    fn options_are_split_like_postgres() {
        assert_eq!(
            parse_options("-c search_path=a,b --statement-timeout=5s -cwork_mem=1MB -c x=a\\ b"),
            Ok(vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "1MB".into()),
                ("x".into(), "a b".into()),
            ])
        );
        assert_eq!(parse_options("junk"), Err("junk".to_string()));
        assert_eq!(parse_options(""), Ok(vec![]));
    }
}
