//! The audit trail of a whole operator run: one record per vault read (each GET the vault saw, each list), with the
//! store, identity, requester, object, version, outcome and whether the cache served it; never a value.

mod support;

use std::{collections::BTreeSet, time::Duration};

use serde_json::{Value, json};
use support::{Env, one_key};
use vaultsync_e2e::{eventually, keyvault::Op};

#[tokio::test]
async fn every_vault_read_leaves_one_audit_record_without_values() {
    let mut env = Env::start("audit").await;
    let dir = std::env::temp_dir().join(format!("vaultsync-audit-{}", env.ns.name));
    std::fs::create_dir_all(&dir).expect("a folder");
    let file = dir.join("audit.jsonl");
    env.stop_operator().await;
    let mut args = env.operator_args();
    args.audit_log = Some(file.clone());
    env.vault.set_secret("shared", "audit-value-shared");
    env.vault.set_secret("app-one", "audit-value-one");
    env.vault.set_secret("app-two", "audit-value-two");
    env.vault.reset_counts();
    env.start_operator_with(args);

    env.apply_vault_secret("first", one_key("password", "shared")).await;
    env.apply_vault_secret("second", one_key("password", "shared")).await;
    env.apply_vault_secret(
        "found",
        json!({ "storeRef": { "name": "kv" }, "dataFrom": [{ "find": { "path": "app-" } }] }),
    )
    .await;
    env.apply_vault_secret("missing", one_key("password", "not-in-the-vault")).await;
    for name in ["first", "second", "found"] {
        env.wait_reason(name, "Synced").await;
    }
    env.wait_reason("missing", "NotFound").await;
    env.vault.set_secret("shared", "audit-value-shared-2");
    env.annotate("first", "vaultsync.dev/force-sync", "1").await;
    env.wait_secret_value("first", "password", "audit-value-shared-2").await;

    let ns = env.ns.name.clone();
    let records: Vec<Value> = eventually(Duration::from_secs(10), "a record for every vault call", || {
        let (file, vault) = (file.clone(), &env.vault);
        async move {
            let text = std::fs::read_to_string(&file).ok()?;
            let records: Vec<Value> =
                text.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
            let gets = records.iter().filter(|r| r["operation"] == "get" && r["source"] == "vault").count();
            (gets as u64 == vault.calls(Op::GetSecret)).then_some(records)
        }
    })
    .await;
    // Lists: find's, and the store checks behind the stores' Ready condition.
    let lists = records.iter().filter(|r| r["operation"] == "list" || r["operation"] == "check").count();
    assert_eq!(lists as u64, env.vault.calls(Op::ListSecrets), "one record per list");
    assert!(records.iter().any(|r| r["operation"] == "check" && r["requester"] == "store check"));
    for record in &records {
        for field in ["time", "store", "endpoint", "identity", "requester", "object", "outcome", "source"] {
            assert!(record[field].is_string(), "{field} in {record}");
        }
        assert_eq!(record["store"], format!("VaultStore/{ns}/kv"), "{record}");
        let requester = record["requester"].as_str().unwrap();
        assert!(requester.starts_with(&format!("VaultSecret {ns}/")) || requester == "store check", "{record}");
        assert!(record["identity"].as_str().unwrap().starts_with("workload identity"), "{record}");
    }
    let of = |requester: &str, object: &str| -> BTreeSet<(String, String)> {
        records
            .iter()
            .filter(|r| r["requester"] == format!("VaultSecret {ns}/{requester}") && r["object"] == object)
            .map(|r| (r["source"].as_str().unwrap().to_string(), r["outcome"].as_str().unwrap().to_string()))
            .collect()
    };
    assert!(of("first", "shared").contains(&("vault".into(), "ok".into())));
    assert!(!of("second", "shared").is_empty(), "the second reader of one object is recorded too");
    assert_eq!(of("missing", "not-in-the-vault").into_iter().next().map(|(_, o)| o), Some("NotFound".into()));
    assert!(!of("found", "app-one").is_empty() && !of("found", "app-").is_empty(), "find's list and reads");
    // Versions are the vault's, and the read after the rotation has another.
    let versions: BTreeSet<&str> = records
        .iter()
        .filter(|r| r["object"] == "shared" && r["outcome"] == "ok")
        .filter_map(|r| r["version"].as_str())
        .collect();
    assert_eq!(versions.len(), 2, "{versions:?}");
    // Never a value; and the records are on their own log target too.
    let text = std::fs::read_to_string(&file).expect("the audit file");
    for value in env.vault.all_values() {
        assert!(!text.contains(&value), "a value in the audit trail");
    }
    assert!(vaultsync_e2e::logs::text().contains("vaultsync::audit"), "records on the vaultsync::audit target");
    std::fs::remove_dir_all(&dir).expect("removing the folder");
    env.finish().await;
}
