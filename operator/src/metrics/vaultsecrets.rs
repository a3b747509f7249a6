//! Gauges computed at scrape time from the watched VaultSecrets (on the leader, which watches them): how many are
//! Ready, how many have been not Ready for longer than their refresh interval, and the soonest expiry of the
//! certificates they synced. Aggregates only, so the label set stays fixed however many VaultSecrets there are;
//! `kubectl vaultsync status -A` names them.

use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::Store;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, gauge::ConstGauge},
};
use vaultsync_api::{VaultSecret, condition::READY};

/// A VaultSecret not Ready for less than this is not counted as stuck, however short its interval.
const MIN_NOT_READY_SECONDS: i64 = 300;

#[derive(Default, Debug)]
pub(super) struct VaultSecretStates {
    store: Mutex<Option<Store<VaultSecret>>>,
}

impl VaultSecretStates {
    pub(super) fn watch(&self, store: Store<VaultSecret>) {
        *self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(store);
    }
}

/// What the gauges report.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Summary {
    pub ready: i64,
    pub not_ready: i64,
    pub unknown: i64,
    /// Not Ready for longer than their refresh interval (at least [`MIN_NOT_READY_SECONDS`]).
    pub stuck: i64,
    /// The soonest `notAfter` of the synced certificates (Unix seconds).
    pub earliest_certificate_expiry: Option<i64>,
}

pub(super) fn summarize(vault_secrets: &[Arc<VaultSecret>], now: Timestamp) -> Summary {
    let mut summary = Summary::default();
    for vs in vault_secrets {
        let status = vs.status.clone().unwrap_or_default();
        match status.conditions.iter().find(|c| c.type_ == READY) {
            Some(c) if c.status == "True" => summary.ready += 1,
            Some(c) if c.status == "False" => {
                summary.not_ready += 1;
                let interval = interval_seconds(&vs.spec.refresh_interval);
                let since = c.last_transition_time.parse::<Timestamp>().ok();
                if since.is_some_and(|t| now.as_second() - t.as_second() > interval.max(MIN_NOT_READY_SECONDS)) {
                    summary.stuck += 1;
                }
            }
            _ => summary.unknown += 1,
        }
        for certificate in &status.certificates {
            if let Ok(at) = certificate.not_after.parse::<Timestamp>() {
                let at = at.as_second();
                summary.earliest_certificate_expiry =
                    Some(summary.earliest_certificate_expiry.map_or(at, |e| e.min(at)));
            }
        }
    }
    summary
}

/// A refresh interval in seconds (0 for read-once or unreadable).
fn interval_seconds(text: &str) -> i64 {
    crate::args::parse_duration(text).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Collector for VaultSecretStates {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(store) = self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() else {
            return Ok(());
        };
        let summary = summarize(&store.state(), Timestamp::now());
        let mut family = encoder.encode_descriptor(
            "vaultsecrets",
            "VaultSecrets by their Ready condition (true, false, unknown before the first status)",
            None,
            MetricType::Gauge,
        )?;
        for (ready, count) in [("true", summary.ready), ("false", summary.not_ready), ("unknown", summary.unknown)] {
            ConstGauge::new(count).encode(family.encode_family(&[("ready", ready)])?)?;
        }
        let stuck = encoder.encode_descriptor(
            "vaultsecrets_not_ready_beyond_interval",
            "VaultSecrets not Ready for longer than their refresh interval (and at least five minutes)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(summary.stuck).encode(stuck)?;
        if let Some(at) = summary.earliest_certificate_expiry {
            let expiry = encoder.encode_descriptor(
                "certificates_earliest_expiry_timestamp_seconds",
                "The soonest notAfter (Unix seconds) of the certificates the VaultSecrets synced",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(at).encode(expiry)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault_secret(interval: &str, ready: Option<(&str, &str)>, not_after: &[&str]) -> Arc<VaultSecret> {
        let mut vs: VaultSecret = serde_json::from_value(serde_json::json!({
            "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret", "metadata": { "name": "a" },
            "spec": { "storeRef": { "name": "kv" }, "refreshInterval": interval,
                "data": [{ "secretKey": "k", "remoteRef": { "name": "o" } }] },
        }))
        .expect("a VaultSecret");
        let mut status = vaultsync_api::VaultSecretStatus::default();
        if let Some((state, since)) = ready {
            status.conditions.push(vaultsync_api::Condition {
                type_: READY.into(),
                status: state.into(),
                reason: "Test".into(),
                message: String::new(),
                last_transition_time: since.into(),
                observed_generation: None,
            });
        }
        status.certificates = not_after
            .iter()
            .map(|t| vaultsync_api::secret::CertificateStatus { secret_key: "tls.crt".into(), not_after: (*t).into() })
            .collect();
        vs.status = Some(status);
        Arc::new(vs)
    }

    #[test]
    fn counts_ready_stuck_and_the_soonest_certificate() {
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        let all = [
            vault_secret("1h", Some(("True", "2026-01-01T00:00:00Z")), &["2026-03-01T00:00:00Z"]),
            // Not Ready for two hours with an hourly interval: stuck.
            vault_secret("1h", Some(("False", "2026-01-01T10:00:00Z")), &[]),
            // Not Ready for two minutes: not yet (at least five minutes, even with a 10s interval).
            vault_secret("10s", Some(("False", "2026-01-01T11:58:00Z")), &["2026-02-01T00:00:00Z"]),
            vault_secret("1h", None, &[]),
        ];
        let summary = summarize(&all, now);
        let soonest: Timestamp = "2026-02-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            summary,
            Summary {
                ready: 1,
                not_ready: 2,
                unknown: 1,
                stuck: 1,
                earliest_certificate_expiry: Some(soonest.as_second())
            }
        );
    }
}
