//! The audit trail: one record per vault read — each object read through the [`ReadCache`](crate::cache::ReadCache)
//! (from the vault, or served from the cache) and each list — with when, which store, which identity (the principal,
//! never a token or secret: those appear in [`Principal`](crate::Principal) only as fingerprints and are not
//! printed), for whom (a VaultSecret or a pod, set by the caller with [`scope`]), which object and version, and the
//! outcome. Never a value. Records are `tracing` events on the target [`TARGET`] and, when [`write_to`] was called,
//! JSON lines in a file. The fields are documented in docs/audit.md.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::json;

use crate::{FetchedSecret, Identity, ObjectRef, Result};

/// The tracing target of audit records.
pub const TARGET: &str = "vaultsync::audit";

/// Who a read is for, and (once resolved) through which store.
#[derive(Debug, Default)]
struct Context {
    requester: String,
    store: Mutex<Option<String>>,
}

tokio::task_local! {
    static CONTEXT: Arc<Context>;
}

/// Runs `work` with reads recorded as made for `requester` (`VaultSecret <namespace>/<name>`, `Pod
/// <namespace>/<name>`).
pub async fn scope<F: Future>(requester: String, work: F) -> F::Output {
    CONTEXT.scope(Arc::new(Context { requester, store: Mutex::default() }), work).await
}

/// Records the store the current [`scope`]'s reads go through (`VaultStore/<namespace>/<name>`,
/// `ClusterVaultStore/<name>`).
pub fn set_store(store: &str) {
    let _ =
        CONTEXT.try_with(|c| *c.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(store.into()));
}

static FILE: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

/// Also appends every record to `path` as a JSON line (once per process).
pub fn write_to(path: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let _ = FILE.set(Mutex::new(file));
    Ok(())
}

/// How a read was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A call to the vault.
    Vault,
    /// A fresh earlier read from the cache.
    Cache,
    /// A read another caller had in flight.
    Coalesced,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Vault => "vault",
            Source::Cache => "cache",
            Source::Coalesced => "coalesced",
        }
    }
}

/// One object read.
pub fn read(identity: &Identity, object: &ObjectRef, result: &Result<FetchedSecret>, source: Source) {
    let (outcome, version) = match result {
        Ok(fetched) => ("ok", Some(fetched.version.as_str())),
        Err(e) => (e.reason(), object.version.as_deref()),
    };
    emit(identity, "get", &object.to_string(), version, outcome, source);
}

/// One list (always a vault call): `prefix` names what was listed.
pub fn list<T>(identity: &Identity, prefix: &str, result: &Result<T>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    };
    emit(identity, "list", prefix, None, outcome, Source::Vault);
}

/// A store's check (one cheap call, such as listing one name) for its `Ready` condition.
pub fn check<T>(identity: &Identity, store: &str, result: &Result<T>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    };
    CONTEXT.sync_scope(
        Arc::new(Context { requester: "store check".into(), store: Mutex::new(Some(store.into())) }),
        || emit(identity, "check", "", None, outcome, Source::Vault),
    );
}

fn emit(identity: &Identity, operation: &str, object: &str, version: Option<&str>, outcome: &str, source: Source) {
    let (requester, store) = CONTEXT
        .try_with(|c| (c.requester.clone(), c.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()))
        .unwrap_or_default();
    let record = json!({
        "time": rfc3339(SystemTime::now()),
        "store": store,
        "endpoint": endpoint(identity),
        "identity": identity.principal.to_string(),
        "requester": (!requester.is_empty()).then_some(requester),
        "operation": operation,
        "object": object,
        "version": version,
        "outcome": outcome,
        "source": source.as_str(),
    });
    tracing::info!(
        target: TARGET,
        time = %record["time"].as_str().unwrap_or_default(),
        store = record["store"].as_str(),
        endpoint = %record["endpoint"].as_str().unwrap_or_default(),
        identity = %record["identity"].as_str().unwrap_or_default(),
        requester = record["requester"].as_str(),
        operation,
        object,
        version,
        outcome,
        source = source.as_str(),
        "vault read"
    );
    if let Some(file) = FILE.get() {
        let mut file = file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(file, "{record}");
    }
}

fn endpoint(identity: &Identity) -> String {
    match &identity.endpoint {
        crate::Endpoint::AzureKeyVault { vault_url } => vault_url.clone(),
        crate::Endpoint::OpenBao { server, namespace, mount, .. } => match namespace {
            Some(ns) => format!("{server} namespace {ns} mount {mount}"),
            None => format!("{server} mount {mount}"),
        },
    }
}

/// `2026-01-02T03:04:05.678Z`.
fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (days, seconds) = ((since.as_secs() / 86_400) as i64, since.as_secs() % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let at = UNIX_EPOCH + std::time::Duration::from_millis(1_709_251_199_123); // a leap year's Feb 29th
        assert_eq!(rfc3339(at), "2024-02-29T23:59:59.123Z");
    }
}
