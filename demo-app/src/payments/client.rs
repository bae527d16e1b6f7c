//! The API's client of the payment service (`PAYMENTS_URL`).
//!
//! Every outcome is sorted into what the charge phase must do with it: a
//! charge to record, a decline or refusal to store as the final answer, or an
//! unavailable service, after which the client retries with the same key.

use std::time::Duration;

use serde_json::Value;

use super::ledger::ChargeRequest;

/// Where `demo-app payments` listens by default.
pub const DEFAULT_PAYMENTS_URL: &str = "http://127.0.0.1:5001";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeOutcome {
    Charged {
        id: String,
    },
    /// The card was declined (402): final.
    Declined {
        message: String,
    },
    /// The service refused the request (another 4xx): final.
    Refused {
        status: u16,
        message: String,
    },
    /// A 5xx, a timeout or no connection: nothing is known; retry.
    Unavailable {
        reason: String,
    },
}

#[derive(Clone)]
pub struct PaymentsClient {
    http: reqwest::Client,
    base_url: String,
}

impl PaymentsClient {
    pub fn new(base_url: &str) -> PaymentsClient {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        PaymentsClient {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// `POST /charges` with `idempotency_key`.
    pub async fn charge(&self, idempotency_key: &str, request: &ChargeRequest) -> ChargeOutcome {
        let sent = self
            .http
            .post(format!("{}/charges", self.base_url))
            .header("Idempotency-Key", idempotency_key)
            .json(request)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                return ChargeOutcome::Unavailable {
                    reason: e.to_string(),
                }
            }
        };
        let status = response.status().as_u16();
        let body: Value = match response.json().await {
            Ok(body) => body,
            Err(e) => {
                return ChargeOutcome::Unavailable {
                    reason: format!("{status}: {e}"),
                }
            }
        };
        let message = body["error"]["message"].as_str().unwrap_or("").to_string();
        match status {
            200 | 201 => match body["id"].as_str() {
                Some(id) => ChargeOutcome::Charged { id: id.to_string() },
                None => ChargeOutcome::Unavailable {
                    reason: format!("{status} without a charge id"),
                },
            },
            402 => ChargeOutcome::Declined { message },
            400..=499 => ChargeOutcome::Refused { status, message },
            _ => ChargeOutcome::Unavailable {
                reason: format!("{status}: {message}"),
            },
        }
    }
}
