//! Generated hostile input for every parser that reads a client's bytes:
//! the frontend framer and the unit builder (`framing`), the startup
//! packet (`startup`), the SCRAM and md5 exchanges (`auth`), and the SQL
//! classifier with the facts and the literal-blind cache key built on it
//! (`classify`). Nothing here needs a cluster.
//!
//! Each property is checked on arbitrary input and on valid input mutated
//! (`mutate`), because random bytes mostly die at the first check while
//! mutated real messages reach deep into each parser. Every property must
//! hold, and every case must finish: a case slower than [`CASE_LIMIT`]
//! fails the property (and proptest shrinks it to a small input), and a
//! case that never finishes is caught by [`watchdog`], which prints the
//! input and aborts the process, since a hung thread cannot be stopped.
//! (proptest's own `timeout` runs every case in a forked child, far too
//! slow for a million cases.)
//!
//! How many cases: `CAUSEWAY_FUZZ_CASES` in total across all properties,
//! shared out by [`SHARES`]; 10,000 by default, which is what `cargo test`
//! and CI run. The long run:
//!
//! ```sh
//! CAUSEWAY_FUZZ_CASES=1000000 cargo test --release --test fuzz -- --nocapture
//! ```
//!
//! Each run draws a fresh seed and prints it with any failure;
//! `PROPTEST_RNG_SEED=<seed>` replays that run. Failures are not persisted
//! to files: the seed and the shrunk input in the failure message are the
//! record.

mod auth;
mod classify;
mod corpus;
mod framing;
mod mutate;
mod startup;
mod watchdog;

use std::fmt::Debug;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestCaseResult, TestRunner};

/// Cases when `CAUSEWAY_FUZZ_CASES` is not set: a slice that keeps a debug
/// `cargo test` fast.
const DEFAULT_CASES: u64 = 10_000;

/// The longest one case may take, generously: inputs are under 64 KiB, and
/// the slowest parser (the classifier on 64 KiB of SQL) takes tens of
/// milliseconds in a debug build.
pub const CASE_LIMIT: Duration = Duration::from_secs(5);

/// Every property's share of the cases, in thousandths. The cheap byte
/// parsers get many cases, the classifier (sqlparser on every input) fewer
/// but still the most time.
const SHARES: &[(&str, u64)] = &[
    ("frontend_header_on_any_bytes", 40),
    ("backend_header_on_any_bytes", 20),
    ("frame_streams_mutated", 80),
    ("unit_builder_on_mutated_streams", 100),
    ("unit_bytes_readers_on_any_bytes", 30),
    ("bind_parameters_mutated", 30),
    ("startup_on_any_bytes", 40),
    ("startup_mutated", 80),
    ("startup_options_on_any_text", 20),
    ("scram_client_first_on_any_bytes", 30),
    ("scram_client_first_mutated", 40),
    ("scram_client_final_on_any_bytes", 30),
    ("scram_client_final_mutated", 50),
    ("scram_wrong_passwords_fail", 20),
    ("sasl_initial_response_mutated", 30),
    ("scram_verifier_on_any_text", 20),
    ("md5_on_any_input", 30),
    ("classify_any_text", 70),
    ("classify_token_soup", 80),
    ("classify_mutated_sql", 120),
    ("classify_long_sql", 10),
    ("literal_blind_key_is_sound", 30),
];

/// The total number of cases for this run.
fn total_cases() -> u64 {
    static TOTAL: OnceLock<u64> = OnceLock::new();
    *TOTAL.get_or_init(|| match std::env::var("CAUSEWAY_FUZZ_CASES") {
        Ok(text) => text
            .replace(['_', ','], "")
            .parse()
            .unwrap_or_else(|_| panic!("CAUSEWAY_FUZZ_CASES={text:?} is not a number")),
        Err(_) => DEFAULT_CASES,
    })
}

/// The seed of this run: `PROPTEST_RNG_SEED`, or a fresh one.
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| match std::env::var("PROPTEST_RNG_SEED") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("PROPTEST_RNG_SEED={text:?} is not a number")),
        Err(_) => {
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(Instant::now())
        }
    })
}

/// This property's number of cases.
fn cases_for(property: &str) -> u32 {
    let share = SHARES
        .iter()
        .find(|(name, _)| *name == property)
        .unwrap_or_else(|| panic!("{property} has no entry in SHARES"))
        .1;
    u32::try_from((total_cases() * share / 1000).max(1)).unwrap_or(u32::MAX)
}

/// Runs one property over its share of the cases. The input of a case that
/// fails, panics or is too slow is shrunk and reported with the seed.
pub fn check<S>(property: &'static str, strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Clone + Debug + Send + 'static,
{
    let cases = cases_for(property);
    let config = Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed()),
        max_shrink_iters: 2048,
        // A slow case is slow each time it is shrunk: stop after a minute.
        max_shrink_time: 60_000,
        ..Config::default()
    };
    let started = Instant::now();
    let result = TestRunner::new(config).run(&strategy, |input| {
        let _case = watchdog::enter(property, &input);
        let case_started = Instant::now();
        test(input)?;
        let took = case_started.elapsed();
        if took > CASE_LIMIT {
            return Err(TestCaseError::fail(format!(
                "one case took {took:?}, over the {CASE_LIMIT:?} limit"
            )));
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!(
            "{property} failed (replay with PROPTEST_RNG_SEED={}): {failure}",
            seed()
        );
    }
    eprintln!(
        "{property}: {cases} cases in {:.1} s (seed {})",
        started.elapsed().as_secs_f64(),
        seed()
    );
}

#[test]
fn shares_add_up_to_the_whole() {
    let total: u64 = SHARES.iter().map(|(_, share)| share).sum();
    assert_eq!(total, 1000, "SHARES are thousandths of the cases");
}
