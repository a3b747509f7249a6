//! Vault events between shards. Event Grid delivers to one pod behind the endpoint's Service, which selects every
//! shard's holder; that holder refreshes its own VaultSecrets and passes the delivery on to the holders of the other
//! shards, so a VaultSecret refreshes at once whichever shard owns it. Each holder advertises where it takes
//! deliveries on its shard's Lease (an annotation, from `--pod-ip` and the endpoint's port); a delivery passed on
//! carries a header that stops it from going further. If any shard cannot take it (no holder, or not answering),
//! the endpoint answers 503 and Event Grid delivers again later, by when a standby has taken the shard over.

use std::{net::SocketAddr, time::Duration};

use axum::{
    body::Bytes,
    http::{HeaderMap, header},
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client, api::PostParams};

/// On a shard's Lease: the URL at which its holder takes Event Grid deliveries from the other shards.
pub const URL_ANNOTATION: &str = "vaultsync.dev/event-grid-url";
/// On a delivery passed on: the replica that passed it (it is not passed on again).
pub const FORWARDED_BY: &str = "x-vaultsync-forwarded-by";
/// How long a shard may take to answer a delivery passed on (Event Grid waits 30 s for the whole answer).
const TIMEOUT: Duration = Duration::from_secs(5);

/// The other shards' Leases, through which their holders are found.
pub struct Peers {
    leases: Api<Lease>,
    /// The Leases of the shards this replica does not hold.
    others: Vec<String>,
    identity: String,
    http: reqwest::Client,
}

impl Peers {
    pub fn new(client: Client, namespace: &str, others: Vec<String>, identity: String) -> anyhow::Result<Self> {
        let http = vaultsync_backend::http::http_client(None)?;
        Ok(Self { leases: Api::namespaced(client, namespace), others, identity, http })
    }

    /// Passes a delivery (its headers, the query that may carry the key, its body) on to every other shard's holder,
    /// all at once; an error names a shard that did not take it.
    pub async fn forward(&self, headers: &HeaderMap, query: Option<&str>, body: Bytes) -> Result<(), String> {
        let sends = self.others.iter().map(|lease| self.forward_to(lease, headers, query, body.clone()));
        futures::future::join_all(sends).await.into_iter().collect::<Result<Vec<()>, String>>().map(drop)
    }

    async fn forward_to(
        &self,
        lease: &str,
        headers: &HeaderMap,
        query: Option<&str>,
        body: Bytes,
    ) -> Result<(), String> {
        let found = self.leases.get_opt(lease).await.map_err(|e| format!("reading the Lease {lease}: {e}"))?;
        let lease_object = found.ok_or_else(|| format!("the Lease {lease} does not exist yet"))?;
        let holder = lease_object.spec.as_ref().and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty());
        let holder = holder.ok_or_else(|| format!("the shard of Lease {lease} has no holder now"))?;
        let url = lease_object
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(URL_ANNOTATION))
            .ok_or_else(|| format!("{holder}, the holder of {lease}, advertises no Event Grid address"))?;
        let url = match query {
            Some(query) => format!("{url}?{query}"),
            None => url.clone(),
        };
        let mut passed_on = headers.clone();
        for hop in [header::HOST, header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION] {
            passed_on.remove(hop);
        }
        let request = self.http.post(&url).headers(passed_on).header(FORWARDED_BY, &self.identity).timeout(TIMEOUT);
        let answer = request.body(body).send().await.map_err(|e| format!("{holder} ({lease}): {e}"))?;
        if answer.status().is_success() {
            Ok(())
        } else {
            Err(format!("{holder} ({lease}) answered {}", answer.status()))
        }
    }
}

/// The URL at which this replica takes deliveries from the other shards.
pub fn url(pod_ip: std::net::IpAddr, event_grid: SocketAddr) -> String {
    format!("http://{}{}", SocketAddr::new(pod_ip, event_grid.port()), crate::eventgrid::PATH)
}

/// Writes `url` on the Lease this replica holds (renewals keep annotations: they write the Lease they read back).
pub async fn advertise(client: Client, namespace: &str, lease: &str, identity: &str, url: &str) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    // A renewal may write the Lease between our read and our write: read again.
    for _ in 0..5 {
        let mut current = api.get(lease).await?;
        let holder = current.spec.as_ref().and_then(|s| s.holder_identity.as_deref());
        anyhow::ensure!(holder == Some(identity), "the Lease {lease} is no longer ours");
        current.metadata.annotations.get_or_insert_default().insert(URL_ANNOTATION.into(), url.into());
        match api.replace(lease, &PostParams::default(), &current).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_conflict() => continue,
            Err(error) => return Err(error.into()),
        }
    }
    anyhow::bail!("the Lease {lease} kept changing while its Event Grid address was written")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_urls_for_both_families() {
        let endpoint: SocketAddr = "0.0.0.0:8081".parse().expect("an address");
        assert_eq!(url("10.1.2.3".parse().expect("v4"), endpoint), "http://10.1.2.3:8081/eventgrid");
        assert_eq!(url("fd00::5".parse().expect("v6"), endpoint), "http://[fd00::5]:8081/eventgrid");
    }
}
