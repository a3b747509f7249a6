//! A token bucket that caps a store's backend calls: `rate` calls per second sustained, up to
//! `burst` at once. Callers wait for a token instead of being refused, so a burst of work
//! (thousands of new resources, an operator restart) is spread out rather than throttled by
//! the vault.

use std::time::Duration;

use tokio::{sync::Mutex, time::Instant};

pub struct RequestBudget {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RequestBudget {
    pub fn new(rate_per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate: f64::from(rate_per_second.max(1)), burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Waits until a call may be made and takes its token.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().await;
                let (tokens, last) = &mut *state;
                let now = Instant::now();
                *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
                *last = now;
                if *tokens >= 1.0 {
                    *tokens -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - *tokens) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert!((0.99..1.01).contains(&elapsed), "10 more calls at 10/s take 1 s, took {elapsed}");
    }
}
