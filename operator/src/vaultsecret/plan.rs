//! The sync decision as a pure function: from what is known about a VaultSecret (its refresh interval, the status it
//! last reported, what was asked of it, the time) to what a reconcile does. The reconcile only carries the decision
//! out, so every case is a row in the table of unit tests below, run in milliseconds.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use vaultsync_api::{VaultSecretStatus, condition::READY};

use crate::args::parse_duration;

/// The shortest refresh interval accepted (also enforced at admission): faster polling only burns vault budget.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// The longest refresh interval accepted (also enforced at admission): one year.
pub const MAX_REFRESH: Duration = Duration::from_secs(8760 * 3600);

/// How often a VaultSecret reads the vault again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interval {
    /// `refreshInterval: "0"`: read once, then only on a spec change or a forced sync.
    Once,
    Every(Duration),
}

/// Parses and bounds a `refreshInterval`. The apiserver refuses values out of bounds already; this is the second
/// check, for objects stored before the bounds existed or written around admission.
pub fn refresh_interval(text: &str) -> Result<Interval, String> {
    let interval = parse_duration(text).map_err(|e| format!("refreshInterval: {e}"))?;
    if interval.is_zero() {
        return Ok(Interval::Once);
    }
    if !(MIN_REFRESH..=MAX_REFRESH).contains(&interval) {
        return Err(format!("refreshInterval {text:?} is outside the accepted range 10s to 8760h (or 0 for once)"));
    }
    Ok(Interval::Every(interval))
}

/// Everything the decision depends on.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub interval: Interval,
    /// The latest status this VaultSecret reported.
    pub status: &'a VaultSecretStatus,
    /// The spec's generation.
    pub generation: Option<i64>,
    /// The `vaultsync.dev/force-sync` annotation.
    pub force_annotation: Option<&'a str>,
    /// A vault event asked for this VaultSecret to refresh.
    pub requested: bool,
    pub now: Timestamp,
}

/// Why the vault is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadReason {
    /// Never synced.
    First,
    /// The spec changed since the last sync.
    SpecChanged,
    /// A new `vaultsync.dev/force-sync` value.
    Forced,
    /// A vault event named an object it reads.
    Requested,
    /// The last attempt failed; retried on that failure's backoff.
    Retry,
    /// Its refresh time came.
    Due,
    /// The Secret no longer holds what was written and nothing remembers it.
    Drift,
}

/// What a reconcile does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is due: make sure the Secret still holds the content whose digest is `expected` (healing it from
    /// memory if not), read nothing, and look again after `next` (`None`: only when something changes).
    Check { expected: String, next: Option<Duration> },
    /// Read the vault.
    Read(Read),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Read {
    pub reason: ReadReason,
    /// The oldest cached read this may reuse: none for a forced sync (it must see the vault as it is now); half the
    /// interval otherwise, so a routine refresh never reuses its own previous read; `None` means the cache's own
    /// window.
    pub max_age: Option<Duration>,
    /// Routine work yields the store's request budget to new, changed and forced work.
    pub routine: bool,
}

impl Read {
    /// A read for `reason` with the cache age and budget priority that reason calls for.
    pub fn because(reason: ReadReason, interval: Interval) -> Read {
        let max_age = match (reason, interval) {
            (ReadReason::Forced, _) => Some(Duration::ZERO),
            (_, Interval::Every(every)) => Some(every / 2),
            (_, Interval::Once) => None,
        };
        Read { reason, max_age, routine: matches!(reason, ReadReason::Due | ReadReason::Drift) }
    }
}

/// Whether the last reported condition is `Ready=True`.
pub fn is_ready(status: &VaultSecretStatus) -> bool {
    status.conditions.iter().any(|c| c.type_ == READY && c.status == "True")
}

/// The force-sync value to act on, if the annotation holds one not acted on yet.
pub fn new_force_request<'a>(facts: &Facts<'a>) -> Option<&'a str> {
    facts.force_annotation.filter(|value| facts.status.force_sync.as_deref() != Some(*value))
}

pub fn decide(facts: &Facts<'_>) -> Decision {
    let status = facts.status;
    // A forced sync comes first: whatever else holds, it must not reuse a cached read.
    let reason = if new_force_request(facts).is_some() {
        Some(ReadReason::Forced)
    } else if status.synced_at.is_none() {
        Some(ReadReason::First)
    } else if status.observed_generation != facts.generation {
        Some(ReadReason::SpecChanged)
    } else if facts.requested {
        Some(ReadReason::Requested)
    } else if !is_ready(status) {
        Some(ReadReason::Retry)
    } else {
        None
    };
    if let Some(reason) = reason {
        return Decision::Read(Read::because(reason, facts.interval));
    }
    let refresh_at = status.refresh_time.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
    let next = match (facts.interval, refresh_at) {
        (Interval::Once, _) => None,
        (Interval::Every(_), None) => return Decision::Read(Read::because(ReadReason::Due, facts.interval)),
        (Interval::Every(_), Some(at)) if at <= facts.now => {
            return Decision::Read(Read::because(ReadReason::Due, facts.interval));
        }
        (Interval::Every(_), Some(at)) => Some(at.duration_since(facts.now).unsigned_abs().max(Duration::from_secs(1))),
    };
    match &status.data_hmac {
        Some(expected) => Decision::Check { expected: expected.clone(), next },
        // Synced before without a digest (an older operator): read to record one.
        None => Decision::Read(Read::because(ReadReason::Due, facts.interval)),
    }
}

/// How long a VaultSecret waits after a failure whose own backoff is `backoff`: never longer than its refresh
/// interval, so it is back within one interval of the fault's end (and a failing VaultSecret never asks the vault
/// more often than a healthy one reads it), unless the vault itself asked for the wait (`Retry-After`), which is
/// honoured.
pub fn retry_after_failure(backoff: Duration, interval: Interval, vault_asked: bool) -> Duration {
    match interval {
        Interval::Every(every) if !vault_asked => backoff.min(every),
        _ => backoff,
    }
}

/// When the next routine refresh is due after a read at `now`: the interval stretched by `jitter` (0 to 0.1) so
/// that many VaultSecrets on one interval spread out. `None` for [`Interval::Once`] or if the time cannot be
/// represented (never for an interval within the bounds).
pub fn next_refresh(now: Timestamp, interval: Interval, jitter: f64) -> Option<Timestamp> {
    let Interval::Every(every) = interval else { return None };
    let stretched = Duration::try_from_secs_f64(every.as_secs_f64() * (1.0 + jitter.clamp(0.0, 0.1))).ok()?;
    now.checked_add(SignedDuration::try_from(stretched).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use vaultsync_api::Condition;

    use super::*;

    const NOW: &str = "2026-12-01T12:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn ready(status: &str) -> Condition {
        Condition {
            type_: READY.into(),
            status: status.into(),
            reason: "Synced".into(),
            message: String::new(),
            last_transition_time: NOW.into(),
            observed_generation: Some(1),
        }
    }

    /// A VaultSecret synced at generation 1, Ready, next refresh in 10 minutes, force-sync "a" acted on.
    fn synced() -> VaultSecretStatus {
        VaultSecretStatus {
            conditions: vec![ready("True")],
            observed_generation: Some(1),
            synced_at: Some("2026-12-01T11:00:00Z".into()),
            refresh_time: Some("2026-12-01T12:10:00Z".into()),
            data_hmac: Some("hmac-sha256:k:abc".into()),
            force_sync: Some("a".into()),
            ..Default::default()
        }
    }

    const HOUR: Interval = Interval::Every(Duration::from_secs(3600));

    fn facts(status: &VaultSecretStatus) -> Facts<'_> {
        Facts { interval: HOUR, status, generation: Some(1), force_annotation: Some("a"), requested: false, now: now() }
    }

    fn read(reason: ReadReason, max_age: Option<u64>, routine: bool) -> Decision {
        Decision::Read(Read { reason, max_age: max_age.map(Duration::from_secs), routine })
    }

    #[test]
    fn the_decision_table() {
        let base = synced();
        let never = VaultSecretStatus::default();
        let failing = VaultSecretStatus { conditions: vec![ready("False")], ..synced() };
        let due = VaultSecretStatus { refresh_time: Some("2026-12-01T11:59:59Z".into()), ..synced() };
        let no_refresh_time = VaultSecretStatus { refresh_time: None, ..synced() };
        let no_digest = VaultSecretStatus { data_hmac: None, ..synced() };
        let check_in_10m =
            Decision::Check { expected: "hmac-sha256:k:abc".into(), next: Some(Duration::from_secs(600)) };
        let cases: Vec<(&str, Facts<'_>, Decision)> = vec![
            ("synced, not due: check only", facts(&base), check_in_10m.clone()),
            ("never synced, created with a force value", facts(&never), read(ReadReason::Forced, Some(0), false)),
            (
                "spec changed",
                Facts { generation: Some(2), ..facts(&base) },
                read(ReadReason::SpecChanged, Some(1800), false),
            ),
            (
                "new force-sync value",
                Facts { force_annotation: Some("b"), ..facts(&base) },
                read(ReadReason::Forced, Some(0), false),
            ),
            ("force-sync value already acted on", facts(&base), check_in_10m.clone()),
            ("force-sync annotation removed", Facts { force_annotation: None, ..facts(&base) }, check_in_10m.clone()),
            ("vault event", Facts { requested: true, ..facts(&base) }, read(ReadReason::Requested, Some(1800), false)),
            ("last attempt failed", facts(&failing), read(ReadReason::Retry, Some(1800), false)),
            ("refresh time passed", facts(&due), read(ReadReason::Due, Some(1800), true)),
            ("no refresh time recorded", facts(&no_refresh_time), read(ReadReason::Due, Some(1800), true)),
            ("synced without a digest", facts(&no_digest), read(ReadReason::Due, Some(1800), true)),
            (
                "read once: never due again",
                Facts { interval: Interval::Once, ..facts(&due) },
                Decision::Check { expected: "hmac-sha256:k:abc".into(), next: None },
            ),
            (
                "read once, first time",
                Facts { interval: Interval::Once, force_annotation: None, ..facts(&never) },
                read(ReadReason::First, None, false),
            ),
            (
                "read once, forced",
                Facts { interval: Interval::Once, force_annotation: Some("b"), ..facts(&base) },
                read(ReadReason::Forced, Some(0), false),
            ),
            (
                "force beats a spec change",
                Facts { generation: Some(2), force_annotation: Some("b"), ..facts(&base) },
                read(ReadReason::Forced, Some(0), false),
            ),
            (
                "never synced, no force value yet",
                Facts { force_annotation: None, ..facts(&never) },
                read(ReadReason::First, Some(1800), false),
            ),
        ];
        for (name, facts, expected) in cases {
            assert_eq!(decide(&facts), expected, "{name}");
        }
    }

    #[test]
    fn a_refresh_time_a_second_away_waits_at_least_a_second() {
        let status = VaultSecretStatus { refresh_time: Some("2026-12-01T12:00:00.2Z".into()), ..synced() };
        assert_eq!(
            decide(&facts(&status)),
            Decision::Check { expected: "hmac-sha256:k:abc".into(), next: Some(Duration::from_secs(1)) }
        );
    }

    #[test]
    fn failures_are_retried_within_the_refresh_interval() {
        let s = Duration::from_secs;
        let table = [
            // backoff, interval, the vault asked, wait
            (s(30), Interval::Every(s(10)), false, s(10)),
            (s(30), Interval::Every(s(3600)), false, s(30)),
            (s(300), Interval::Every(s(60)), false, s(60)),
            (s(30), Interval::Every(s(10)), true, s(30)),
            (s(30), Interval::Once, false, s(30)),
        ];
        for (backoff, interval, asked, wait) in table {
            assert_eq!(retry_after_failure(backoff, interval, asked), wait, "{backoff:?} {interval:?} {asked}");
        }
    }

    #[test]
    fn refresh_intervals_are_bounded() {
        assert_eq!(refresh_interval("0"), Ok(Interval::Once));
        assert_eq!(refresh_interval("10s"), Ok(Interval::Every(Duration::from_secs(10))));
        assert_eq!(refresh_interval("1h30m"), Ok(Interval::Every(Duration::from_secs(5400))));
        assert_eq!(refresh_interval("8760h"), Ok(Interval::Every(MAX_REFRESH)));
        for hostile in ["1ms", "9s", "8761h", "80000000h", "99999999999999999999h", "1h 2m", "", "-1h", "1d"] {
            let error = refresh_interval(hostile).expect_err(hostile);
            assert!(error.contains("refreshInterval"), "{hostile}: {error}");
        }
    }

    #[test]
    fn next_refresh_never_overflows() {
        let at = next_refresh(now(), Interval::Every(MAX_REFRESH), 0.1).expect("a year from now fits");
        assert!(at > now());
        assert_eq!(next_refresh(now(), Interval::Once, 0.0), None);
        let end_of_time: Timestamp = "9999-12-01T00:00:00Z".parse().unwrap();
        assert_eq!(next_refresh(end_of_time, Interval::Every(MAX_REFRESH), 0.0), None, "overflow is None, not a panic");
        let exact = next_refresh(now(), Interval::Every(Duration::from_secs(100)), 0.05).unwrap();
        assert_eq!(exact.duration_since(now()).as_secs_f64(), 105.0);
    }
}
