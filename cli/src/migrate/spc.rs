//! Secrets Store CSI Driver `SecretProviderClass` for the Azure provider: vaultsync's CSI provider reads the Azure
//! provider's parameters, so the class is kept and only `provider` changes; what vaultsync does not support is
//! removed, with a note. `secretObjects` stay: the driver syncs them from any provider's files.

use serde_json::{Value, json};

use super::{Migration, Source};

/// Parameters vaultsync refuses, and why.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("usePodIdentity", "aad-pod-identity is not supported; use workload identity (clientID)"),
    (
        "useVMManagedIdentity",
        "a node's managed identity is shared by every pod on the node and is not used; use workload identity \
         (clientID) or a service principal in nodePublishSecretRef",
    ),
    ("userAssignedIdentityID", "goes with useVMManagedIdentity, which is not used"),
];

pub(super) fn provider_class(source: &mut Source<'_>, migration: &mut Migration) {
    match source.str("spec.provider") {
        Some("azure") => {}
        Some("vaultsync") => {
            source.note(migration, "spec.provider", "already vaultsync's; kept as it is");
        }
        other => {
            source.note(
                migration,
                "spec.provider",
                &format!("provider {other:?}: only the Azure provider's classes are converted; no class is made"),
            );
            let _ = source.get("spec");
            return;
        }
    }
    let mut parameters = serde_json::Map::new();
    if let Some(params) = source.get("spec.parameters").and_then(Value::as_object) {
        for (key, value) in params {
            let path = format!("spec.parameters.{key}");
            if let Some((_, why)) = UNSUPPORTED.iter().find(|(name, _)| name == key) {
                if value.as_str().is_some_and(|v| !v.is_empty() && v != "false") {
                    source.note(migration, &path, why);
                }
                continue;
            }
            if key == "objects" {
                check_objects(source, migration, value.as_str().unwrap_or_default());
            }
            parameters.insert(key.clone(), value.clone());
        }
    }
    let mut spec = json!({ "provider": "vaultsync", "parameters": parameters });
    if let Some(objects) = source.get("spec.secretObjects") {
        spec["secretObjects"] = objects.clone();
    }
    let metadata = source.metadata(&source.name.clone());
    migration.resources.push(json!({
        "apiVersion": source.value["apiVersion"].clone(),
        "kind": "SecretProviderClass",
        "metadata": metadata,
        "spec": spec,
    }));
}

/// The Azure provider's `objects`: what vaultsync's CSI provider cannot mount yet.
fn check_objects(source: &mut Source<'_>, migration: &mut Migration, text: &str) {
    #[derive(serde::Deserialize)]
    struct Array {
        #[serde(default)]
        array: Vec<String>,
    }
    let Ok(array) = serde_yaml::from_str::<Array>(text) else {
        source.note(migration, "spec.parameters.objects", "not the Azure provider's `array:` of objects; check it");
        return;
    };
    for (i, item) in array.array.iter().enumerate() {
        let object: Value = serde_yaml::from_str(item).unwrap_or_default();
        let place = format!("spec.parameters.objects.array[{i}]");
        let kind = object["objectType"].as_str().map(str::to_ascii_lowercase);
        if matches!(kind.as_deref(), Some("key" | "cert")) {
            source.note(
                migration,
                &format!("{place}.objectType"),
                "vaultsync's CSI provider mounts secrets only so far (a certificate with its key is objectType \
                 secret); use objectType secret or a VaultSecret",
            );
        }
        if object["objectFormat"].as_str().is_some_and(|f| f.eq_ignore_ascii_case("pfx")) {
            source.note(migration, &format!("{place}.objectFormat"), "pfx is not mounted yet; use pem");
        }
    }
}
