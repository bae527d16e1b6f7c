//! Catches a case that never finishes. A hung parser cannot be stopped
//! from outside its thread, and the test harness would wait for it
//! forever; so each case registers its input here while it runs, and a
//! background thread that finds one running longer than [`HANG_LIMIT`]
//! prints the property and the input, then aborts the whole process.
//! A slow case that does finish is failed by `check` instead, and shrunk.

use std::fmt::Debug;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Far beyond [`super::CASE_LIMIT`]: only a case that is stuck gets here.
pub const HANG_LIMIT: Duration = Duration::from_secs(60);

/// The case a test thread is running.
struct Running {
    property: &'static str,
    started: Instant,
    input: Box<dyn Debug + Send>,
}

type Slot = Arc<Mutex<Option<Running>>>;

fn slots() -> &'static Mutex<Vec<Slot>> {
    static SLOTS: OnceLock<Mutex<Vec<Slot>>> = OnceLock::new();
    SLOTS.get_or_init(|| {
        std::thread::spawn(watch);
        Mutex::new(Vec::new())
    })
}

thread_local! {
    static MINE: Slot = {
        let slot = Slot::default();
        slots().lock().unwrap_or_else(|e| e.into_inner()).push(slot.clone());
        slot
    };
}

/// Marks a case as running on this thread until the guard is dropped.
pub fn enter<T: Debug + Clone + Send + 'static>(property: &'static str, input: &T) -> CaseGuard {
    MINE.with(|slot| {
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running {
            property,
            started: Instant::now(),
            input: Box::new(input.clone()),
        });
    });
    CaseGuard
}

pub struct CaseGuard;

impl Drop for CaseGuard {
    fn drop(&mut self) {
        MINE.with(|slot| *slot.lock().unwrap_or_else(|e| e.into_inner()) = None);
    }
}

fn watch() {
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let slots = slots().lock().unwrap_or_else(|e| e.into_inner()).clone();
        for slot in slots {
            let running = slot.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(case) = running.as_ref() {
                if case.started.elapsed() > HANG_LIMIT {
                    let input = format!("{:?}", case.input);
                    let shown: String = input.chars().take(8192).collect();
                    eprintln!(
                        "HANG: a case of {} has run for over {HANG_LIMIT:?} \
                         (seed {}); its input ({} characters of Debug):\n{shown}",
                        case.property,
                        super::seed(),
                        input.len()
                    );
                    std::process::abort();
                }
            }
        }
    }
}
