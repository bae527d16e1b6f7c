//! The client side of SCRAM-SHA-256 with keys instead of a password: the
//! ClientKey a client's proof revealed and the ServerKey of the stored
//! verifier (SCRAM pass-through). The server checks the proof made from
//! ClientKey as it would one made from the password, and proves itself
//! with ServerKey.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::frontend::auth::hmac;

/// The keys of one role, as a SCRAM verifier holds them (ServerKey) and a
/// client's proof reveals them (ClientKey).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ScramKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(..)")
    }
}

/// One exchange, message by message.
pub struct KeyedScram {
    keys: ScramKeys,
    /// The gs2 header and channel binding data, for `c=`.
    binding_input: Vec<u8>,
    client_first_bare: String,
    nonce: String,
    auth_message: Option<String>,
}

impl KeyedScram {
    /// `gs2_header` is `n,,`, `y,,` or `p=tls-server-end-point,,`, and
    /// `binding` the channel binding data that goes with `p=`.
    pub fn new(keys: ScramKeys, gs2_header: &str, binding: &[u8]) -> KeyedScram {
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = B64.encode(raw);
        let mut binding_input = gs2_header.as_bytes().to_vec();
        binding_input.extend_from_slice(binding);
        KeyedScram {
            keys,
            binding_input,
            client_first_bare: format!("n=,r={nonce}"),
            nonce,
            auth_message: None,
        }
    }

    /// The client-first-message.
    pub fn client_first(&self) -> Vec<u8> {
        let gs2_end = self
            .binding_input
            .windows(2)
            .position(|w| w == b",,")
            .map_or(0, |i| i + 2);
        let mut first = self.binding_input[..gs2_end].to_vec();
        first.extend_from_slice(self.client_first_bare.as_bytes());
        first
    }

    /// Takes the server-first-message; returns the client-final-message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, &'static str> {
        let text = std::str::from_utf8(server_first).map_err(|_| "server-first is not UTF-8")?;
        let nonce = text
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .ok_or("server-first has no nonce")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() <= self.nonce.len() {
            return Err("server nonce does not extend the client's");
        }
        let without_proof = format!("c={},r={nonce}", B64.encode(&self.binding_input));
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let stored_key: [u8; 32] = Sha256::digest(self.keys.client_key).into();
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = self
            .keys
            .client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message: the server knows ServerKey.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), &'static str> {
        let auth_message = self.auth_message.as_ref().ok_or("no exchange yet")?;
        let text = std::str::from_utf8(server_final).map_err(|_| "server-final is not UTF-8")?;
        if let Some(error) = text.strip_prefix("e=") {
            return Err(if error.is_empty() {
                "server error"
            } else {
                "server refused the proof"
            });
        }
        let claimed = text
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .ok_or("server-final has no signature")?;
        let expected = hmac(&self.keys.server_key, auth_message.as_bytes());
        if claimed == expected {
            Ok(())
        } else {
            Err("the server's signature does not match: it does not know this role's verifier")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::auth::{ScramExchange, ScramSecret};

    /// A client's login reveals ClientKey; the proxy logs in with it to a
    /// server holding the same verifier.
    #[test]
    fn keys_from_a_client_proof_log_in_where_the_password_would() {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let secret = ScramSecret::from_password("s3cret");
        // The client logs in to the proxy.
        let mut client = ScramSha256::new(b"s3cret", ChannelBinding::unsupported());
        let (exchange, first) =
            ScramExchange::start(secret.clone(), client.message()).expect("start");
        client.update(first.as_bytes()).expect("update");
        let (_, client_key) = exchange.finish_keys(client.message()).expect("finish");
        // The proxy logs in to the server, which holds the same verifier.
        let keys = ScramKeys {
            client_key,
            server_key: secret.server_key,
        };
        let mut proxy = KeyedScram::new(keys.clone(), "n,,", b"");
        let (server, server_first) =
            ScramExchange::start(secret.clone(), &proxy.client_first()).expect("server start");
        let client_final = proxy.client_final(server_first.as_bytes()).expect("final");
        let server_final = server
            .finish(&client_final)
            .expect("the server accepts the proof");
        proxy
            .verify(server_final.as_bytes())
            .expect("the server proves itself");
        // Another role's server key does not prove the server.
        let other = ScramSecret::from_password("other");
        let mut proxy = KeyedScram::new(
            ScramKeys {
                server_key: other.server_key,
                ..keys
            },
            "n,,",
            b"",
        );
        let (server, server_first) =
            ScramExchange::start(secret, &proxy.client_first()).expect("server start");
        let client_final = proxy.client_final(server_first.as_bytes()).expect("final");
        let server_final = server.finish(&client_final).expect("proof is still right");
        assert!(proxy.verify(server_final.as_bytes()).is_err());
    }
}
