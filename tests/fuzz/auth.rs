//! The server side of SCRAM-SHA-256 (`frontend::auth::ScramExchange`), the
//! SASLInitialResponse that carries its first message, stored verifiers,
//! and the md5 check.
//!
//! What must hold: no panic on any bytes; an exchange the server starts
//! completes for a client that knows the password (and the server proves
//! itself with the right signature); a client-final-message that is not
//! exactly the right one never authenticates, whatever was changed in it;
//! a wrong password never authenticates.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use causeway::frontend::auth::{md5_check, md5_secret, ScramError, ScramExchange, ScramSecret};
use causeway::frontend::parse_sasl_initial;
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::check;
use super::mutate::{apply, edits};

const PASSWORD: &str = "app";

/// Iterations of the test secret: few, since the server's work does not
/// depend on them and the client side derives a key per wrong password.
const ITERATIONS: u32 = 16;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one block: SCRAM's `Hi`.
fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut block = salt.to_vec();
    block.extend(1u32.to_be_bytes());
    let mut u = hmac(password.as_bytes(), &block);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password.as_bytes(), &u);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

/// The stored secret for [`PASSWORD`] and the client's salted password.
fn secret() -> &'static (ScramSecret, [u8; 32]) {
    static SECRET: OnceLock<(ScramSecret, [u8; 32])> = OnceLock::new();
    SECRET.get_or_init(|| {
        let salt = b"causeway-fuzz-salt".to_vec();
        let salted = salted_password(PASSWORD, &salt, ITERATIONS);
        let stored_key = Sha256::digest(hmac(&salted, b"Client Key")).into();
        let server_key = hmac(&salted, b"Server Key");
        let secret = ScramSecret {
            iterations: ITERATIONS,
            salt,
            stored_key,
            server_key,
        };
        (secret, salted)
    })
}

/// What the server took from a client-first-message: gs2 header and bare
/// message, split as RFC 5802 says.
fn split_client_first(first: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(first).ok()?;
    let (flag, rest) = text.split_once(',')?;
    let (authzid, bare) = rest.split_once(',')?;
    Some((format!("{flag},{authzid},"), bare.to_string()))
}

/// The client-final-message of a client with this salted password, and
/// the server signature it must get back.
fn client_final(salted: &[u8; 32], gs2: &str, bare: &str, server_first: &str) -> (String, String) {
    let nonce = server_first
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .unwrap_or_default();
    let without_proof = format!("c={},r={nonce}", B64.encode(gs2));
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let client_key = hmac(salted, b"Client Key");
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let server_signature = hmac(&hmac(salted, b"Server Key"), auth_message.as_bytes());
    (
        format!("{without_proof},p={}", B64.encode(proof)),
        format!("v={}", B64.encode(server_signature)),
    )
}

/// Runs the server on `first`; if it accepts it, checks that the right
/// password completes the exchange.
fn start_then_finish(first: &[u8]) -> Result<(), TestCaseError> {
    let (secret, salted) = secret();
    let Ok((exchange, server_first)) = ScramExchange::start(secret.clone(), first) else {
        return Ok(());
    };
    let (gs2, bare) = split_client_first(first)
        .ok_or_else(|| TestCaseError::fail("accepted a first message without a gs2 header"))?;
    let client_nonce = bare.split(',').find_map(|a| a.strip_prefix("r="));
    prop_assert!(client_nonce.is_some_and(|n| !n.is_empty()));
    let expected_start = format!("r={}", client_nonce.unwrap_or_default());
    prop_assert!(server_first.starts_with(&expected_start));
    let (last, verifier) = client_final(salted, &gs2, &bare, &server_first);
    prop_assert_eq!(exchange.finish(last.as_bytes()), Ok(verifier));
    Ok(())
}

/// A valid client-first-message: `n,,n=,r=<nonce>` and variants.
fn client_first() -> impl Strategy<Value = String> {
    (
        proptest::sample::select(&["n", "y"][..]),
        "[a-z]{0,4}",
        "[!-+--~]{1,32}",
        proptest::option::of("[a-z]=[a-z0-9]{0,6}"),
    )
        .prop_map(|(flag, user, nonce, extension)| {
            let extension = extension.map(|e| format!(",{e}")).unwrap_or_default();
            format!("{flag},,n={user},r={nonce}{extension}")
        })
}

#[test]
fn scram_client_first_on_any_bytes() {
    let first = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (
            proptest::sample::select(
                &["n,,", "y,,", "p=tls-unique,,", "n,a=x,", "", ",,", "n,"][..]
            ),
            ".{0,48}"
        )
            .prop_map(|(head, tail)| format!("{head}{tail}").into_bytes()),
    ];
    check("scram_client_first_on_any_bytes", first, |first| {
        start_then_finish(&first)
    });
}

#[test]
fn scram_client_first_mutated() {
    check(
        "scram_client_first_mutated",
        (client_first(), edits()),
        |(first, edits)| {
            let mut bytes = first.into_bytes();
            apply(&mut bytes, &edits);
            start_then_finish(&bytes)
        },
    );
}

/// Starts an exchange with a valid first message; gives the exchange and
/// the right client-final-message.
fn started(first: &str) -> Result<(ScramExchange, String), TestCaseError> {
    let (secret, salted) = secret();
    let (exchange, server_first) = ScramExchange::start(secret.clone(), first.as_bytes())
        .map_err(|e| TestCaseError::fail(format!("valid first message refused: {e:?}")))?;
    let (gs2, bare) = split_client_first(first.as_bytes()).unwrap_or_default();
    let (last, _) = client_final(salted, &gs2, &bare, &server_first);
    Ok((exchange, last))
}

#[test]
fn scram_client_final_on_any_bytes() {
    let last = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..96),
        ("c=biws,r=.{0,40},p=", "[A-Za-z0-9+/=]{0,48}")
            .prop_map(|(head, proof)| format!("{head}{proof}").into_bytes()),
    ];
    check(
        "scram_client_final_on_any_bytes",
        (client_first(), last),
        |(first, last)| {
            let (exchange, _) = started(&first)?;
            prop_assert!(exchange.finish(&last).is_err());
            Ok(())
        },
    );
}

#[test]
fn scram_client_final_mutated() {
    check(
        "scram_client_final_mutated",
        (client_first(), edits()),
        |(first, edits)| {
            let (exchange, last) = started(&first)?;
            let mut mutated = last.clone().into_bytes();
            apply(&mut mutated, &edits);
            let result = exchange.finish(&mutated);
            if mutated == last.as_bytes() {
                prop_assert!(result.is_ok(), "the right message failed: {result:?}");
            } else {
                prop_assert!(
                    result.is_err(),
                    "a changed message authenticated: {:?}",
                    String::from_utf8_lossy(&mutated)
                );
            }
            Ok(())
        },
    );
}

#[test]
fn scram_wrong_passwords_fail() {
    let wrong = prop_oneof![
        ".{0,24}".prop_map(Err),
        proptest::collection::vec(any::<u8>(), 32).prop_map(Ok),
    ];
    check(
        "scram_wrong_passwords_fail",
        (client_first(), wrong),
        |(first, wrong)| {
            let (secret, _) = secret();
            let (exchange, server_first) = ScramExchange::start(secret.clone(), first.as_bytes())
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            let (gs2, bare) = split_client_first(first.as_bytes()).unwrap_or_default();
            let last = match wrong {
                // A client with another password.
                Err(password) => {
                    if password == PASSWORD {
                        return Ok(());
                    }
                    let salted = salted_password(&password, &secret.salt, ITERATIONS);
                    client_final(&salted, &gs2, &bare, &server_first).0
                }
                // A proof of random bytes, right in every other way.
                Ok(proof) => {
                    let (right, _) = client_final(&secret_salted(), &gs2, &bare, &server_first);
                    let head = right.rsplit_once(",p=").map(|(h, _)| h).unwrap_or_default();
                    format!("{head},p={}", B64.encode(proof))
                }
            };
            prop_assert_eq!(
                exchange.finish(last.as_bytes()),
                Err(ScramError::WrongProof)
            );
            Ok(())
        },
    );
}

fn secret_salted() -> [u8; 32] {
    secret().1
}

#[test]
fn sasl_initial_response_mutated() {
    let body = (
        prop_oneof![4 => Just("SCRAM-SHA-256"), 1 => Just("SCRAM-SHA-256-PLUS"), 1 => Just("")],
        client_first(),
        prop_oneof![1 => Just(vec![]), 3 => edits()],
    );
    check(
        "sasl_initial_response_mutated",
        body,
        |(mechanism, first, edits)| {
            let mut body = mechanism.as_bytes().to_vec();
            body.push(0);
            body.extend((first.len() as i32).to_be_bytes());
            body.extend(first.as_bytes());
            let valid = body.clone();
            apply(&mut body, &edits);
            match parse_sasl_initial(&body) {
                Ok(data) => {
                    prop_assert!(body.ends_with(data));
                    let declared = &body[body.len() - data.len() - 4..body.len() - data.len()];
                    let declared = i32::from_be_bytes(declared.try_into().unwrap_or_default());
                    prop_assert_eq!(declared as usize, data.len());
                    // The server then starts the exchange on it.
                    start_then_finish(data)?;
                }
                Err(_) => prop_assert!(body != valid || mechanism != "SCRAM-SHA-256"),
            }
            Ok(())
        },
    );
}

#[test]
fn scram_verifier_on_any_text() {
    let text = prop_oneof![
        ".{0,64}",
        (
            "SCRAM-SHA-256\\$[0-9]{1,6}:[A-Za-z0-9+/=]{0,24}\\$[A-Za-z0-9+/=]{0,48}:[A-Za-z0-9+/=]{0,48}"
        ),
        Just(postgres_protocol::password::scram_sha_256(b"app")).prop_flat_map(|v| {
            (Just(v), edits()).prop_map(|(v, edits)| {
                let mut bytes = v.into_bytes();
                apply(&mut bytes, &edits);
                String::from_utf8_lossy(&bytes).into_owned()
            })
        }),
    ];
    check("scram_verifier_on_any_text", text, |text| {
        if let Some(secret) = ScramSecret::parse(&text) {
            prop_assert!(secret.iterations > 0);
        }
        Ok(())
    });
}

#[test]
fn md5_on_any_input() {
    let input = (
        prop_oneof![
            ".{0,40}",
            ("[a-z]{0,8}", "[a-z]{0,8}").prop_map(|(u, p)| md5_secret(&u, &p)),
        ],
        any::<[u8; 4]>(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        edits(),
    );
    check(
        "md5_on_any_input",
        input,
        |(stored, salt, response, edits)| {
            match response {
                Some(response) => {
                    let _ = md5_check(&stored, salt, &response);
                }
                None => {
                    // The right response, then changed.
                    let Some(inner) = stored.strip_prefix("md5") else {
                        return Ok(());
                    };
                    let mut h = md5::Md5::new();
                    md5::Digest::update(&mut h, inner.as_bytes());
                    md5::Digest::update(&mut h, salt);
                    let right = format!("md5{:x}", md5::Digest::finalize(h)).into_bytes();
                    prop_assert!(md5_check(&stored, salt, &right));
                    let mut wrong = right.clone();
                    apply(&mut wrong, &edits);
                    prop_assert_eq!(md5_check(&stored, salt, &wrong), wrong == right);
                }
            }
            Ok(())
        },
    );
}

/// The helper client above agrees with postgres-protocol's client, which
/// is what tokio-postgres uses against real servers.
#[test]
fn helper_client_matches_a_real_client() {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    let (secret, salted) = secret();
    let mut client = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unsupported());
    let first = client.message().to_vec();
    let (exchange, server_first) =
        ScramExchange::start(secret.clone(), &first).expect("server accepts the first message");
    client
        .update(server_first.as_bytes())
        .expect("client accepts server-first");
    let (gs2, bare) = split_client_first(&first).expect("gs2 header");
    let (mine, verifier) = client_final(salted, &gs2, &bare, &server_first);
    assert_eq!(mine.as_bytes(), client.message());
    let server_final = exchange.finish(client.message()).expect("right password");
    assert_eq!(server_final, verifier);
    client
        .finish(server_final.as_bytes())
        .expect("client accepts the server's signature");
}
