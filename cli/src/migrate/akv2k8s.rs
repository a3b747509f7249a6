//! akv2k8s `AzureKeyVaultSecret` to a `VaultSecret`. akv2k8s reads with its controller's own identity, so each
//! vault becomes a `ClusterVaultStore` reading with the operator's managed identity, open to the namespaces whose
//! resources use it (one per vault; repeated for every resource, which `kubectl apply` merges).

use serde_json::json;

use super::{Migration, PLACEHOLDER, Source, resource};

const TLS: &str = "kubernetes.io/tls";

pub(super) fn secret(source: &mut Source<'_>, migration: &mut Migration) {
    let vault = source.str("spec.vault.name").unwrap_or_default().to_string();
    let store = format!("akv2k8s-{vault}");
    let object = source.str("spec.vault.object.name").unwrap_or_default().to_string();
    let object_type = source.str("spec.vault.object.type").unwrap_or("secret").to_string();
    let version = source.str("spec.vault.object.version").map(str::to_string);
    source.drop_field(
        migration,
        "spec.vault.azureIdentity",
        "aad-pod-identity bindings are not used; the store reads with the operator's identity",
    );
    let output_type = source.str("spec.output.secret.type").map(str::to_string);
    let data_key = source.str("spec.output.secret.dataKey").map(str::to_string);
    let mut decoding = None;
    for i in 0..source.len("spec.output.transform") {
        let at = format!("spec.output.transform[{i}]");
        match source.str(&at) {
            Some("base64decode") => decoding = Some("Base64"),
            Some(other) => source.note(
                migration,
                &at,
                &format!("transform {other} has no counterpart; a target.template can do it ({{{{ value | trim }}}})"),
            ),
            None => {}
        }
    }
    if source.str("spec.output.secret.chainOrder").is_some() {
        source.note(
            migration,
            "spec.output.secret.chainOrder",
            "vaultsync always writes chains leaf (server) first, as ensureserverfirst does",
        );
    }
    source.drop_field(
        migration,
        "spec.output.configMap",
        "vaultsync writes Secrets only; the CSI provider mounts values as files",
    );
    let mut remote = json!({ "name": object });
    if let Some(v) = version {
        remote["version"] = json!(v);
    }
    if let Some(d) = decoding {
        remote["decoding"] = json!(d);
    }
    let mut spec = json!({ "storeRef": { "kind": "ClusterVaultStore", "name": store }, "refreshInterval": "1h" });
    let key = data_key.clone().unwrap_or_else(|| "value".into());
    match object_type.as_str() {
        "multi-key-value-secret" => {
            match source.str("spec.vault.object.contentType") {
                Some("application/x-json") | None => {}
                Some(other) => source.note(
                    migration,
                    "spec.vault.object.contentType",
                    &format!("{other}: only JSON objects can be extracted into keys"),
                ),
            }
            let mut extract = json!({ "name": object });
            if let Some(v) = remote.get("version") {
                extract["version"] = v.clone();
            }
            spec["dataFrom"] = json!([{ "extract": extract }]);
        }
        "certificate" if output_type.as_deref() == Some(TLS) => {
            spec["data"] = json!([{ "secretKey": "tls.crt", "remoteRef": remote }]);
        }
        "certificate" => {
            remote["format"] = json!("pem");
            spec["data"] = json!([{ "secretKey": key, "remoteRef": remote }]);
        }
        "key" => {
            remote["objectType"] = json!("key");
            remote["format"] = json!("pem");
            spec["data"] = json!([{ "secretKey": key, "remoteRef": remote }]);
        }
        _ => spec["data"] = json!([{ "secretKey": key, "remoteRef": remote }]),
    }
    let mut target = json!({ "name": source.str("spec.output.secret.name").unwrap_or(source.name.as_str()) });
    if let Some(t) = output_type {
        target["type"] = json!(t);
    }
    spec["target"] = target;
    if source.get("spec.output.secret.name").is_none() {
        source.note(
            migration,
            "spec.output.secret",
            "no Secret output (an env injection resource): the VaultSecret writes a Secret named after it; have \
             the workload read it, or mount the value with the CSI provider",
        );
    }
    let mut conditions = json!([{ "namespaces": [] }]);
    if let Some(ns) = &source.namespace {
        conditions[0]["namespaces"] = json!([ns]);
    }
    let store_spec = json!({
        "provider": { "azureKeyVault": {
            "vaultUrl": format!("https://{vault}.vault.azure.net"),
            "tenantId": format!("{PLACEHOLDER}TENANT-ID"),
            "auth": { "managedIdentity": {} },
        } },
        "conditions": conditions,
    });
    source.note(
        migration,
        "spec.vault",
        &format!(
            "akv2k8s reads with its controller's identity; ClusterVaultStore {store} reads with the operator's \
             managed identity: set its tenantId (and managedIdentity.clientId for a user-assigned identity), or \
             give it workload identity"
        ),
    );
    migration.resources.push(resource("ClusterVaultStore", json!({ "name": store }), store_spec));
    let metadata = source.metadata(&source.name.clone());
    migration.resources.push(resource("VaultSecret", metadata, spec));
}
