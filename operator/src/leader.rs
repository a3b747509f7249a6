//! Leader election on a `coordination.k8s.io/v1` Lease, because kube-runtime has none: only the replica
//! holding the Lease reconciles, so two replicas never write the same Secrets. Every write is a
//! `resourceVersion`-guarded create or replace, so when contenders race the apiserver lets exactly one win.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::{sync::watch, task::JoinHandle, time::Instant};

/// The label the leading replica's pod carries (see `--label-leader-pod`).
pub const LEADER_LABEL: &str = "vaultsync.dev/leader";

/// Sets or removes [`LEADER_LABEL`] on this replica's pod.
pub async fn label_pod(client: &Client, namespace: &str, pod: &str, leading: bool) -> Result<(), kube::Error> {
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    let value = if leading { serde_json::json!("true") } else { serde_json::Value::Null };
    let patch = serde_json::json!({ "metadata": { "labels": { LEADER_LABEL: value } } });
    api.patch(pod, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.map(drop)
}

/// Where the Lease lives, who we are, and the timings.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// This replica's name in `holderIdentity`; must differ between replicas (the pod name).
    pub identity: String,
    /// How long a Lease stays ours after a renewal; written (rounded up to whole seconds) into the Lease.
    pub lease_duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// How often a contender looks again, and how soon a holder retries a failed renewal.
    pub retry_every: Duration,
}

impl LeaderConfig {
    /// A configuration with the usual timings: a 15 s lease renewed every 5 s, retried every 2 s.
    pub fn new(namespace: impl Into<String>, lease_name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let problem = if self.namespace.is_empty() || self.lease_name.is_empty() {
            "the Lease namespace and name must not be empty"
        } else if self.identity.is_empty() {
            // An empty holderIdentity means "released", so it could never hold the Lease.
            "the identity must not be empty"
        } else if self.lease_duration < Duration::from_secs(1) || self.lease_duration_seconds().is_none() {
            "the lease duration must be between 1 second and i32::MAX seconds"
        } else if self.renew_every.is_zero() || self.renew_every >= self.lease_duration {
            "renewals must come more often than the lease expires"
        } else if self.retry_every.is_zero() {
            "the retry interval must not be zero"
        } else {
            return Ok(());
        };
        Err(Error::InvalidConfig(problem))
    }

    // Rounded up, so a contender never sees the Lease expire before the holder gives it up.
    fn lease_duration_seconds(&self) -> Option<i32> {
        let seconds = self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(seconds).ok()
    }
}

/// Why leader election could not go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid leader election settings: {0}")]
    InvalidConfig(&'static str),
    /// The apiserver refused in a way that retrying will not fix (e.g. RBAC forbids Leases, or the
    /// namespace does not exist). Transient failures are retried, not returned.
    #[error("leader election on Lease {namespace}/{name} failed")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Proof that this replica holds the Lease, returned by [`acquire`]. A background task keeps renewing it.
///
/// Dropping a `Leadership` stops the renewals but leaves the Lease held until it expires, as a crash
/// would; call [`Leadership::release`] on an orderly shutdown so a successor can take over at once.
#[derive(Debug)]
pub struct Leadership {
    api: Api<Lease>,
    config: LeaderConfig,
    lost: watch::Receiver<bool>,
    renewer: Option<JoinHandle<()>>,
}

/// Waits until this replica holds the Lease, creating it if it does not exist and taking it over once
/// its holder has let it expire (by `renewTime + leaseDurationSeconds`) or released it.
///
/// Expiry is judged by comparing the holder's `renewTime` with our own clock, so replicas' clocks are
/// assumed to agree to well within `lease_duration - renew_every`.
pub async fn acquire(client: Client, config: LeaderConfig) -> Result<Leadership, Error> {
    acquire_any(client, vec![config]).await.map(|(_, leadership)| leadership)
}

/// Like [`acquire`] for the first of several Leases that becomes free (the shards' Leases): each round tries them in
/// order, one attempt each, so a contender holding none takes over any of them within one `retry_every` of its
/// expiry. Returns the index of the Lease won. The Leases share a namespace; the first one's `retry_every` paces the
/// rounds.
pub async fn acquire_any(client: Client, configs: Vec<LeaderConfig>) -> Result<(usize, Leadership), Error> {
    let Some(first) = configs.first() else {
        return Err(Error::InvalidConfig("no Lease to contend for"));
    };
    let (retry_every, api): (_, Api<Lease>) = (first.retry_every, Api::namespaced(client, &first.namespace));
    for config in &configs {
        config.validate()?;
        if config.namespace != first.namespace {
            return Err(Error::InvalidConfig("the Leases must be in one namespace"));
        }
    }
    let mut last_seen_holders: Vec<Option<String>> = vec![None; configs.len()];
    loop {
        for (index, config) in configs.iter().enumerate() {
            let last_seen_holder = &mut last_seen_holders[index];
            match try_acquire(&api, config).await {
                Ok(Attempt::Acquired { lease, requested_at }) => {
                    let transitions = lease.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0);
                    tracing::info!(
                        lease = %config.lease_name, namespace = %config.namespace, identity = %config.identity,
                        transitions, "acquired leadership"
                    );
                    let leadership = Leadership::start(api.clone(), config.clone(), *lease, requested_at);
                    return Ok((index, leadership));
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if last_seen_holder.as_ref() != Some(&holder) {
                        tracing::info!(
                            lease = %config.lease_name, namespace = %config.namespace, %holder,
                            "waiting for leadership: the Lease is held by another replica"
                        );
                        *last_seen_holder = Some(holder);
                    }
                }
                Ok(Attempt::LostRace) => {
                    tracing::debug!(lease = %config.lease_name, "another contender wrote the Lease first");
                }
                Err(source) if is_permanent(&source) => {
                    return Err(Error::Api {
                        namespace: config.namespace.clone(),
                        name: config.lease_name.clone(),
                        source,
                    });
                }
                Err(error) => {
                    tracing::warn!(lease = %config.lease_name, %error, "could not read or write the Lease; retrying");
                }
            }
        }
        tokio::time::sleep(retry_every).await;
    }
}

enum Attempt {
    /// `requested_at` is taken before the write, so the holder's deadlines are never later than the
    /// `renewTime` contenders see.
    Acquired {
        lease: Box<Lease>,
        requested_at: Instant,
    },
    HeldBy(String),
    LostRace,
}

async fn try_acquire(api: &Api<Lease>, config: &LeaderConfig) -> Result<Attempt, kube::Error> {
    let current = api.get_opt(&config.lease_name).await?;
    let requested_at = Instant::now();
    let now = Timestamp::now();
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.lease_name.clone()),
                namespace: Some(config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: config.lease_duration_seconds(),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(lease) => Ok(Attempt::Acquired { lease: Box::new(lease), requested_at }),
            Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(Attempt::LostRace),
            Err(error) => Err(error),
        };
    };

    let spec = lease.spec.take().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    // Our own identity may already hold it when this replica restarted faster than the Lease expired.
    let already_ours = holder.as_deref() == Some(config.identity.as_str());
    if let Some(holder) = holder
        && !already_ours
        && !has_expired(&spec, now, config.lease_duration)
    {
        return Ok(Attempt::HeldBy(holder));
    }
    let transitions = spec.lease_transitions.unwrap_or(0);
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: config.lease_duration_seconds(),
        acquire_time: if already_ours { spec.acquire_time.clone() } else { Some(MicroTime(now)) },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if already_ours { transitions } else { transitions.saturating_add(1) }),
        ..spec
    });
    // `lease` still carries the resourceVersion we read: if anyone wrote the Lease since, this fails
    // with a conflict instead of overwriting their claim.
    match api.replace(&config.lease_name, &PostParams::default(), &lease).await {
        Ok(lease) => Ok(Attempt::Acquired { lease: Box::new(lease), requested_at }),
        Err(kube::Error::Api(status)) if status.is_conflict() => Ok(Attempt::LostRace),
        Err(error) => Err(error),
    }
}

/// Whether the holder recorded in `spec` has let the Lease run out at `now`. `fallback` is used when
/// the Lease carries no duration (written by some other tool).
fn has_expired(spec: &LeaseSpec, now: Timestamp, fallback: Duration) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = match spec.lease_duration_seconds {
        Some(seconds) => SignedDuration::from_secs(seconds.into()),
        None => SignedDuration::try_from(fallback).unwrap_or(SignedDuration::MAX),
    };
    match renewed.0.checked_add(duration) {
        Ok(expires) => expires <= now,
        // Beyond the representable range: not expiring in our lifetime.
        Err(_) => false,
    }
}

fn is_permanent(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if matches!(status.code, 400 | 401 | 403 | 404 | 405 | 422))
}

impl Leadership {
    fn start(api: Api<Lease>, config: LeaderConfig, lease: Lease, renewed_at: Instant) -> Self {
        let (lost_tx, lost) = watch::channel(false);
        let renewer = tokio::spawn(keep_renewing(api.clone(), config.clone(), lease, renewed_at, lost_tx));
        Self { api, config, lost, renewer: Some(renewer) }
    }

    /// Resolves once leadership is lost: the Lease could not be renewed for `lease_duration`, or it was
    /// found held by someone else (or deleted). From then on another replica may be leader, so stop
    /// writing. Resolves at once if already lost; cancel-safe, so it can sit in a `select!`.
    pub async fn lost(&mut self) {
        // An error means the renewal task is gone without reporting: it panicked, so nothing renews.
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Stops renewing and clears `holderIdentity`, so a successor need not wait for the Lease to expire.
    /// Does nothing to a Lease someone else holds by now. Gives up after `lease_duration`, when the
    /// Lease would have expired anyway.
    pub async fn release(mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
            // Wait for it to be gone so no renewal races with the release below.
            let _ = renewer.await;
        }
        let (api, config) = (&self.api, &self.config);
        match tokio::time::timeout(config.lease_duration, clear_holder(api, config)).await {
            Ok(Ok(true)) => tracing::info!(
                lease = %config.lease_name, namespace = %config.namespace, identity = %config.identity,
                "released leadership"
            ),
            Ok(Ok(false)) => tracing::info!(
                lease = %config.lease_name, identity = %config.identity,
                "stopped leading; the Lease was no longer ours to release"
            ),
            Ok(Err(error)) => tracing::warn!(
                lease = %config.lease_name, %error,
                "stopped leading but could not release the Lease; it will expire instead"
            ),
            Err(_) => tracing::warn!(
                lease = %config.lease_name,
                "stopped leading but releasing the Lease timed out; it will expire instead"
            ),
        }
    }
}

impl Drop for Leadership {
    /// Stops renewing without releasing, as a crash would: the Lease stays held until it expires.
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

/// Returns whether the Lease was ours and is now released.
async fn clear_holder(api: &Api<Lease>, config: &LeaderConfig) -> Result<bool, kube::Error> {
    loop {
        let Some(mut lease) = api.get_opt(&config.lease_name).await? else {
            return Ok(false);
        };
        let Some(spec) = lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(&config.identity)) else {
            return Ok(false);
        };
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match api.replace(&config.lease_name, &PostParams::default(), &lease).await {
            Ok(_) => return Ok(true),
            // Written since we read it (a late renewal, or a contender's takeover): look again.
            Err(kube::Error::Api(status)) if status.is_conflict() => continue,
            Err(error) => return Err(error),
        }
    }
}

/// The holder's background task: renews every `renew_every` (every `retry_every` after a failure) and
/// reports loss once a renewal finds the Lease taken, or no renewal succeeded for `lease_duration`.
async fn keep_renewing(
    api: Api<Lease>,
    config: LeaderConfig,
    mut lease: Lease,
    mut renewed_at: Instant,
    lost: watch::Sender<bool>,
) {
    let mut wait = config.renew_every;
    loop {
        tokio::time::sleep(wait).await;
        let deadline = renewed_at + config.lease_duration;
        let requested_at = Instant::now();
        // The deadline also bounds a request that hangs, not only ones that fail.
        match tokio::time::timeout_at(deadline, renew(&api, &config, &lease)).await {
            Ok(Ok(Renewal::Renewed(updated))) => {
                lease = *updated;
                renewed_at = requested_at;
                wait = config.renew_every;
            }
            Ok(Ok(Renewal::Taken(holder))) => {
                tracing::warn!(
                    lease = %config.lease_name, namespace = %config.namespace, identity = %config.identity,
                    holder = holder.as_deref().unwrap_or("<none>"),
                    "lost leadership: the Lease is no longer ours"
                );
                break;
            }
            Ok(Err(error)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                tracing::warn!(lease = %config.lease_name, %error, ?left, "could not renew the Lease; retrying");
                // Never sleep past the deadline: the next attempt then times out at once and reports loss.
                wait = config.retry_every.min(left);
            }
            Err(_) => {
                tracing::warn!(
                    lease = %config.lease_name, namespace = %config.namespace, identity = %config.identity,
                    lease_duration = ?config.lease_duration,
                    "lost leadership: could not renew the Lease in time"
                );
                break;
            }
        }
    }
    let _ = lost.send(true);
}

enum Renewal {
    Renewed(Box<Lease>),
    /// The Lease is held by this identity no longer (`None`: released or deleted).
    Taken(Option<String>),
}

async fn renew(api: &Api<Lease>, config: &LeaderConfig, last_written: &Lease) -> Result<Renewal, kube::Error> {
    let mut lease = last_written.clone();
    loop {
        if let Some(spec) = lease.spec.as_mut() {
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        match api.replace(&config.lease_name, &PostParams::default(), &lease).await {
            Ok(renewed) => return Ok(Renewal::Renewed(Box::new(renewed))),
            Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(Renewal::Taken(None)),
            // Someone wrote the Lease since our last renewal (or our previous renewal succeeded but its
            // answer was lost): it is still ours only if it still names us.
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                let Some(current) = api.get_opt(&config.lease_name).await? else {
                    return Ok(Renewal::Taken(None));
                };
                let holder = current.spec.as_ref().and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty());
                if holder.as_deref() != Some(config.identity.as_str()) {
                    return Ok(Renewal::Taken(holder));
                }
                lease = current;
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(renewed: Option<Timestamp>, seconds: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some("other".into()),
            renew_time: renewed.map(MicroTime),
            lease_duration_seconds: seconds,
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_expires_lease_duration_after_its_renewal() {
        let renewed: Timestamp = "2030-01-01T00:00:00Z".parse().expect("a timestamp");
        let at = |s: i64| renewed.checked_add(SignedDuration::from_secs(s)).expect("in range");
        let fallback = Duration::from_secs(60);
        assert!(!has_expired(&spec(Some(renewed), Some(15)), at(14), fallback));
        assert!(has_expired(&spec(Some(renewed), Some(15)), at(15), fallback));
        assert!(!has_expired(&spec(Some(renewed), None), at(59), fallback), "no duration: the fallback applies");
        assert!(has_expired(&spec(Some(renewed), None), at(60), fallback));
        assert!(has_expired(&spec(None, Some(15)), renewed, fallback), "never renewed: free to take");
    }

    #[test]
    fn settings_that_could_not_work_are_rejected() {
        let good = LeaderConfig::new("ns", "lease", "me");
        assert!(good.validate().is_ok());
        assert_eq!(good.lease_duration_seconds(), Some(15));
        let fractional = LeaderConfig { lease_duration: Duration::from_millis(2500), ..good.clone() };
        assert_eq!(fractional.lease_duration_seconds(), Some(3), "rounded up");
        for bad in [
            LeaderConfig { identity: String::new(), ..good.clone() },
            LeaderConfig { lease_name: String::new(), ..good.clone() },
            LeaderConfig { renew_every: Duration::from_secs(15), ..good.clone() },
            LeaderConfig {
                lease_duration: Duration::from_millis(500),
                renew_every: Duration::from_millis(100),
                ..good.clone()
            },
            LeaderConfig { retry_every: Duration::ZERO, ..good.clone() },
        ] {
            assert!(matches!(bad.validate(), Err(Error::InvalidConfig(_))), "accepted {bad:?}");
        }
    }
}
