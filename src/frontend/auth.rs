//! Checking a client's password, as Postgres does: SCRAM-SHA-256 or md5.
//!
//! The exchanges are plain state machines over the bytes of the client's
//! messages; the session code does the socket I/O. Secrets are derived once,
//! when the config is loaded, never per login.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::Md5;
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// A SCRAM-SHA-256 secret as Postgres stores it in `pg_authid.rolpassword`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramSecret {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<storedkey>:<serverkey>`.
    pub fn parse(text: &str) -> Option<ScramSecret> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramSecret {
            iterations: iterations.parse().ok().filter(|&i| i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// Derives a secret from a plain-text password with a fresh salt.
    pub fn from_password(password: &str) -> ScramSecret {
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        // postgres-protocol writes exactly the format parse() reads.
        Self::parse(&verifier).unwrap_or_else(Self::random)
    }

    /// A secret nobody knows the password of, so that an unknown user goes
    /// through the same exchange and fails the same way as a wrong password.
    pub fn random() -> ScramSecret {
        let mut rng = rand::thread_rng();
        let mut secret = ScramSecret {
            iterations: 4096,
            salt: vec![0; 16],
            stored_key: [0; 32],
            server_key: [0; 32],
        };
        rng.fill_bytes(&mut secret.salt);
        rng.fill_bytes(&mut secret.stored_key);
        rng.fill_bytes(&mut secret.server_key);
        secret
    }
}

/// Why a SCRAM exchange failed. `Malformed` is a protocol violation;
/// `WrongProof` is a wrong password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramError {
    Malformed(&'static str),
    WrongProof,
}

/// The server side of one SCRAM-SHA-256 exchange.
#[derive(Debug)]
pub struct ScramExchange {
    secret: ScramSecret,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// What the client-final's `c=` must carry: the gs2 header, then the
    /// channel binding data when the client binds.
    binding_input: Vec<u8>,
}

/// Channel binding on one login: whether the client chose
/// SCRAM-SHA-256-PLUS, and the server's `tls-server-end-point` data when
/// the connection is TLS (the PLUS mechanism was offered).
#[derive(Debug, Clone, Copy, Default)]
pub struct Binding<'a> {
    pub plus_selected: bool,
    pub end_point: Option<&'a [u8]>,
}

impl ScramExchange {
    /// Takes the client-first-message, returns the exchange and the
    /// server-first-message to send.
    pub fn start(
        secret: ScramSecret,
        client_first: &[u8],
    ) -> Result<(ScramExchange, String), ScramError> {
        Self::start_bound(secret, client_first, Binding::default())
    }

    /// [`ScramExchange::start`] on a connection where channel binding may
    /// be in play, checked as Postgres checks it.
    pub fn start_bound(
        secret: ScramSecret,
        client_first: &[u8],
        binding: Binding<'_>,
    ) -> Result<(ScramExchange, String), ScramError> {
        let text =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: channel-binding flag, optional authzid, then the bare message.
        let (flag, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        let bound = match (flag, binding.plus_selected, binding.end_point) {
            ("p=tls-server-end-point", true, Some(data)) => Some(data),
            (_, true, _) if !flag.starts_with("p=") => {
                return Err(ScramError::Malformed(
                    "client selected SCRAM-SHA-256-PLUS but the SCRAM message does not include channel binding data",
                ))
            }
            ("y", false, Some(_)) => {
                return Err(ScramError::Malformed(
                    "the client supports SCRAM channel binding but thinks the server does not; however, this server does support channel binding",
                ))
            }
            ("n" | "y", false, _) => None,
            (_, true, _) => {
                return Err(ScramError::Malformed(
                    "unsupported SCRAM channel-binding type",
                ))
            }
            _ if flag.starts_with("p=") => {
                return Err(ScramError::Malformed(
                    "client uses channel binding without selecting SCRAM-SHA-256-PLUS",
                ))
            }
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        };
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no authzid"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed("authzid is not supported"));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Malformed("no client nonce"))?;
        let mut server_nonce = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut server_nonce);
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        let mut binding_input = format!("{flag},{authzid},").into_bytes();
        binding_input.extend_from_slice(bound.unwrap_or_default());
        let exchange = ScramExchange {
            secret,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
            binding_input,
        };
        Ok((exchange, server_first))
    }

    /// Checks the client-final-message; on success returns the
    /// server-final-message (`v=...`) to send.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        self.finish_keys(client_final)
            .map(|(server_final, _)| server_final)
    }

    /// [`ScramExchange::finish`], also returning the client's ClientKey,
    /// which its proof reveals to whoever knows StoredKey: with it (and
    /// ServerKey) the proxy logs in to the servers as the client, without
    /// the password (SCRAM pass-through, as PgBouncer does).
    pub fn finish_keys(self, client_final: &[u8]) -> Result<(String, [u8; 32]), ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut channel_binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                channel_binding = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        let expected_binding = B64.encode(&self.binding_input);
        if channel_binding != Some(expected_binding.as_str()) {
            return Err(ScramError::Malformed("SCRAM channel binding check failed"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("bad proof encoding"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !constant_time_eq(&stored, &self.secret.stored_key) {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok((format!("v={}", B64.encode(server_signature)), client_key))
    }
}

pub(crate) fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `md5` + hex(md5(password || user)), as `pg_authid` stores md5 passwords.
pub fn md5_secret(user: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{:x}", h.finalize())
}

/// The md5 password response for a stored md5 secret and a salt (`md5` +
/// hex(md5(secret-hex || salt))): what a client that knows the password
/// sends, and what the proxy sends for a user it knows only by the hash.
pub fn md5_response(stored: &str, salt: [u8; 4]) -> Option<String> {
    let inner = stored.strip_prefix("md5")?;
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    Some(format!("md5{:x}", h.finalize()))
}

/// Checks an md5 password response against a stored md5 secret.
pub fn md5_check(stored: &str, salt: [u8; 4], response: &[u8]) -> bool {
    md5_response(stored, salt)
        .is_some_and(|expected| constant_time_eq(expected.as_bytes(), response))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Runs a full exchange with postgres-protocol's client, which is what
    /// tokio-postgres uses against real servers.
    fn exchange(secret: ScramSecret, password: &str) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let (server, server_first) = ScramExchange::start(secret, client.message())?;
        client
            .update(server_first.as_bytes())
            .map_err(|_| ScramError::Malformed("client rejected server-first"))?;
        let server_final = server.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .map_err(|_| ScramError::Malformed("client rejected server signature"))
    }

    #[test]
    fn right_password_passes_and_server_proves_itself() {
        assert_eq!(
            exchange(ScramSecret::from_password("s3cret"), "s3cret"),
            Ok(())
        );
    }

    #[test]
    fn wrong_password_fails_with_wrong_proof() {
        assert_eq!(
            exchange(ScramSecret::from_password("s3cret"), "guess"),
            Err(ScramError::WrongProof)
        );
        assert_eq!(
            exchange(ScramSecret::random(), ""),
            Err(ScramError::WrongProof)
        );
    }

    #[test]
    fn stored_verifier_parses() {
        let v = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$\
                 WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:\
                 4jIHmPsEPPmYc3CD3mgcBHYm69RbXOiL7GnWHTnQK1c=";
        let s = ScramSecret::parse(v).expect("valid verifier");
        assert_eq!(s.iterations, 4096);
        assert_eq!(s.salt, b"saltsaltsaltsalt");
        assert!(ScramSecret::parse("SCRAM-SHA-256$0:c2FsdA==$a:b").is_none());
        assert!(ScramSecret::parse("md5abc").is_none());
    }

    #[test]
    fn channel_binding_request_is_refused() {
        let err = ScramExchange::start(ScramSecret::random(), b"p=tls-server-end-point,,n=,r=abc")
            .map(|_| ())
            .expect_err("no TLS");
        assert!(matches!(err, ScramError::Malformed(_)));
    }

    /// A full exchange with channel binding: the client binds to
    /// `client_sees`, the server checks against `server_has`.
    fn bound_exchange(client_sees: &[u8], server_has: &[u8]) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(
            b"s3cret",
            ChannelBinding::tls_server_end_point(client_sees.to_vec()),
        );
        let binding = Binding {
            plus_selected: true,
            end_point: Some(server_has),
        };
        let (server, server_first) = ScramExchange::start_bound(
            ScramSecret::from_password("s3cret"),
            client.message(),
            binding,
        )?;
        client
            .update(server_first.as_bytes())
            .map_err(|_| ScramError::Malformed("client rejected server-first"))?;
        server.finish(client.message()).map(drop)
    }

    #[test]
    fn channel_binding_to_the_certificate_is_checked() {
        assert_eq!(bound_exchange(b"hash", b"hash"), Ok(()));
        // A man in the middle shows the client another certificate.
        assert_eq!(
            bound_exchange(b"other", b"hash"),
            Err(ScramError::Malformed("SCRAM channel binding check failed"))
        );
        // "y": the client thinks the server cannot bind; over TLS it can,
        // so a downgrade is refused, as Postgres refuses it.
        let offered = Binding {
            plus_selected: false,
            end_point: Some(b"hash"),
        };
        let y = ScramExchange::start_bound(ScramSecret::random(), b"y,,n=,r=abc", offered);
        assert!(matches!(y, Err(ScramError::Malformed(_))));
        let n = ScramExchange::start_bound(ScramSecret::random(), b"n,,n=,r=abc", offered);
        assert!(n.is_ok(), "plain SCRAM stays allowed");
        // PLUS chosen without binding data.
        let plus = Binding {
            plus_selected: true,
            end_point: Some(b"hash"),
        };
        let err = ScramExchange::start_bound(ScramSecret::random(), b"n,,n=,r=abc", plus);
        assert!(matches!(err, Err(ScramError::Malformed(_))));
    }

    #[test]
    fn the_md5_hash_answers_as_the_password_would() {
        let salt = [1, 2, 3, 4];
        let from_hash = md5_response(&md5_secret("app", "pw"), salt);
        let from_password = postgres_protocol::authentication::md5_hash(b"app", b"pw", salt);
        assert_eq!(from_hash, Some(from_password));
        assert_eq!(md5_response("SCRAM-SHA-256$...", salt), None);
    }

    #[test]
    fn md5_matches_libpq() {
        // libpq: "md5" + md5(md5(password + user) + salt)
        let stored = md5_secret("app", "app");
        let salt = [1, 2, 3, 4];
        let response = postgres_protocol::authentication::md5_hash(b"app", b"app", salt);
        assert!(md5_check(&stored, salt, response.as_bytes()));
        let wrong = postgres_protocol::authentication::md5_hash(b"app", b"nope", salt);
        assert!(!md5_check(&stored, salt, wrong.as_bytes()));
    }
}
