//! Command-line flags (each also an environment variable).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

#[derive(clap::Parser, Clone, Debug)]
#[command(name = "vaultsync-operator", about = "Keeps Kubernetes Secrets in sync with vault objects", version)]
pub struct Args {
    /// The namespace the operator runs in (its Lease and HMAC key Secret live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "vaultsync-system")]
    pub namespace: String,

    /// Watch VaultSecrets in this namespace only (all namespaces when empty).
    #[arg(long, env = "VAULTSYNC_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// This replica's identity for leader election.
    #[arg(long, env = "POD_NAME", default_value = "vaultsync-operator")]
    pub pod_name: String,

    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, env = "VAULTSYNC_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Run only while holding the Lease, so two replicas never both write.
    #[arg(long, env = "VAULTSYNC_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Label this replica's pod (`--pod-name` in `--namespace`) `vaultsync.dev/leader: "true"` while it leads, and
    /// remove the label while it stands by, so a Service can select the leader (the Event Grid endpoint's does).
    #[arg(long, env = "VAULTSYNC_LABEL_LEADER_POD", default_value_t = false, action = clap::ArgAction::Set)]
    pub label_leader_pod: bool,

    /// The Lease name for leader election.
    #[arg(long, env = "VAULTSYNC_LEASE_NAME", default_value = "vaultsync-operator")]
    pub lease_name: String,

    /// Split the VaultSecrets between this many shards by a hash of their namespace (1 to 64). Each replica holds
    /// one shard's Lease (`<lease-name>-shard-<i>`) and acts only on its namespaces; replicas beyond the shard count
    /// stand by and take over a shard whose holder dies. 1, the default, is the unsharded operator with one Lease.
    #[arg(long, env = "VAULTSYNC_SHARDS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::shard::MAX_SHARDS)))]
    pub shards: u32,

    /// How long a leader's Lease lasts without renewal (renewed every third of it).
    #[arg(long, env = "VAULTSYNC_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// At most this many VaultSecrets are reconciled at once (bounds memory and apiserver connections).
    #[arg(long, env = "VAULTSYNC_CONCURRENCY", default_value_t = 32)]
    pub concurrency: u16,

    /// The longest one VaultSecret's reconcile may take (vault calls, budget waits and apiserver writes together)
    /// before it is abandoned, reported as `Timeout` and retried, so stuck calls cannot hold the controller's slots.
    #[arg(long, env = "VAULTSYNC_RECONCILE_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub reconcile_timeout: Duration,

    /// A Warning Event (`CertificateExpiring`) is published when a synced certificate expires within this time.
    #[arg(long, env = "VAULTSYNC_CERTIFICATE_EXPIRY_WARNING", default_value = "720h", value_parser = parse_duration)]
    pub certificate_expiry_warning: Duration,

    /// The request budget of a store that sets none: calls per second.
    #[arg(long, env = "VAULTSYNC_DEFAULT_RPS", default_value_t = 50)]
    pub default_requests_per_second: u32,

    /// The request budget of a store that sets none: burst.
    #[arg(long, env = "VAULTSYNC_DEFAULT_BURST", default_value_t = 100)]
    pub default_burst: u32,

    /// The audiences the operator requests service-account tokens for (a store's workload identity or OpenBao
    /// Kubernetes auth audience must be one of them), comma-separated. A token for another audience, such as the
    /// apiserver's, could be used against that audience by whoever runs the vault a store names.
    #[arg(
        long,
        env = "VAULTSYNC_ALLOWED_TOKEN_AUDIENCES",
        value_delimiter = ',',
        default_value = "api://AzureADTokenExchange,vault"
    )]
    pub allowed_token_audiences: Vec<String>,

    /// Let namespaced VaultStores use `managedIdentity`, i.e. the operator's own Azure identity, which every
    /// namespace would then share. ClusterVaultStores (made by cluster administrators) may always use it.
    #[arg(long, env = "VAULTSYNC_OPERATOR_IDENTITY_IN_VAULT_STORES", default_value_t = false, action = clap::ArgAction::Set)]
    pub operator_identity_in_vault_stores: bool,

    /// The operator's own Azure workload identity, as the AKS workload identity webhook injects it: the app's client
    /// ID. With --azure-tenant-id and --azure-federated-token-file, `managedIdentity` stores read with it.
    #[arg(long, env = "AZURE_CLIENT_ID")]
    pub azure_client_id: Option<String>,

    /// The tenant of the operator's own workload identity.
    #[arg(long, env = "AZURE_TENANT_ID")]
    pub azure_tenant_id: Option<String>,

    /// The projected service-account token file of the operator's own workload identity (read anew for each
    /// exchange: the kubelet rotates it).
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE")]
    pub azure_federated_token_file: Option<PathBuf>,

    /// The Entra authority host of the operator's own workload identity.
    #[arg(long, env = "AZURE_AUTHORITY_HOST", default_value = "https://login.microsoftonline.com")]
    pub azure_authority_host: String,

    /// The managed identity token endpoint (instance metadata service).
    #[arg(
        long,
        env = "VAULTSYNC_IMDS_ENDPOINT",
        default_value = "http://169.254.169.254/metadata/identity/oauth2/token"
    )]
    pub imds_endpoint: String,

    /// The Secret (in --namespace) holding the key of the data HMACs; created if missing.
    #[arg(long, env = "VAULTSYNC_HMAC_SECRET", default_value = "vaultsync-hmac-key")]
    pub hmac_secret: String,

    /// Serve the Azure Event Grid endpoint (`POST` and `OPTIONS /eventgrid`) here, for instant refreshes when a
    /// vault object gets a new version. Off when unset; polling on each VaultSecret's refreshInterval stays on.
    #[arg(long, env = "VAULTSYNC_EVENT_GRID_ADDR")]
    pub event_grid_addr: Option<SocketAddr>,

    /// A file holding the shared key every Event Grid delivery must carry (at least 16 characters; surrounding
    /// whitespace is ignored). Required with --event-grid-addr.
    #[arg(long, env = "VAULTSYNC_EVENT_GRID_KEY_FILE")]
    pub event_grid_key_file: Option<PathBuf>,

    /// The request header that carries the Event Grid key (the `key` query parameter is accepted too).
    #[arg(long, env = "VAULTSYNC_EVENT_GRID_KEY_HEADER", default_value = "x-vaultsync-key")]
    pub event_grid_key_header: String,

    /// This replica's pod IP (the downward API's `status.podIP`). When sharding with the Event Grid endpoint on, the
    /// holder of a shard advertises this address (with the endpoint's port) on its shard's Lease, and a delivery
    /// that reaches another shard is passed on to it; without it, such deliveries refresh only the receiving shard's
    /// VaultSecrets, and the others' wait for their refresh interval.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,

    /// Log as JSON lines.
    #[arg(long, env = "VAULTSYNC_LOG_JSON", default_value_t = false, action = clap::ArgAction::Set)]
    pub log_json: bool,

    /// Also append the audit trail (one JSON line per vault read, docs/audit.md) to this file; the records are
    /// logged on the target `vaultsync::audit` either way.
    #[arg(long, env = "VAULTSYNC_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
}

impl Args {
    /// How stores are resolved, from these flags and the operator's environment.
    pub fn store_settings(&self) -> vaultsync_stores::Settings {
        vaultsync_stores::Settings {
            imds_endpoint: self.imds_endpoint.clone(),
            default_budget: (self.default_requests_per_second, self.default_burst),
            allowed_audiences: self.allowed_token_audiences.clone(),
            operator_identity_in_vault_stores: self.operator_identity_in_vault_stores,
            azure_environment: match (&self.azure_client_id, &self.azure_tenant_id, &self.azure_federated_token_file) {
                (Some(client_id), Some(tenant_id), Some(token_file)) => Some(vaultsync_stores::AzureEnvironment {
                    client_id: client_id.clone(),
                    tenant_id: tenant_id.clone(),
                    token_file: token_file.clone(),
                    authority_host: self.azure_authority_host.trim_end_matches('/').to_string(),
                }),
                _ => None,
            },
        }
    }
}

/// Parses Go-style durations as used in the CRDs: `90s`, `15m`, `1h30m`, `500ms`, `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration {text:?}"));
        }
        let value: u64 = rest[..digits].parse().map_err(|_| format!("invalid duration {text:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => Duration::from_nanos(1),
            "us" => Duration::from_micros(1),
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => return Err(format!("invalid unit {other:?} in duration {text:?}")),
        };
        total = total.saturating_add(unit.saturating_mul(u32::try_from(value).unwrap_or(u32::MAX)));
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    // Property tests (cases: PROPTEST_CASES, raised by `make fuzz`): durations come from tenants' specs.
    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::vaultsecret::plan::{Interval, MAX_REFRESH, MIN_REFRESH, refresh_interval};

        fn unit() -> impl Strategy<Value = (&'static str, u128)> {
            prop_oneof![
                Just(("ns", 1)),
                Just(("us", 1_000)),
                Just(("ms", 1_000_000)),
                Just(("s", 1_000_000_000)),
                Just(("m", 60_000_000_000)),
                Just(("h", 3_600_000_000_000)),
            ]
        }

        proptest! {
            #[test]
            fn any_text_is_answered(text in ".{0,64}") {
                let _ = parse_duration(&text);
                if let Ok(Interval::Every(every)) = refresh_interval(&text) {
                    prop_assert!((MIN_REFRESH..=MAX_REFRESH).contains(&every));
                }
            }

            #[test]
            fn huge_numbers_are_refused_not_wrapped(digits in "[0-9]{15,40}", (suffix, _) in unit()) {
                let text = format!("{digits}{suffix}");
                if let Ok(duration) = parse_duration(&text) {
                    let nanos = digits.parse::<u128>().unwrap_or(u128::MAX);
                    prop_assert!(duration.as_nanos() <= nanos.saturating_mul(3_600_000_000_000));
                }
            }

            #[test]
            fn well_formed_durations_add_up(parts in proptest::collection::vec((0u64..100_000, unit()), 1..5)) {
                let text: String = parts.iter().map(|(n, (suffix, _))| format!("{n}{suffix}")).collect();
                let nanos: u128 = parts.iter().map(|(n, (_, scale))| u128::from(*n) * scale).sum();
                prop_assert_eq!(parse_duration(&text).map(|d| d.as_nanos()), Ok(nanos));
            }
        }
    }

    #[test]
    fn durations_parse_like_the_crd_pattern_allows() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("1 hour").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("").is_err());
    }
}
