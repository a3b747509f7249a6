//! Command-line flags (each also an environment variable).

use std::{path::PathBuf, time::Duration};

use clap::Parser;

use crate::mount::Medium;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "vaultsync-csi",
    version,
    about = "Mounts vault objects as files in pods, with each pod's own identity"
)]
pub struct Args {
    /// Serve the Secrets Store CSI Driver provider (mode 1) in this folder, as `<dir>/<provider-name>.sock`.
    #[arg(long, env = "VAULTSYNC_PROVIDER_DIR")]
    pub provider_dir: Option<PathBuf>,

    /// The provider's name (the SecretProviderClass `provider`), also the socket's name.
    #[arg(long, env = "VAULTSYNC_PROVIDER_NAME", default_value = "vaultsync", value_parser = provider_name)]
    pub provider_name: String,

    /// Serve the CSI node plugin (mode 2) at this endpoint (`unix:///csi/csi.sock`).
    #[arg(long, env = "CSI_ENDPOINT")]
    pub csi_endpoint: Option<String>,

    /// The CSI driver's name (the CSIDriver object's name).
    #[arg(long, env = "VAULTSYNC_DRIVER_NAME", default_value = "secrets.vaultsync.dev", value_parser = driver_name)]
    pub driver_name: String,

    /// This node's name, reported by NodeGetInfo.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_id: String,

    /// Register with kubelet without the node-driver-registrar sidecar: serve the registration
    /// socket in this folder (kubelet's `plugins_registry`).
    #[arg(long, env = "VAULTSYNC_KUBELET_REGISTRATION_DIR")]
    pub kubelet_registration_dir: Option<PathBuf>,

    /// The CSI socket's path as kubelet sees it (default: the --csi-endpoint path).
    #[arg(long, env = "VAULTSYNC_KUBELET_PLUGIN_PATH")]
    pub kubelet_plugin_path: Option<PathBuf>,

    /// Where volume files live: a tmpfs per volume, a tmpfs or (where mounting is not allowed)
    /// a plain folder, or always a plain folder.
    #[arg(long, env = "VAULTSYNC_MEDIUM", value_enum, default_value = "tmpfs")]
    pub medium: Medium,

    /// A republish reads the vault again once this long has passed (`90s`, `2m`).
    #[arg(long, env = "VAULTSYNC_REFRESH_INTERVAL", default_value = "2m", value_parser = duration)]
    pub refresh_interval: Duration,

    /// How long a read is shared by the pods of one identity.
    #[arg(long, env = "VAULTSYNC_CACHE_WINDOW", default_value = "30s", value_parser = duration)]
    pub cache_window: Duration,

    /// PEM CA bundle trusted for vaults and token endpoints; the system roots when unset.
    #[arg(long, env = "VAULTSYNC_CA_BUNDLE_FILE")]
    pub ca_bundle_file: Option<PathBuf>,

    /// Entra authority host for every Azure cloud (private or sovereign authorities).
    #[arg(long, env = "VAULTSYNC_AZURE_AUTHORITY_HOST")]
    pub azure_authority_host: Option<String>,

    /// `NAME=URL`: the Key Vault NAME is served at URL (private endpoints). Repeatable; the
    /// environment variable takes a comma-separated list.
    #[arg(long, env = "VAULTSYNC_AZURE_VAULT_ENDPOINTS", value_delimiter = ',')]
    pub azure_vault_endpoint: Vec<String>,

    /// The OpenBao / Vault address used when a SecretProviderClass names no `vaultAddress`.
    #[arg(long, env = "VAULTSYNC_OPENBAO_ADDRESS")]
    pub openbao_address: Option<String>,

    /// Addresses a SecretProviderClass may name as `vaultAddress` (`*` globs); any when unset.
    #[arg(long, env = "VAULTSYNC_OPENBAO_ALLOWED_ADDRESSES", value_delimiter = ',')]
    pub openbao_allowed_address: Vec<String>,

    /// Lets a SecretProviderClass name a plain `http://` OpenBao / Vault address: pod tokens,
    /// vault tokens and values then cross the network unencrypted.
    #[arg(long, env = "VAULTSYNC_OPENBAO_INSECURE_HTTP", default_value_t = false)]
    pub openbao_insecure_http: bool,

    /// The audience of the pod token OpenBao's Kubernetes auth gets when none is named.
    #[arg(long, env = "VAULTSYNC_OPENBAO_AUDIENCE", default_value = "vault")]
    pub openbao_audience: String,

    /// Vault calls per second per vault endpoint.
    #[arg(long, env = "VAULTSYNC_REQUESTS_PER_SECOND", default_value_t = 20)]
    pub requests_per_second: u32,

    /// Vault calls allowed at once above the rate.
    #[arg(long, env = "VAULTSYNC_BURST", default_value_t = 40)]
    pub burst: u32,

    /// Serve Prometheus metrics on `http://<address>/metrics` (`127.0.0.1:9809`); off when unset. The plugin runs on
    /// every node: keep it on loopback or a node-local address.
    #[arg(long, env = "VAULTSYNC_METRICS_ADDRESS")]
    pub metrics_address: Option<std::net::SocketAddr>,

    /// Log as JSON lines.
    #[arg(long, env = "VAULTSYNC_LOG_JSON", default_value_t = false)]
    pub log_json: bool,

    /// Also append the audit trail (one JSON line per vault read, docs/audit.md) to this file; the records are
    /// logged on the target `vaultsync::audit` either way.
    #[arg(long, env = "VAULTSYNC_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
}

fn provider_name(name: &str) -> Result<String, String> {
    let ok = name.len() <= 30 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok && !name.is_empty() { Ok(name.to_string()) } else { Err("1-30 letters, digits, '-' or '_'".into()) }
}

fn driver_name(name: &str) -> Result<String, String> {
    let bytes = name.as_bytes();
    let ok = (2..=63).contains(&bytes.len())
        && bytes[0].is_ascii_alphabetic()
        && bytes[bytes.len() - 1].is_ascii_alphabetic()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(b));
    if ok {
        Ok(name.to_string())
    } else {
        Err("2-63 characters: letters, digits, '-', '.', '_', starting and ending with a letter".into())
    }
}

/// A duration such as `90s`, `2m`, `1h30m`, `500ms`, or `0`.
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit_len = rest[digits..].bytes().take_while(u8::is_ascii_alphabetic).count();
        let (number, unit) = (&rest[..digits], &rest[digits..digits + unit_len]);
        let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 90s or 2m"))?;
        let too_long = || format!("{text:?} is longer than a year");
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_long)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_long)?),
            _ => return Err(format!("{text:?} is not a duration such as 90s or 2m")),
        };
        total = total.checked_add(part).filter(|t| t.as_secs() <= 366 * 24 * 3600).ok_or_else(too_long)?;
        rest = &rest[digits + unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_consistent() {
        use clap::CommandFactory as _;
        Args::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("0").unwrap(), Duration::ZERO);
        assert!(duration("soon").is_err());
        assert!(duration("5d").is_err());
        assert!(duration("99999999999999999999h").is_err());
        assert!(duration("9999999999999999h").is_err());
        assert!(duration("9000h").is_err());
    }

    #[test]
    fn names() {
        assert!(driver_name("secrets.vaultsync.dev").is_ok());
        assert!(driver_name("ends.with.digit1").is_err());
        assert!(driver_name("csi.vaultsync.dev").is_ok());
        assert!(driver_name("9bad").is_err());
        assert!(provider_name("vaultsync").is_ok());
        assert!(provider_name("no/slash").is_err());
    }
}
