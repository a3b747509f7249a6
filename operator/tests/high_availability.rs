//! Two replicas with leader election: only the Lease holder writes; when it dies, the other
//! takes over within the lease duration and carries on.

mod support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use support::{Env, metric_sum, one_key};
use vaultsync_e2e::eventually;

async fn holder(env: &Env) -> Option<String> {
    env.ns.api::<Lease>().get_opt("vaultsync-operator").await.ok()??.spec?.holder_identity
}

#[tokio::test]
async fn only_the_leader_writes_and_a_standby_takes_over() {
    let mut env = Env::start("ha-leader").await;
    env.stop_operator().await;
    env.vault.set_secret("ha-object", "ha-secret-value");

    let replica = |name: &str, port: u16| {
        let mut args = env.operator_args();
        args.leader_elect = true;
        args.lease_duration = Duration::from_secs(3);
        args.pod_name = name.into();
        args.metrics_addr = format!("127.0.0.1:{port}").parse().expect("address");
        args
    };
    let ports =
        [vaultsync_e2e::process::free_port().expect("port"), vaultsync_e2e::process::free_port().expect("port")];
    let first = env.spawn_operator("replica-1", replica("replica-1", ports[0]));
    eventually(Duration::from_secs(15), "replica-1 to lead", || async {
        (holder(&env).await.as_deref() == Some("replica-1")).then_some(())
    })
    .await;
    let second = env.spawn_operator("replica-2", replica("replica-2", ports[1]));

    env.apply_vault_secret("one", one_key("k", "ha-object")).await;
    env.wait_secret_value("one", "k", "ha-secret-value").await;
    env.wait_reason("one", "Synced").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = "vaultsync_apiserver_writes_total";
    assert!(metric_sum(ports[0], writes).await > 0, "the leader wrote");
    assert_eq!(metric_sum(ports[1], writes).await, 0, "the standby wrote nothing");

    // The leader dies without releasing its Lease; the standby takes over after it expires.
    first.abort();
    let _ = first.await;
    env.apply_vault_secret("two", one_key("k", "ha-object")).await;
    env.wait_secret_value("two", "k", "ha-secret-value").await;
    assert_eq!(holder(&env).await.as_deref(), Some("replica-2"));
    assert!(metric_sum(ports[1], writes).await > 0, "the new leader writes");
    second.abort();
    env.finish().await;
}
