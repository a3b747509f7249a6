//! Tenant isolation on a shared ClusterVaultStore (namespace conditions, object allowlists) and
//! store status, against the real apiserver. A denied VaultSecret fetches nothing.

mod support;

use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use support::{Env, one_key};
use vaultsync_api::VaultStore;
use vaultsync_e2e::{eventually, keyvault::Op};

fn via_cluster_store(store: &str, key: &str, object: &str) -> Value {
    let mut spec = one_key(key, object);
    spec["storeRef"] = json!({ "kind": "ClusterVaultStore", "name": store });
    spec
}

#[tokio::test]
async fn a_shared_store_serves_only_the_objects_a_namespace_is_allowed() {
    let env = Env::start("tenancy-allow").await;
    env.vault.set_secret("team-a-db", "team-a-secret");
    env.vault.set_secret("team-b-db", "team-b-secret");
    let store = format!("{}-shared", env.ns.name);
    env.apply_cluster_store(&store, json!([{ "namespaces": [env.ns.name], "allowedObjects": ["team-a-*"] }])).await;

    env.apply_vault_secret("mine", via_cluster_store(&store, "password", "team-a-db")).await;
    env.wait_secret_value("mine", "password", "team-a-secret").await;
    let reads = env.vault.calls(Op::GetSecret);

    env.apply_vault_secret("theirs", via_cluster_store(&store, "password", "team-b-db")).await;
    let vs = env.wait_reason("theirs", "ObjectNotAllowed").await;
    let message = &vs.status.expect("status").conditions[0].message;
    assert!(message.contains("team-b-db") && message.contains(&env.ns.name), "{message}");
    assert_eq!(env.vault.calls(Op::GetSecret), reads, "the denied object was never fetched");
    assert!(env.secret("theirs").await.is_none());
    let events = vaultsync_e2e::controlplane::events_for(&env.ns, "VaultSecret", "theirs").await;
    assert!(events.iter().any(|e| e == "ObjectNotAllowed"), "{events:?}");
    env.finish().await;
}

#[tokio::test]
async fn namespaces_outside_the_conditions_are_refused() {
    let env = Env::start("tenancy-ns").await;
    env.vault.set_secret("db", "db-secret-value");
    let elsewhere = format!("{}-elsewhere", env.ns.name);
    env.apply_cluster_store(&elsewhere, json!([{ "namespaces": ["some-other-namespace"] }])).await;
    env.apply_vault_secret("refused", via_cluster_store(&elsewhere, "password", "db")).await;
    let vs = env.wait_reason("refused", "NamespaceNotAllowed").await;
    assert!(vs.status.expect("status").conditions[0].message.contains("may not be used from namespace"));

    // A label selector admits the namespace once it carries the label.
    let by_label = format!("{}-by-label", env.ns.name);
    let team = format!("team-{}", env.ns.name);
    env.apply_cluster_store(
        &by_label,
        json!([{ "namespaceSelector": { "matchLabels": { "vaultsync.dev/team": team } } }]),
    )
    .await;
    env.apply_vault_secret("labelled", via_cluster_store(&by_label, "password", "db")).await;
    env.wait_reason("labelled", "NamespaceNotAllowed").await;
    assert_eq!(env.vault.calls(Op::GetSecret), 0, "nothing is fetched for a refused namespace");
    let patch = json!({ "metadata": { "labels": { "vaultsync.dev/team": team } } });
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(env.ns.client.clone())
        .patch(&env.ns.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("labelling the namespace");
    env.annotate("labelled", "vaultsync.dev/force-sync", "after-label").await;
    env.wait_secret_value("labelled", "password", "db-secret-value").await;
    env.finish().await;
}

#[tokio::test]
async fn store_status_reports_whether_the_store_works() {
    let env = Env::start("tenancy-status").await;
    let api = env.ns.api::<VaultStore>();
    let ready = |name: &'static str, reason: &'static str| {
        let api = api.clone();
        async move {
            eventually(std::time::Duration::from_secs(20), &format!("store {name} to be {reason}"), || {
                let api = api.clone();
                async move {
                    let store = api.get(name).await.ok()?;
                    let condition = store.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
                    (condition.reason == reason).then_some(condition)
                }
            })
            .await
        }
    };
    let good = ready("kv", "Valid").await;
    assert_eq!(good.status, "True");
    assert_eq!(env.vault.calls(Op::ListSecrets), 1, "one cheap call proves the store");

    // An application ID the token endpoint does not know: not ready, with Entra's reason.
    let mut spec = env.store_spec();
    spec["provider"]["azureKeyVault"]["auth"]["workloadIdentity"]["clientId"] = json!("unknown-app");
    env.apply_store("wrong-app", spec).await;
    let bad = ready("wrong-app", "AuthenticationFailed").await;
    assert_eq!(bad.status, "False");
    assert!(bad.message.contains("AADSTS700016"), "{}", bad.message);

    // A service principal whose client-secret Secret does not exist.
    let mut spec = env.store_spec();
    spec["provider"]["azureKeyVault"]["auth"] =
        json!({ "servicePrincipal": { "clientId": "sp", "clientSecretRef": { "name": "nope", "key": "secret" } } });
    env.apply_store("no-secret", spec).await;
    let invalid = ready("no-secret", "InvalidSpec").await;
    assert!(invalid.message.contains("client secret Secret"), "{}", invalid.message);

    // An identity that may read secrets but not list them (an access policy with `get` only): the store works, and
    // says that refreshes cannot list.
    env.vault.forbid_listing(true);
    env.apply_store("get-only", env.store_spec()).await;
    let get_only = ready("get-only", "Valid").await;
    assert_eq!(get_only.status, "True");
    assert!(get_only.message.contains("may not list secrets"), "{}", get_only.message);
    env.finish().await;
}
