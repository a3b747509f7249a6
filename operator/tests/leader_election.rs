//! Leader election against a real apiserver: contenders wait while the Lease is held, take over after a
//! release or an expiry, only one of several simultaneous contenders wins, and a holder learns when its
//! Lease is taken or cannot be renewed.

use std::{net::SocketAddr, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, api::PostParams};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
    time::{Instant, timeout},
};
use vaultsync_e2e::{ControlPlane, TestNamespace, chart::operator_client};
use vaultsync_operator::leader::{LeaderConfig, Leadership, acquire};

const LEASE: &str = "vaultsync-operator";
const LEASE_DURATION: Duration = Duration::from_secs(2);

fn config(namespace: &str, identity: &str) -> LeaderConfig {
    LeaderConfig {
        namespace: namespace.to_owned(),
        lease_name: LEASE.to_owned(),
        identity: identity.to_owned(),
        lease_duration: LEASE_DURATION,
        renew_every: Duration::from_millis(500),
        retry_every: Duration::from_millis(200),
    }
}

async fn lead(client: kube::Client, namespace: &str, identity: &str) -> Leadership {
    timeout(Duration::from_secs(10), acquire(client, config(namespace, identity)))
        .await
        .unwrap_or_else(|_| panic!("{identity} did not acquire a free Lease"))
        .unwrap_or_else(|e| panic!("{identity} failed to acquire: {e:?}"))
}

async fn lease_spec(leases: &Api<Lease>) -> LeaseSpec {
    leases.get(LEASE).await.expect("reading the Lease").spec.expect("the Lease has a spec")
}

fn renew_time(spec: &LeaseSpec) -> Timestamp {
    spec.renew_time.as_ref().expect("renewTime is set").0
}

#[tokio::test]
async fn contender_waits_while_held_and_takes_over_promptly_after_release() {
    let ns = TestNamespace::new("leader").await;
    // Contenders hold exactly the chart's rights.
    let operator = operator_client(&ns, &[]).await;
    let leases: Api<Lease> = ns.api();

    let mut first = lead(operator.clone(), &ns.name, "first").await;
    let created = lease_spec(&leases).await;
    assert_eq!(created.holder_identity.as_deref(), Some("first"));
    assert_eq!(created.lease_duration_seconds, Some(2));
    assert_eq!(created.lease_transitions, Some(0));

    let mut second = tokio::spawn(acquire(operator.clone(), config(&ns.name, "second")));
    // Longer than the lease duration: only renewals can keep the second contender out this long.
    assert!(
        timeout(Duration::from_secs(3), &mut second).await.is_err(),
        "the second contender acquired while the first held the Lease"
    );
    let held = lease_spec(&leases).await;
    assert_eq!(held.holder_identity.as_deref(), Some("first"));
    assert!(renew_time(&held) > renew_time(&created), "the holder renewed the Lease while holding it");
    assert!(timeout(Duration::from_millis(100), first.lost()).await.is_err(), "the holder thinks it lost the Lease");

    first.release().await;
    let second = timeout(Duration::from_secs(2), second)
        .await
        .expect("the second contender did not acquire within 2s of the release")
        .expect("the acquire task panicked")
        .expect("the second contender failed to acquire");

    let taken = lease_spec(&leases).await;
    assert_eq!(taken.holder_identity.as_deref(), Some("second"));
    assert_eq!(taken.lease_transitions, Some(1));

    second.release().await;
    let released = lease_spec(&leases).await;
    assert_eq!(released.holder_identity, None, "release clears holderIdentity");
    assert_eq!(released.lease_transitions, Some(1), "a release is not a transition");
}

#[tokio::test]
async fn contender_takes_over_after_the_holder_stops_renewing() {
    let ns = TestNamespace::new("leader").await;
    // Contenders hold exactly the chart's rights.
    let operator = operator_client(&ns, &[]).await;
    let leases: Api<Lease> = ns.api();

    let crashed = lead(operator.clone(), &ns.name, "crashed").await;
    // Dropping stops renewals without releasing, like a crash.
    drop(crashed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let abandoned = lease_spec(&leases).await;
    assert_eq!(abandoned.holder_identity.as_deref(), Some("crashed"), "dropping must not release the Lease");
    let last_renewal = renew_time(&abandoned);

    let started = Instant::now();
    let _successor = timeout(Duration::from_secs(5), acquire(operator.clone(), config(&ns.name, "successor")))
        .await
        .expect("the successor did not acquire after the Lease expired")
        .expect("the successor failed to acquire");
    assert!(started.elapsed() >= Duration::from_millis(500), "took over a Lease that had not expired");

    let taken = lease_spec(&leases).await;
    assert_eq!(taken.holder_identity.as_deref(), Some("successor"));
    assert_eq!(taken.lease_transitions, Some(1));
    let acquired = taken.acquire_time.as_ref().expect("acquireTime is set").0;
    let expiry = last_renewal.checked_add(SignedDuration::try_from(LEASE_DURATION).expect("small")).expect("in range");
    assert!(acquired >= expiry, "acquired at {acquired}, before the abandoned Lease expired at {expiry}");
}

#[tokio::test]
async fn only_one_of_several_simultaneous_contenders_wins() {
    let ns = TestNamespace::new("leader").await;
    // Contenders hold exactly the chart's rights.
    let operator = operator_client(&ns, &[]).await;
    let leases: Api<Lease> = ns.api();
    let departing = lead(operator.clone(), &ns.name, "departing").await;

    let mut contenders = JoinSet::new();
    for n in 0..5 {
        let (client, config) = (operator.clone(), config(&ns.name, &format!("contender-{n}")));
        contenders.spawn(async move { (n, acquire(client, config).await) });
    }
    // Let every contender find the Lease held, so all of them race to take it over the moment it is free.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(contenders.try_join_next().is_none(), "a contender acquired a held Lease");
    departing.release().await;

    let (winner, leadership) = timeout(Duration::from_secs(2), contenders.join_next())
        .await
        .expect("nobody took over the released Lease")
        .expect("a contender")
        .expect("the acquire task panicked");
    let _leadership = leadership.expect("the winner failed to acquire");
    // Longer than the lease duration: a second winner would have shown up by now.
    let others = timeout(Duration::from_secs(3), contenders.join_next()).await;
    assert!(others.is_err(), "a second contender acquired while contender-{winner} held the Lease");

    let held = lease_spec(&leases).await;
    assert_eq!(held.holder_identity, Some(format!("contender-{winner}")));
    assert_eq!(held.lease_transitions, Some(1), "exactly one takeover");
    contenders.shutdown().await;
}

#[tokio::test]
async fn holder_learns_when_its_lease_is_taken() {
    let ns = TestNamespace::new("leader").await;
    // Contenders hold exactly the chart's rights.
    let operator = operator_client(&ns, &[]).await;
    let leases: Api<Lease> = ns.api();
    let mut holder = lead(operator.clone(), &ns.name, "holder").await;

    let mut lease = leases.get(LEASE).await.expect("reading the Lease");
    let spec = lease.spec.as_mut().expect("the Lease has a spec");
    spec.holder_identity = Some("usurper".into());
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    leases.replace(LEASE, &PostParams::default(), &lease).await.expect("taking the Lease away");

    timeout(Duration::from_secs(2), holder.lost()).await.expect("the holder did not notice the Lease was taken");
    assert_eq!(lease_spec(&leases).await.holder_identity.as_deref(), Some("usurper"), "the holder took it back");
    holder.release().await;
    assert_eq!(lease_spec(&leases).await.holder_identity.as_deref(), Some("usurper"), "released someone else's Lease");
}

#[tokio::test]
async fn holder_gives_up_when_it_cannot_renew_for_the_lease_duration() {
    let ns = TestNamespace::new("leader").await;
    // Contenders hold exactly the chart's rights.
    let leases: Api<Lease> = ns.api();
    let proxy = ApiserverProxy::start().await;
    let mut holder = lead(proxy.client(&ns).await, &ns.name, "cut-off").await;
    // Renewals keep working through the proxy at first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(timeout(Duration::from_millis(100), holder.lost()).await.is_err(), "lost while renewals succeed");
    let before_outage = renew_time(&lease_spec(&leases).await);

    let outage = Instant::now();
    drop(proxy);
    timeout(Duration::from_secs(4), holder.lost())
        .await
        .expect("the holder kept claiming leadership although it could not renew");
    let gave_up_after = outage.elapsed();
    // The last renewal before the outage was at most renew_every (plus a request) earlier.
    assert!(gave_up_after >= Duration::from_millis(1200), "gave up after only {gave_up_after:?}");
    assert_eq!(renew_time(&lease_spec(&leases).await), before_outage, "a renewal got through the outage");
}

/// A TCP forwarder to the apiserver that can be cut off, to make renewals fail.
struct ApiserverProxy {
    addr: SocketAddr,
    forwarding: tokio::task::JoinHandle<()>,
}

impl ApiserverProxy {
    async fn start() -> Self {
        let url = ControlPlane::shared().server_url();
        let upstream = url.strip_prefix("https://").expect("an https apiserver URL").trim_end_matches('/').to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
        let addr = listener.local_addr().expect("the proxy address");
        let forwarding = tokio::spawn(async move {
            // Held here so that aborting this task also drops every forwarded connection.
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, forwarding }
    }

    /// A client with the chart's rights for the operator that reaches the apiserver only through this proxy.
    async fn client(&self, ns: &TestNamespace) -> kube::Client {
        let mut config = vaultsync_e2e::chart::operator_config(ns, &[]).await;
        // The apiserver's certificate names 127.0.0.1, and the proxy listens there too.
        config.cluster_url = format!("https://{}", self.addr).parse().expect("the proxy URL");
        kube::Client::try_from(config).expect("a client")
    }
}

impl Drop for ApiserverProxy {
    fn drop(&mut self) {
        self.forwarding.abort();
    }
}
