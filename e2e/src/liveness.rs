//! Whether the programs a test runs in process (the operator) are still alive. A program that ends on its own
//! (an error, a panic, an unexpected return) reports here, and from then on every [`crate::eventually`] of that test
//! fails at once with the program's last words, instead of timing out on a symptom or, worse, passing a "nothing
//! happened" check because nothing could happen.
//!
//! Each `#[tokio::test]` runs on a thread of its own, and waits on that thread, so the registry is per thread: one
//! test's dead operator never fails another test.

use std::{
    cell::RefCell,
    sync::{Arc, Mutex},
};

type Outcome = Arc<Mutex<Option<String>>>;

thread_local! {
    static WATCHED: RefCell<Vec<(String, Outcome)>> = const { RefCell::new(Vec::new()) };
}

/// The handle a watched program reports its end through.
#[derive(Clone)]
pub struct Reporter(Outcome);

impl Reporter {
    /// Records that the program ended on its own, and why.
    pub fn ended(&self, why: String) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
    }
}

/// Starts watching a program named `name` for the current test; call from the test's own thread.
pub fn watch(name: &str) -> Reporter {
    let outcome = Outcome::default();
    WATCHED.with(|w| w.borrow_mut().push((name.to_string(), outcome.clone())));
    Reporter(outcome)
}

/// Panics if a program watched by the current test ended on its own.
pub fn check() {
    WATCHED.with(|w| {
        for (name, outcome) in w.borrow().iter() {
            if let Some(why) = outcome.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
                panic!("{name} ended unexpectedly: {why}");
            }
        }
    });
}

/// Runs `program` as a watched task: its end (error, panic or return) is reported under `name` unless the task is
/// aborted, which is how a test stops it on purpose.
pub fn spawn<F, E>(name: &str, program: F) -> tokio::task::JoinHandle<()>
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    use futures::FutureExt as _;
    let reporter = watch(name);
    tokio::spawn(async move {
        let why = match std::panic::AssertUnwindSafe(program).catch_unwind().await {
            Ok(Ok(())) => "it returned".to_string(),
            Ok(Err(e)) => format!("it failed: {e:#}"),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("it panicked: {message}")
            }
        };
        reporter.ended(why);
    })
}
