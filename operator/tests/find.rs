//! `dataFrom.find` at scale and for nothing: over 100 Key Vault secrets, a refresh with nothing changed costs one
//! list (its pages) and no GET, one changed secret costs one GET (counted at the server); name expressions, tags and
//! rewrites select and rename keys, and rewrites that collide are refused with the Secret kept.

mod support;

use std::{collections::BTreeMap, time::Duration};

use serde_json::json;
use support::Env;
use vaultsync_api::VaultSecret;
use vaultsync_e2e::{eventually, keyvault::Op};

/// Forces a refresh and waits until the VaultSecret reports it acted on it.
async fn force_and_wait(env: &Env, name: &str, value: &str) {
    env.annotate(name, "vaultsync.dev/force-sync", value).await;
    let api = env.ns.api::<VaultSecret>();
    eventually(Duration::from_secs(30), &format!("force-sync {value} to be acted on"), || async {
        let vs = api.get(name).await.ok()?;
        let status = vs.status?;
        let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        (status.force_sync.as_deref() == Some(value) && ready).then_some(())
    })
    .await;
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Key Vault's `updated` times have one-second resolution, and a value read in the second it was updated is read
/// again once (a later update in that second would look the same): let the clock pass the second the test's
/// secrets were written in.
async fn next_second() {
    let start = unix_now();
    eventually(Duration::from_secs(3), "the clock to pass a second", || async { (unix_now() > start).then_some(()) })
        .await;
}

#[tokio::test]
async fn an_unchanged_vault_costs_one_list_and_no_get() {
    let env = Env::start("find-scale").await;
    for i in 0..100 {
        env.vault.set_secret(&format!("svc-{i:03}"), &format!("value-{i:03}-of-the-hundred"));
    }
    next_second().await;
    env.apply_vault_secret(
        "hundred",
        json!({ "storeRef": { "name": "kv" }, "dataFrom": [{ "find": { "path": "svc-" } }] }),
    )
    .await;
    env.wait_secret_value("hundred", "svc-099", "value-099-of-the-hundred").await;
    env.wait_reason("hundred", "Synced").await;
    assert_eq!(env.vault.calls(Op::GetSecret), 100, "the first sync reads each secret once");
    let pages = env.vault.calls(Op::ListSecrets);

    env.vault.reset_counts();
    force_and_wait(&env, "hundred", "nothing-changed").await;
    // One list is every page of it: 100 secrets at 25 a page.
    assert_eq!(env.vault.calls(Op::ListSecrets), 4, "one list, every page");
    assert_eq!(env.vault.calls(Op::GetSecret), 0, "nothing changed: no GET");
    assert!(pages >= 4);

    env.vault.reset_counts();
    env.vault.set_secret("svc-042", "value-042-rotated");
    force_and_wait(&env, "hundred", "one-changed").await;
    assert_eq!(env.vault.calls(Op::GetSecret), 1, "one changed secret: one GET");
    assert_eq!(env.vault.calls(Op::ListSecrets), 4);
    let secret = env.wait_secret_value("hundred", "svc-042", "value-042-rotated").await;
    assert_eq!(secret.data.expect("data").len(), 100);
    env.finish().await;
}

#[tokio::test]
async fn names_tags_and_rewrites_select_and_rename() {
    let env = Env::start("find-select").await;
    let prod: BTreeMap<String, String> = [("env".to_string(), "prod".to_string())].into();
    let dev: BTreeMap<String, String> = [("env".to_string(), "dev".to_string())].into();
    env.vault.set_secret_with("app-db-password", "prod-db-password", None, prod.clone());
    env.vault.set_secret_with("app-api-token", "prod-api-token", None, prod.clone());
    env.vault.set_secret_with("app-debug-token", "dev-debug-token", None, dev);
    env.vault.set_secret_with("app-db-user", "prod-db-user", None, prod);
    env.apply_vault_secret(
        "selected",
        json!({ "storeRef": { "name": "kv" }, "dataFrom": [{
            "find": { "path": "app-", "name": { "regexp": "-(password|token)$" }, "tags": { "env": "prod" } },
            "rewrite": [{ "regexp": { "source": "^app-", "target": "" } },
                        { "regexp": { "source": "-", "target": "_" } }] }] }),
    )
    .await;
    let secret = env.wait_secret_value("selected", "db_password", "prod-db-password").await;
    let data = secret.data.expect("data");
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, ["api_token", "db_password"], "name expression and tags both select; keys rewritten");
    assert_eq!(env.vault.calls(Op::GetSecret), 2, "only the selected secrets are read");

    // A rewrite that makes two keys one: KeyConflict, the Secret as it was.
    env.apply_vault_secret(
        "selected",
        json!({ "storeRef": { "name": "kv" }, "dataFrom": [{
            "find": { "path": "app-", "tags": { "env": "prod" } },
            "rewrite": [{ "regexp": { "source": "^app-(db|api)-.*$", "target": "$1" } }] }] }),
    )
    .await;
    let vs = env.wait_reason("selected", "KeyConflict").await;
    let message = &vs.status.expect("status").conditions[0].message;
    assert!(message.contains("rewrite turns both") && message.contains(r#"into the key "db""#), "{message}");
    let kept = env.secret("selected").await.expect("kept").data.expect("data");
    assert_eq!(kept.keys().map(String::as_str).collect::<Vec<_>>(), ["api_token", "db_password"]);
    env.finish().await;
}
