//! The sync decision as a pure function: from what is known about a VaultSecret (its refresh interval, the status it
//! last reported, when this process last read it, what was asked of it, the time) to what a reconcile does. The
//! reconcile only carries the decision out, so every case is a row in the table of unit tests below, run in
//! milliseconds.
//!
//! The schedule is kept out of the status, so that a refresh that finds the same content writes nothing: each
//! VaultSecret refreshes in slots every `interval` apart, at an offset given by a hash of what it reads (its store and
//! objects): VaultSecrets on one interval spread evenly over it, while those that read the same objects share their
//! slots, and so one read per object and interval. A slot is taken only if it comes at least nine tenths of an
//! interval after the last read (the age a refresh accepts from the cache), so a VaultSecret never reuses its own
//! previous read: in steady state it reads every interval, and the first refresh after a read outside its slots
//! (creation, a forced sync) comes 0.9 to 1.9 intervals later. After a restart the last read is not known, and the
//! next slot is simply the next one: a restart reads nothing until then, and causes no storm.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
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
    /// When this process last read the vault for it; for one not read since the process started, a whole interval
    /// before the process first looked at it (so its next slot is simply the next one).
    pub last_read: Timestamp,
    /// Its slot offset within the interval ([`phase`]).
    pub phase: Duration,
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
    /// The oldest cached read this may reuse: none for a forced sync (it must see the vault as it is now); nine
    /// tenths of the interval otherwise, so VaultSecrets that read one object share one read per interval (however
    /// long working through them takes) while none reuses its own previous read (its slots are an interval apart).
    /// Five minutes for a VaultSecret that reads once.
    pub max_age: Option<Duration>,
    /// Routine work yields the store's request budget to new, changed and forced work.
    pub routine: bool,
}

impl Read {
    /// A read for `reason` with the cache age and budget priority that reason calls for.
    pub fn because(reason: ReadReason, interval: Interval) -> Read {
        let max_age = match (reason, interval) {
            (ReadReason::Forced, _) => Duration::ZERO,
            // Healing restores what the last refresh read (the cache keeps it while it is in use), as a copy kept
            // in memory would, without a vault call; an older or pruned entry is read again.
            (ReadReason::Drift, Interval::Every(every)) => every.saturating_mul(2),
            (_, Interval::Every(every)) => every.mul_f64(0.9),
            (_, Interval::Once) => Duration::from_secs(300),
        };
        let max_age = Some(max_age);
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
    let next = match facts.interval {
        Interval::Once => None,
        Interval::Every(every) => match next_due(facts.last_read, every, facts.phase) {
            Some(due) if due > facts.now => {
                Some(due.duration_since(facts.now).unsigned_abs().max(Duration::from_secs(1)))
            }
            _ => return Decision::Read(Read::because(ReadReason::Due, facts.interval)),
        },
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

/// A slot offset within `interval` from a key (what a VaultSecret reads): stable across restarts, spread evenly.
pub fn phase(uid: &str, interval: Duration) -> Duration {
    // FNV-1a: a stable hash (std's default hasher is seeded per process).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in uid.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let millis = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(hash % millis)
}

/// A VaultSecret's slot within `interval`: its store's round (every VaultSecret of a store comes due within the
/// first tenth of the interval after the store's own phase, so that one list of a Key Vault serves the whole round)
/// plus an offset within that tenth from what it reads (VaultSecrets reading the same objects share it, and so one
/// read).
pub fn slot_phase(store: &str, reads: &str, interval: Duration) -> Duration {
    let slot = phase(store, interval) + phase(reads, interval / 10);
    if slot >= interval { slot - interval } else { slot }
}

/// The first slot (a time `k * interval + phase` after the Unix epoch) at least nine tenths of an interval after
/// `last_read`. `None` only if the time cannot be represented.
pub fn next_due(last_read: Timestamp, interval: Duration, phase: Duration) -> Option<Timestamp> {
    let interval_ms = i128::try_from(interval.as_millis()).ok().filter(|ms| *ms > 0)?;
    let phase_ms = i128::try_from(phase.as_millis()).ok()?;
    let earliest = i128::from(last_read.as_millisecond()) + interval_ms * 9 / 10;
    let slots = (earliest - phase_ms).div_euclid(interval_ms);
    let mut due = slots * interval_ms + phase_ms;
    if due < earliest {
        due += interval_ms;
    }
    Timestamp::from_millisecond(i64::try_from(due).ok()?).ok()
}

/// The last read to assume for a VaultSecret this process has not read yet: the latest time whose next slot
/// ([`next_due`]) is still to come, so a restart reads nothing whose slot passed while no operator ran (that one is
/// read at its next slot, at most an interval late) and nothing in a read storm.
pub fn assumed_last_read(now: Timestamp, interval: Duration) -> Timestamp {
    let nine_tenths_ms = i64::try_from(interval.as_millis() * 9 / 10).unwrap_or(i64::MAX);
    // One millisecond later than nine tenths of an interval ago: the earliest slot `next_due` allows is after now.
    now.as_millisecond()
        .checked_sub(nine_tenths_ms)
        .and_then(|ms| ms.checked_add(1))
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use vaultsync_api::Condition;

    use super::*;

    const NOW: &str = "2026-12-01T12:00:00Z";
    const HOUR: Interval = Interval::Every(Duration::from_secs(3600));

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
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

    /// A VaultSecret synced at generation 1, Ready, force-sync "a" acted on.
    fn synced() -> VaultSecretStatus {
        VaultSecretStatus {
            conditions: vec![ready("True")],
            observed_generation: Some(1),
            synced_at: Some("2026-12-01T11:00:00Z".into()),
            data_hmac: Some("hmac-sha256:k:abc".into()),
            force_sync: Some("a".into()),
            ..Default::default()
        }
    }

    /// Read at 11:06 with a slot offset of 10 minutes past the hour: the next slot at least 54 minutes later is
    /// 12:10.
    fn facts(status: &VaultSecretStatus) -> Facts<'_> {
        Facts {
            interval: HOUR,
            status,
            last_read: at("2026-12-01T11:06:00Z"),
            phase: Duration::from_secs(600),
            generation: Some(1),
            force_annotation: Some("a"),
            requested: false,
            now: at(NOW),
        }
    }

    fn read(reason: ReadReason, max_age: Option<u64>, routine: bool) -> Decision {
        Decision::Read(Read { reason, max_age: max_age.map(Duration::from_secs), routine })
    }

    #[test]
    fn the_decision_table() {
        let base = synced();
        let never = VaultSecretStatus::default();
        let failing = VaultSecretStatus { conditions: vec![ready("False")], ..synced() };
        let no_digest = VaultSecretStatus { data_hmac: None, ..synced() };
        let check_in_10m =
            Decision::Check { expected: "hmac-sha256:k:abc".into(), next: Some(Duration::from_secs(600)) };
        let slot_passed = at("2026-12-01T12:10:00Z");
        let read_long_ago = at("2026-12-01T10:00:00Z");
        let max_age = 3240; // 0.9 of the interval
        let cases: Vec<(&str, Facts<'_>, Decision)> = vec![
            ("synced, not due: check only", facts(&base), check_in_10m.clone()),
            ("never synced, created with a force value", facts(&never), read(ReadReason::Forced, Some(0), false)),
            (
                "never synced, no force value yet",
                Facts { force_annotation: None, ..facts(&never) },
                read(ReadReason::First, Some(max_age), false),
            ),
            (
                "spec changed",
                Facts { generation: Some(2), ..facts(&base) },
                read(ReadReason::SpecChanged, Some(max_age), false),
            ),
            (
                "new force-sync value",
                Facts { force_annotation: Some("b"), ..facts(&base) },
                read(ReadReason::Forced, Some(0), false),
            ),
            ("force-sync value already acted on", facts(&base), check_in_10m.clone()),
            ("force-sync annotation removed", Facts { force_annotation: None, ..facts(&base) }, check_in_10m.clone()),
            (
                "vault event",
                Facts { requested: true, ..facts(&base) },
                read(ReadReason::Requested, Some(max_age), false),
            ),
            ("last attempt failed", facts(&failing), read(ReadReason::Retry, Some(max_age), false)),
            ("its slot came", Facts { now: slot_passed, ..facts(&base) }, read(ReadReason::Due, Some(max_age), true)),
            (
                "read long ago",
                Facts { last_read: read_long_ago, ..facts(&base) },
                read(ReadReason::Due, Some(max_age), true),
            ),
            ("synced without a digest", facts(&no_digest), read(ReadReason::Due, Some(max_age), true)),
            (
                "read once: never due again",
                Facts { interval: Interval::Once, now: slot_passed, ..facts(&base) },
                Decision::Check { expected: "hmac-sha256:k:abc".into(), next: None },
            ),
            (
                "read once, first time",
                Facts { interval: Interval::Once, force_annotation: None, ..facts(&never) },
                read(ReadReason::First, Some(300), false),
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
        ];
        for (name, facts, expected) in cases {
            assert_eq!(decide(&facts), expected, "{name}");
        }
    }

    #[test]
    fn slots_are_an_interval_apart_and_at_least_nine_tenths_of_one_after_a_read() {
        let phase = Duration::from_secs(600);
        let hour = Duration::from_secs(3600);
        // Read at 11:50: 12:10 is only 20 minutes later, so 13:10.
        assert_eq!(next_due(at("2026-12-01T11:50:00Z"), hour, phase), Some(at("2026-12-01T13:10:00Z")));
        // Read at 11:16: 12:10 is 54 minutes later, nine tenths of the hour.
        assert_eq!(next_due(at("2026-12-01T11:16:00Z"), hour, phase), Some(at("2026-12-01T12:10:00Z")));
        // Read at 11:17: 12:10 would nearly reuse that read; 13:10.
        assert_eq!(next_due(at("2026-12-01T11:17:00Z"), hour, phase), Some(at("2026-12-01T13:10:00Z")));
        // Read exactly at a slot: the next slot.
        assert_eq!(
            next_due(at("2026-12-01T12:10:00Z"), Duration::from_secs(3600), phase),
            Some(at("2026-12-01T13:10:00Z"))
        );
        // The longest interval does not overflow.
        assert!(next_due(at(NOW), MAX_REFRESH, Duration::ZERO).is_some());
    }

    #[test]
    fn phases_are_stable_and_spread() {
        let interval = Duration::from_secs(100);
        assert_eq!(
            phase("0b7c0e1e-6d2a-4a71-9d0f-1c2b3a4d5e6f", interval),
            phase("0b7c0e1e-6d2a-4a71-9d0f-1c2b3a4d5e6f", interval)
        );
        let mut buckets = [0u32; 10];
        for i in 0..10_000 {
            let p = phase(&format!("uid-{i}"), interval);
            assert!(p < interval);
            buckets[(p.as_secs() / 10) as usize] += 1;
        }
        assert!(buckets.iter().all(|b| (800..1200).contains(b)), "ten buckets of about 1000: {buckets:?}");
    }

    #[test]
    fn a_stores_vault_secrets_come_due_within_a_tenth_of_the_interval() {
        let interval = Duration::from_secs(100);
        let round = phase("VaultStore/team-a/kv", interval);
        for i in 0..1000 {
            let slot = slot_phase("VaultStore/team-a/kv", &format!("obj-{i}"), interval);
            // Past the round's start by less than a tenth, wrapping at the interval's end.
            let after = if slot >= round { slot - round } else { slot + interval - round };
            assert!(after < interval / 10, "{slot:?} is {after:?} after the round at {round:?}");
        }
        assert_eq!(slot_phase("s", "same objects", interval), slot_phase("s", "same objects", interval));
        assert_ne!(phase("VaultStore/team-a/kv", interval), phase("VaultStore/team-b/kv", interval));
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
    fn after_a_restart_nothing_is_due_before_its_next_slot() {
        let now: Timestamp = NOW.parse().unwrap();
        for interval_s in [10_u64, 60, 150, 3600, 86_400] {
            let interval = Duration::from_secs(interval_s);
            for step in 0..100 {
                let phase = Duration::from_millis(interval_s * 1000 * step / 100);
                let due = next_due(assumed_last_read(now, interval), interval, phase).unwrap();
                assert!(due > now, "interval {interval_s}s, phase {phase:?}: due {due} is not after {now}");
                let within = now.checked_add(k8s_openapi::jiff::SignedDuration::try_from(interval).unwrap()).unwrap();
                assert!(due <= within, "interval {interval_s}s, phase {phase:?}: due {due} is later than an interval");
            }
        }
    }
}
