//! Tenant isolation in one table: a tenant (namespace B) tries every way of reaching what belongs to another
//! (namespace A) or to the cluster: A's namespaced store, shared stores whose conditions or allowlists leave B out,
//! credential Secrets and service accounts of A, the operator's own identity, a token for another audience. Every
//! attempt must be refused with a reason on the condition, and make no call at all, counted at the vault and at
//! Entra. The table is printed (and kept in docs/reliability.md).

mod support;

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use support::{Env, READER_SA, one_key};
use vaultsync_api::{ClusterVaultStore, VaultSecret, VaultStore};
use vaultsync_e2e::{TestNamespace, eventually};

struct Attempt {
    case: &'static str,
    /// The store B's VaultSecret names (`kind`, `name`).
    store_ref: Value,
    object: &'static str,
    expected: &'static [&'static str],
}

async fn apply_namespaced<K>(ns: &TestNamespace, kind: &str, name: &str, spec: Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let body =
        json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": kind, "metadata": { "name": name }, "spec": spec });
    ns.api::<K>()
        .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&body))
        .await
        .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
}

async fn apply_cluster_store(env: &Env, name: &str, spec: Value) {
    let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "ClusterVaultStore", "metadata": { "name": name }, "spec": spec });
    kube::Api::<ClusterVaultStore>::all(env.ns.client.clone())
        .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&body))
        .await
        .expect("cluster store");
}

/// Waits until the store `name` (a ClusterVaultStore when `ns` is `None`) has a Ready condition; returns its reason:
/// the positive signal that the operator checked it (with one vault call at most, for a store that may work).
async fn store_reason(client: &kube::Client, ns: Option<&str>, name: &str) -> String {
    eventually(Duration::from_secs(30), &format!("store {name} to report"), || async move {
        let status = match ns {
            Some(ns) => kube::Api::<VaultStore>::namespaced(client.clone(), ns).get(name).await.ok()?.status,
            None => kube::Api::<ClusterVaultStore>::all(client.clone()).get(name).await.ok()?.status,
        };
        let ready = status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        Some(format!("{}:{}", ready.status, ready.reason))
    })
    .await
}

/// The reason on the Ready condition of `name` in `ns`, once the operator reported on it.
async fn reason_in(ns: &TestNamespace, name: &str) -> (String, String) {
    let api = ns.api::<VaultSecret>();
    eventually(Duration::from_secs(30), &format!("{}/{name} to get a condition", ns.name), || {
        let api = api.clone();
        async move {
            let vs = api.get(name).await.ok()?;
            let ready = vs.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
            Some((ready.reason, ready.message))
        }
    })
    .await
}

#[tokio::test]
async fn a_tenant_reaches_nothing_of_another() {
    let mut env = Env::start("isolation-a").await;
    // One operator for both tenants (this binary's control plane holds only this test's namespaces).
    env.stop_operator().await;
    let mut args = env.operator_args();
    args.watch_namespace = None;
    env.start_operator_with(args);
    let b = TestNamespace::new("isolation-b").await;
    let tenant_label = json!({ "metadata": { "labels": { "tenant": "b" } } });
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(b.client.clone())
        .patch(&b.name, &PatchParams::default(), &Patch::Merge(&tenant_label))
        .await
        .expect("labelling B");

    // A's own VaultSecret works: the operator and the stores are fine.
    env.vault.set_secret("team-a-db", "isolation-team-a-value");
    env.apply_vault_secret("mine", one_key("password", "team-a-db")).await;
    env.wait_secret_value("mine", "password", "isolation-team-a-value").await;
    let sp_secret = "isolation-sp-secret";
    let creds = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta { name: Some("sp-creds".into()), ..Default::default() },
        string_data: Some([("client-secret".to_string(), sp_secret.to_string())].into()),
        ..Default::default()
    };
    env.ns.api::<k8s_openapi::api::core::v1::Secret>().create(&Default::default(), &creds).await.expect("A's Secret");
    env.remember_values(&[sp_secret]);

    // Shared stores made by the cluster's administrators, each leaving B out one way.
    let a = env.ns.name.clone();
    let mut shared = env.store_spec();
    shared["provider"]["azureKeyVault"]["auth"]["workloadIdentity"]["serviceAccountRef"]["namespace"] = json!(a);
    let cluster = |conditions: Value| {
        let mut spec = shared.clone();
        spec["conditions"] = conditions;
        spec
    };
    let only_a = format!("{a}-only-a");
    apply_cluster_store(&env, &only_a, cluster(json!([{ "namespaces": [a] }]))).await;
    let tenant_c = format!("{a}-tenant-c");
    apply_cluster_store(
        &env,
        &tenant_c,
        cluster(json!([{ "namespaceSelector": { "matchLabels": { "tenant": "c" } } }])),
    )
    .await;
    let b_objects = format!("{a}-b-objects");
    apply_cluster_store(&env, &b_objects, cluster(json!([{ "namespaces": [b.name], "allowedObjects": ["team-b-*"] }])))
        .await;

    for store in [&only_a, &tenant_c, &b_objects] {
        store_reason(&env.ns.client, None, store).await;
    }

    // B's own stores that name what is A's, or what no namespace may use: checking them makes no call either.
    let vault_before = env.vault.total_calls();
    let entra_before = env.entra.counts();
    let mut foreign_secret = env.store_spec();
    foreign_secret["provider"]["azureKeyVault"]["auth"] = json!({ "servicePrincipal": { "clientId": "app-sp",
        "clientSecretRef": { "name": "sp-creds", "key": "client-secret", "namespace": a } } });
    apply_namespaced::<VaultStore>(&b, "VaultStore", "a-secret", foreign_secret).await;
    let mut foreign_account = env.store_spec();
    foreign_account["provider"]["azureKeyVault"]["auth"]["workloadIdentity"]["serviceAccountRef"] =
        json!({ "name": READER_SA, "namespace": a });
    apply_namespaced::<VaultStore>(&b, "VaultStore", "a-account", foreign_account).await;
    let mut operator_identity = env.store_spec();
    operator_identity["provider"]["azureKeyVault"]["auth"] = json!({ "managedIdentity": {} });
    apply_namespaced::<VaultStore>(&b, "VaultStore", "operator-identity", operator_identity).await;
    let mut apiserver_audience = env.store_spec();
    apiserver_audience["provider"]["azureKeyVault"]["auth"]["workloadIdentity"]["audience"] =
        json!("https://kubernetes.default.svc");
    apply_namespaced::<VaultStore>(&b, "VaultStore", "apiserver-audience", apiserver_audience).await;
    let mut store_rows = Vec::new();
    for store in ["a-secret", "a-account", "operator-identity", "apiserver-audience"] {
        let reason = store_reason(&env.ns.client, Some(&b.name), store).await;
        assert!(reason.starts_with("False:"), "B's store {store} is not usable: {reason}");
        store_rows.push(format!("| B's VaultStore `{store}`, checked for its status | {} | 0 | 0 |", &reason[6..]));
    }
    let entra_after = env.entra.counts();
    assert_eq!(env.vault.total_calls(), vault_before, "checking B's stores called no vault");
    assert_eq!(entra_after, entra_before, "checking B's stores asked Entra nothing");

    let cluster_ref = |name: &str| json!({ "kind": "ClusterVaultStore", "name": name });
    let attempts = [
        Attempt {
            case: "A's namespaced VaultStore, named from B",
            store_ref: json!({ "name": "kv" }),
            object: "team-a-db",
            expected: &["StoreNotReady"],
        },
        Attempt {
            case: "ClusterVaultStore whose conditions name only A",
            store_ref: cluster_ref(&only_a),
            object: "team-a-db",
            expected: &["NamespaceNotAllowed"],
        },
        Attempt {
            case: "ClusterVaultStore whose label selector B does not match",
            store_ref: cluster_ref(&tenant_c),
            object: "team-a-db",
            expected: &["NamespaceNotAllowed"],
        },
        Attempt {
            case: "ClusterVaultStore allowing B only team-b-*, asked for team-a-db",
            store_ref: cluster_ref(&b_objects),
            object: "team-a-db",
            expected: &["ObjectNotAllowed"],
        },
        Attempt {
            case: "B's VaultStore naming A's credential Secret",
            store_ref: json!({ "name": "a-secret" }),
            object: "team-a-db",
            expected: &["StoreNotReady", "InvalidSpec"],
        },
        Attempt {
            case: "B's VaultStore naming A's service account",
            store_ref: json!({ "name": "a-account" }),
            object: "team-a-db",
            expected: &["StoreNotReady", "AuthenticationFailed", "InvalidSpec"],
        },
        Attempt {
            case: "B's VaultStore using the operator's own identity",
            store_ref: json!({ "name": "operator-identity" }),
            object: "team-a-db",
            expected: &["IdentityNotAllowed"],
        },
        Attempt {
            case: "B's VaultStore asking a token for the apiserver's audience",
            store_ref: json!({ "name": "apiserver-audience" }),
            object: "team-a-db",
            expected: &["StoreNotReady", "IdentityNotAllowed", "InvalidSpec"],
        },
    ];
    let mut table = vec![
        "| attempt from namespace B | reason | vault calls | Entra calls |".to_string(),
        "| --- | --- | ---: | ---: |".to_string(),
    ];
    table.extend(store_rows);
    let mut refused = 0;
    for (i, attempt) in attempts.iter().enumerate() {
        let vault_before = env.vault.total_calls();
        let entra_before = env.entra.counts();
        let name = format!("attempt-{i}");
        let mut spec = one_key("password", attempt.object);
        spec["storeRef"] = attempt.store_ref.clone();
        apply_namespaced::<VaultSecret>(&b, "VaultSecret", &name, spec).await;
        let (reason, message) = reason_in(&b, &name).await;
        let vault_calls = env.vault.total_calls() - vault_before;
        let entra_after = env.entra.counts();
        let entra_calls = (entra_after.0 + entra_after.1) - (entra_before.0 + entra_before.1);
        table.push(format!("| {} | {reason} | {vault_calls} | {entra_calls} |", attempt.case));
        assert!(attempt.expected.contains(&reason.as_str()), "{}: {reason} ({message})", attempt.case);
        assert_eq!((vault_calls, entra_calls), (0, 0), "{}: no call for a refused attempt", attempt.case);
        let secret = b.api::<k8s_openapi::api::core::v1::Secret>().get_opt(&name).await.expect("reading");
        assert!(secret.is_none(), "{}: nothing was written", attempt.case);
        refused += 1;
    }
    table.push(format!("| **refused** | **{} of {}** | **0** | **0** |", refused + 4, attempts.len() + 4));
    let table = table.join("\n");
    println!("{table}");
    let _ = std::fs::write(std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("isolation-report.md"), &table);
    env.finish().await;
}
