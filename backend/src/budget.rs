//! A token bucket that caps a store's backend calls: `rate` calls per second sustained, up to
//! `burst` at once. Callers wait for a token instead of being refused, so a burst of work
//! (thousands of new resources, an operator restart) is spread out rather than throttled by
//! the vault. Routine refreshes (run inside [`routine`]) yield to everything else: a new or
//! changed resource never waits behind a backlog of scheduled re-reads.

use std::{
    future::Future,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::{sync::Mutex, time::Instant};

tokio::task_local! {
    static ROUTINE: ();
}

/// Runs `work` as routine: its backend calls take budget only when no other call waits.
pub async fn routine<F: Future>(work: F) -> F::Output {
    ROUTINE.scope((), work).await
}

fn is_routine() -> bool {
    ROUTINE.try_with(|_| ()).is_ok()
}

pub struct RequestBudget {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
    /// Callers outside `routine` waiting for a token.
    urgent_waiting: AtomicUsize,
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RequestBudget {
    pub fn new(rate_per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate_per_second.max(1)),
            burst,
            state: Mutex::new((burst, Instant::now())),
            urgent_waiting: AtomicUsize::new(0),
        }
    }

    /// Waits until a call may be made and takes its token.
    pub async fn acquire(&self) {
        let routine = is_routine();
        let _waiting = (!routine).then(|| {
            self.urgent_waiting.fetch_add(1, Ordering::SeqCst);
            Waiting(&self.urgent_waiting)
        });
        loop {
            let wait = {
                let mut state = self.state.lock().await;
                let (tokens, last) = &mut *state;
                let now = Instant::now();
                *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
                *last = now;
                let yield_to_urgent = routine && self.urgent_waiting.load(Ordering::SeqCst) > 0;
                if *tokens >= 1.0 && !yield_to_urgent {
                    *tokens -= 1.0;
                    return;
                }
                // Until a token is due; a routine caller yielding with tokens left polls again soon.
                Duration::from_secs_f64((1.0 - *tokens).max(0.1) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex as StdMutex};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spreads_calls_beyond_the_burst_at_the_rate() {
        let budget = RequestBudget::new(10, 5);
        let start = Instant::now();
        for _ in 0..5 {
            budget.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..10 {
            budget.acquire().await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!((0.99..1.05).contains(&elapsed), "10 more calls at 10/s take 1 s, took {elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn routine_calls_yield_to_waiting_urgent_ones() {
        let budget = Arc::new(RequestBudget::new(10, 1));
        budget.acquire().await; // the bucket is empty now
        let order = Arc::new(StdMutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (budget, order) = (budget.clone(), order.clone());
            tasks.push(tokio::spawn(routine(async move {
                budget.acquire().await;
                order.lock().unwrap().push(format!("routine-{i}"));
            })));
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // the routine callers wait first
        let (urgent_budget, urgent_order) = (budget.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            urgent_budget.acquire().await;
            urgent_order.lock().unwrap().push("urgent".to_string());
        }));
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order[0], "urgent", "the urgent caller got the next token: {order:?}");
        assert_eq!(order.len(), 4);
    }
}
