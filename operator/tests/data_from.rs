//! `dataFrom`: every field of a JSON object as a key (`extract`), and every object under a name
//! prefix as a key (`find`), within a shared store's allowlist.

mod support;

use serde_json::json;
use support::Env;
use vaultsync_e2e::keyvault::Op;

#[tokio::test]
async fn extract_and_find_make_many_keys() {
    let env = Env::start("data-from").await;
    env.vault.set_secret("db-config", r#"{"username":"app","port":5432,"password":"extracted-password"}"#);
    env.vault.set_secret("app-api-key", "found-api-key");
    env.vault.set_secret("app-token", "found-token");
    env.vault.set_secret("other-thing", "not-found-here");
    env.apply_vault_secret(
        "many",
        json!({ "storeRef": { "name": "kv" },
            "dataFrom": [{ "extract": { "name": "db-config" } }, { "find": { "path": "app-" } }],
            "data": [{ "secretKey": "port", "remoteRef": { "name": "app-token" } }] }),
    )
    .await;
    let secret = env.wait_secret_value("many", "password", "extracted-password").await;
    let data = secret.data.expect("data");
    assert_eq!(data["username"].0, b"app");
    assert_eq!(data["app-api-key"].0, b"found-api-key");
    assert_eq!(data["app-token"].0, b"found-token");
    assert_eq!(data["port"].0, b"found-token", "a key named in data takes its value from data");
    assert!(!data.contains_key("other-thing"), "find takes only names with the prefix");
    assert_eq!(data.len(), 5);
    let vs = env.wait_reason("many", "Synced").await;
    assert_eq!(vs.status.expect("status").versions.len(), 5, "a version per key");
    assert_eq!(env.vault.calls(Op::GetSecret), 3, "db-config, app-api-key, app-token: one read each");

    // A field that cannot be a Secret key: a clear reason, the Secret as it was.
    env.vault.set_secret("bad-config", r#"{"not/a key":"x"}"#);
    env.apply_vault_secret(
        "bad",
        json!({ "storeRef": { "name": "kv" }, "dataFrom": [{ "extract": { "name": "bad-config" } }] }),
    )
    .await;
    let vs = env.wait_reason("bad", "InvalidValue").await;
    assert!(vs.status.expect("status").conditions[0].message.contains("not a valid Secret key"));
    env.finish().await;
}
