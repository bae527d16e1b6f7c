//! The payment service's state: charges, and the stored answer for every
//! idempotency key, so a retried request never makes a second charge.
//!
//! Failures are injected here, at the two places that matter: *before*
//! recording (nothing happened; a retry makes the charge) and *after*
//! recording (the charge exists but the caller never hears of it; a retry
//! must get the same charge back).

use std::collections::HashMap;
use std::sync::Mutex;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::migrate::DECLINED_CUSTOMER;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRequest {
    pub amount: i64,
    pub currency: String,
    pub customer: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Charge {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub customer: String,
    pub description: String,
    pub idempotency_key: Option<String>,
}

/// Where an injected failure strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureMode {
    /// Each failure is before or after recording, at random.
    Random,
    BeforeRecording,
    AfterRecording,
}

/// The answer to one request: HTTP status and JSON body.
pub type Answer = (u16, Value);

struct Stored {
    request: ChargeRequest,
    answer: Answer,
}

#[derive(Default)]
struct State {
    by_key: HashMap<String, Stored>,
    charges: Vec<Charge>,
}

pub struct Ledger {
    state: Mutex<State>,
    failure: Mutex<(f64, FailureMode)>,
}

impl Ledger {
    /// A ledger failing `failure_rate` (0..=1) of requests, before or after
    /// recording at random.
    pub fn new(failure_rate: f64) -> Ledger {
        Ledger {
            state: Mutex::new(State::default()),
            failure: Mutex::new((failure_rate, FailureMode::Random)),
        }
    }

    pub fn set_failures(&self, rate: f64, mode: FailureMode) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = (rate, mode);
    }

    /// Every charge made so far.
    pub fn charges(&self) -> Vec<Charge> {
        self.state().charges.clone()
    }

    /// Handles `POST /charges`.
    pub fn charge(&self, key: Option<&str>, request: ChargeRequest) -> Answer {
        if request.amount <= 0 || request.customer.is_empty() {
            return error(
                400,
                "invalid_request_error",
                "amount and customer are required",
            );
        }
        let failure = self.roll_failure();
        if failure == Some(FailureMode::BeforeRecording) {
            return error(
                500,
                "api_error",
                "injected failure before recording the charge",
            );
        }
        let answer = {
            let mut state = self.state();
            match key.and_then(|k| state.by_key.get(k)) {
                Some(stored) if stored.request != request => error(
                    400,
                    "idempotency_error",
                    "this Idempotency-Key was used with other parameters",
                ),
                Some(stored) => stored.answer.clone(),
                None => {
                    let answer = state.create(key, &request);
                    if let Some(key) = key {
                        let stored = Stored {
                            request,
                            answer: answer.clone(),
                        };
                        state.by_key.insert(key.to_string(), stored);
                    }
                    answer
                }
            }
        };
        if failure == Some(FailureMode::AfterRecording) {
            return error(
                500,
                "api_error",
                "injected failure after recording the charge",
            );
        }
        answer
    }

    fn roll_failure(&self) -> Option<FailureMode> {
        let (rate, mode) = *self.failure.lock().unwrap_or_else(|p| p.into_inner());
        let mut rng = rand::thread_rng();
        if rate <= 0.0 || rng.gen::<f64>() >= rate {
            return None;
        }
        Some(match mode {
            FailureMode::Random if rng.gen_bool(0.5) => FailureMode::BeforeRecording,
            FailureMode::Random => FailureMode::AfterRecording,
            fixed => fixed,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// A decline for the declining customer, else a new charge.
    fn create(&mut self, key: Option<&str>, request: &ChargeRequest) -> Answer {
        if request.customer == DECLINED_CUSTOMER {
            return error(402, "card_error", "Your card was declined.");
        }
        let charge = Charge {
            id: format!(
                "ch_{}_{:08x}",
                self.charges.len() + 1,
                rand::random::<u32>()
            ),
            amount: request.amount,
            currency: request.currency.clone(),
            customer: request.customer.clone(),
            description: request.description.clone(),
            idempotency_key: key.map(str::to_string),
        };
        let body = serde_json::to_value(&charge).unwrap_or_else(|_| json!({ "id": charge.id }));
        self.charges.push(charge);
        (201, body)
    }
}

fn error(status: u16, kind: &str, message: &str) -> Answer {
    (
        status,
        json!({ "error": { "type": kind, "message": message } }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(customer: &str) -> ChargeRequest {
        ChargeRequest {
            amount: 2000,
            currency: "usd".into(),
            customer: customer.into(),
            description: "ride".into(),
        }
    }

    #[test]
    fn same_key_same_charge() {
        let ledger = Ledger::new(0.0);
        let (status, first) = ledger.charge(Some("k1"), request("cus_a"));
        assert_eq!(status, 201);
        assert_eq!(ledger.charge(Some("k1"), request("cus_a")), (201, first));
        assert_eq!(ledger.charge(Some("k1"), request("cus_b")).0, 400);
        assert_eq!(ledger.charges().len(), 1);
        assert_eq!(ledger.charge(Some("k2"), request("cus_a")).0, 201);
        assert_eq!(ledger.charges().len(), 2);
    }

    #[test]
    fn declines_are_stored_and_charge_nothing() {
        let ledger = Ledger::new(0.0);
        assert_eq!(ledger.charge(Some("d"), request(DECLINED_CUSTOMER)).0, 402);
        assert_eq!(ledger.charge(Some("d"), request(DECLINED_CUSTOMER)).0, 402);
        assert!(ledger.charges().is_empty());
    }

    #[test]
    fn failure_before_records_nothing_after_records_once() {
        let ledger = Ledger::new(0.0);
        ledger.set_failures(1.0, FailureMode::BeforeRecording);
        assert_eq!(ledger.charge(Some("k"), request("cus_a")).0, 500);
        assert!(ledger.charges().is_empty());
        ledger.set_failures(1.0, FailureMode::AfterRecording);
        assert_eq!(ledger.charge(Some("k"), request("cus_a")).0, 500);
        assert_eq!(ledger.charge(Some("k"), request("cus_a")).0, 500);
        assert_eq!(ledger.charges().len(), 1);
        ledger.set_failures(0.0, FailureMode::Random);
        let (status, body) = ledger.charge(Some("k"), request("cus_a"));
        assert_eq!(status, 201);
        assert_eq!(body["id"], json!(ledger.charges()[0].id));
    }
}
