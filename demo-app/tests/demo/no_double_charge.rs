//! Never a double charge: many keys, each sent by two clients at once, with
//! 30% of charges failing (before or after the payment service records
//! them) and a third of first attempts failing on purpose after a recovery
//! point, every client retrying with the same key until the answer is final.
//! Then: one ride per key, a charge on every 201 ride, and the payment
//! service's charges exactly those, one per key.

use std::collections::{HashMap, HashSet};

use rand::seq::SliceRandom;

use crate::harness::{new_key, primary, ride_params, run, App, DECLINED_USER};

const KEYS: usize = 160;
const CLIENTS_PER_KEY: usize = 2;
const USERS: &[&str] = &[
    "user@example.com",
    "alice@example.com",
    "bob@example.com",
    "carol@example.com",
    DECLINED_USER,
];

#[test]
fn retries_and_failures_never_charge_twice() {
    run(async {
        let app: &'static App = Box::leak(Box::new(App::start(0.3)));
        let mut keys = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..KEYS {
            let user = *USERS.choose(&mut rand::thread_rng()).unwrap_or(&USERS[0]);
            let (key, params) = (new_key(), ride_params());
            keys.push((user, key.clone()));
            let inject = ["started", "ride_created", "charge_created"]
                .get(i % 9)
                .copied();
            for client in 0..CLIENTS_PER_KEY {
                let (key, params) = (key.clone(), params.clone());
                tasks.push(tokio::spawn(async move {
                    let mut requests = 0;
                    if client == 0 && inject.is_some() {
                        app.post_ride(Some(user), Some(&key), &params, inject).await;
                        requests += 1;
                    }
                    let answers = app.post_ride_until_final(user, &key, &params).await;
                    requests += answers.len();
                    (answers.last().cloned().expect("final"), requests)
                }));
            }
        }
        let mut requests = 0;
        let mut finals: HashMap<u16, usize> = HashMap::new();
        for task in tasks {
            let ((status, _), n) = task.await.expect("client task");
            requests += n;
            *finals.entry(status).or_default() += 1;
        }
        eprintln!(
            "{requests} requests, final answers {finals:?}, {} charges",
            app.ledger.charges().len()
        );
        assert!(finals.keys().all(|s| *s == 201 || *s == 402), "{finals:?}");

        let db = primary().await;
        let key_names: Vec<String> = keys.iter().map(|(_, k)| k.clone()).collect();
        let rows = db
            .query(
                "SELECT k.id, k.response_code, u.email,
                        (SELECT count(*) FROM rides r WHERE r.idempotency_key_id = k.id),
                        (SELECT charge_id FROM rides r WHERE r.idempotency_key_id = k.id)
                   FROM idempotency_keys k JOIN users u ON u.id = k.user_id
                  WHERE k.idempotency_key = ANY($1)",
                &[&key_names],
            )
            .await
            .expect("keys");
        assert_eq!(rows.len(), KEYS, "one key row per key");
        let ledger_by_key: HashMap<String, String> = app
            .ledger
            .charges()
            .into_iter()
            .filter_map(|c| Some((c.idempotency_key?, c.id)))
            .collect();
        assert_eq!(
            ledger_by_key.len(),
            app.ledger.charges().len(),
            "no payment key was charged twice"
        );
        let mut charged = HashSet::new();
        for row in rows {
            let (id, code, email): (i64, Option<i32>, String) =
                (row.get(0), row.get(1), row.get(2));
            let (rides, charge): (i64, Option<String>) = (row.get(3), row.get(4));
            assert_eq!(rides, 1, "key {id}: exactly one ride");
            let ledger_charge = ledger_by_key.get(&demo_app::atomic::charge::payment_key(id));
            match code {
                Some(201) => {
                    let charge =
                        charge.unwrap_or_else(|| panic!("key {id}: 201 ride without a charge"));
                    assert_eq!(
                        ledger_charge,
                        Some(&charge),
                        "key {id}: the ride's charge is the ledger's"
                    );
                    assert!(
                        charged.insert(charge),
                        "key {id}: a charge shared by two rides"
                    );
                }
                Some(402) => {
                    assert_eq!(email, DECLINED_USER);
                    assert_eq!(
                        (charge, ledger_charge),
                        (None, None),
                        "key {id}: declined, not charged"
                    );
                }
                other => panic!("key {id}: unfinished or unexpected response {other:?}"),
            }
        }
        assert_eq!(
            charged.len(),
            app.ledger.charges().len(),
            "charges == finished rides"
        );
        assert!(requests >= 500, "only {requests} requests");
    })
}
