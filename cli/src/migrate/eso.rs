//! External Secrets Operator: `ExternalSecret` to `VaultSecret`; `SecretStore` / `ClusterSecretStore` with the
//! Azure Key Vault (`azurekv`) or HashiCorp Vault (`vault`) provider to `VaultStore` / `ClusterVaultStore`.

use serde_json::{Map, Value, json};

use super::{Migration, PLACEHOLDER, Source, refresh_interval, resource};

pub(super) fn external_secret(source: &mut Source<'_>, migration: &mut Migration) {
    let mut spec = Map::new();
    let store_kind = match source.str("spec.secretStoreRef.kind") {
        Some("ClusterSecretStore") => "ClusterVaultStore",
        _ => "VaultStore",
    };
    let store_name = source.str("spec.secretStoreRef.name").unwrap_or_default();
    spec.insert("storeRef".into(), json!({ "kind": store_kind, "name": store_name }));
    if let Some(interval) = refresh_interval(source, migration, "spec.refreshInterval") {
        spec.insert("refreshInterval".into(), json!(interval));
    }
    source.drop_field(
        migration,
        "spec.refreshPolicy",
        "vaultsync refreshes on its interval (0: once) and on the vaultsync.dev/force-sync annotation",
    );
    let mut data = Vec::new();
    for i in 0..source.len("spec.data") {
        let at = format!("spec.data[{i}]");
        let secret_key = source.str(&format!("{at}.secretKey")).unwrap_or_default();
        let remote = remote_ref(source, migration, &format!("{at}.remoteRef"));
        source.drop_field(
            migration,
            &format!("{at}.sourceRef"),
            "vaultsync reads every key of a VaultSecret from its one store; split the VaultSecret per store",
        );
        data.push(json!({ "secretKey": secret_key, "remoteRef": remote }));
    }
    if !data.is_empty() {
        spec.insert("data".into(), Value::Array(data));
    }
    let mut data_from = Vec::new();
    for i in 0..source.len("spec.dataFrom") {
        if let Some(entry) = data_from_entry(source, migration, &format!("spec.dataFrom[{i}]")) {
            data_from.push(entry);
        }
    }
    if !data_from.is_empty() {
        spec.insert("dataFrom".into(), Value::Array(data_from));
    }
    spec.insert("target".into(), target(source, migration));
    let metadata = source.metadata(&source.name.clone());
    migration.resources.push(resource("VaultSecret", metadata, Value::Object(spec)));
}

/// A `remoteRef` (or `extract`): the object, with ESO's Azure prefixes (`secret/`, `cert/`, `key/`) as object types.
fn remote_ref(source: &mut Source<'_>, migration: &mut Migration, at: &str) -> Value {
    let key = source.str(&format!("{at}.key")).unwrap_or_default();
    let mut remote = json!({ "name": key });
    if let Some((kind, name)) = key.split_once('/') {
        match kind {
            "secret" => remote["name"] = json!(name),
            "cert" => {
                remote = json!({ "name": name, "objectType": "certificate", "format": "der" });
                source.note(
                    migration,
                    &format!("{at}.key"),
                    "cert/ reads the certificate alone; it is written as DER (format der) as ESO does; use format \
                     pem for PEM, or objectType secret for the certificate with its key",
                );
            }
            "key" => remote = json!({ "name": name, "objectType": "key", "format": "jwk" }),
            _ => {}
        }
    }
    if let Some(property) = source.str(&format!("{at}.property")) {
        remote["property"] = json!(property);
    }
    if let Some(version) = source.str(&format!("{at}.version")) {
        remote["version"] = json!(version);
    }
    if let Some(decoding) = source.str(&format!("{at}.decodingStrategy")) {
        remote["decoding"] = json!(decoding);
    }
    conversion_and_metadata(source, migration, at);
    remote
}

fn conversion_and_metadata(source: &mut Source<'_>, migration: &mut Migration, at: &str) {
    if source.str(&format!("{at}.conversionStrategy")).is_some_and(|s| s != "Default") {
        source.note(
            migration,
            &format!("{at}.conversionStrategy"),
            "vaultsync does not convert keys (Unicode); use dataFrom rewrite to change key names",
        );
    }
    if source.str(&format!("{at}.metadataPolicy")).is_some_and(|s| s != "None") {
        source.note(
            migration,
            &format!("{at}.metadataPolicy"),
            "vaultsync reads values, not the vault's metadata or tags",
        );
    }
}

fn data_from_entry(source: &mut Source<'_>, migration: &mut Migration, at: &str) -> Option<Value> {
    let mut entry = json!({});
    if source.get(&format!("{at}.extract")).is_some() {
        let extract = format!("{at}.extract");
        let mut out = json!({ "name": source.str(&format!("{extract}.key")).unwrap_or_default() });
        if let Some(version) = source.str(&format!("{extract}.version")) {
            out["version"] = json!(version);
        }
        source.drop_field(
            migration,
            &format!("{extract}.property"),
            "extract takes every field of the whole JSON value; a nested object's fields cannot be extracted",
        );
        if source.str(&format!("{extract}.decodingStrategy")).is_some_and(|s| s != "None") {
            source.note(
                migration,
                &format!("{extract}.decodingStrategy"),
                "extracted fields are written as they are; decode them in a template (b64decode)",
            );
        }
        conversion_and_metadata(source, migration, &extract);
        entry["extract"] = out;
    } else if source.get(&format!("{at}.find")).is_some() {
        let find = format!("{at}.find");
        let mut out = json!({ "path": source.str(&format!("{find}.path")).unwrap_or_default() });
        if let Some(regexp) = source.str(&format!("{find}.name.regexp")) {
            out["name"] = json!({ "regexp": regexp });
        }
        if let Some(tags) = source.get(&format!("{find}.tags")) {
            out["tags"] = tags.clone();
        }
        if let Some(decoding) = source.str(&format!("{find}.decodingStrategy")) {
            out["decoding"] = json!(decoding);
        }
        conversion_and_metadata(source, migration, &find);
        entry["find"] = out;
    } else {
        source.note(
            migration,
            at,
            "only extract and find are converted (generators such as sourceRef.generatorRef have no vaultsync \
             counterpart)",
        );
        return None;
    }
    let mut rewrites = Vec::new();
    for i in 0..source.len(&format!("{at}.rewrite")) {
        let rule = format!("{at}.rewrite[{i}]");
        if let (Some(from), Some(to)) =
            (source.str(&format!("{rule}.regexp.source")), source.str(&format!("{rule}.regexp.target")))
        {
            rewrites.push(json!({ "regexp": { "source": from, "target": to } }));
        }
        source.drop_field(
            migration,
            &format!("{rule}.transform"),
            "template transforms of keys are not supported; use regexp rewrites",
        );
    }
    if !rewrites.is_empty() {
        entry["rewrite"] = Value::Array(rewrites);
    }
    source.drop_field(
        migration,
        &format!("{at}.sourceRef"),
        "vaultsync has no generators and one store per VaultSecret",
    );
    Some(entry)
}

fn target(source: &mut Source<'_>, migration: &mut Migration) -> Value {
    let mut target = json!({});
    if let Some(name) = source.str("spec.target.name") {
        target["name"] = json!(name);
    }
    // ESO's None writes nothing; vaultsync's None writes nothing and reads nothing (the VaultSecret serves mounts).
    if let Some(policy @ ("Owner" | "Orphan" | "Merge" | "None")) = source.str("spec.target.creationPolicy") {
        target["creationPolicy"] = json!(policy);
    }
    match source.str("spec.target.deletionPolicy") {
        Some(policy @ ("Retain" | "Delete")) => target["deletionPolicy"] = json!(policy),
        Some("Merge") => {
            target["deletionPolicy"] = json!("Retain");
            source.note(
                migration,
                "spec.target.deletionPolicy",
                "Merge (remove the keys when the vault deletes them) has no counterpart; Retain keeps the Secret",
            );
        }
        _ => {}
    }
    if let Some(immutable) = source.get("spec.target.immutable").and_then(Value::as_bool) {
        target["immutable"] = json!(immutable);
    }
    if source.get("spec.target.template").is_some() {
        template(source, migration, &mut target);
    }
    target
}

/// ESO's Go templates become minijinja: `{{ .key }}` turns into `{{ key }}`; anything else is carried as written,
/// with a note, since its functions differ.
fn template(source: &mut Source<'_>, migration: &mut Migration, target: &mut Value) {
    let mut out = json!({});
    if let Some(type_) = source.str("spec.target.template.type") {
        target["type"] = json!(type_);
    }
    for (field, into) in [("labels", "labels"), ("annotations", "annotations")] {
        if let Some(map) = source.get(&format!("spec.target.template.metadata.{field}")).and_then(Value::as_object) {
            let mut converted = Map::new();
            for (key, value) in map {
                let path = format!("spec.target.template.metadata.{field}.{key}");
                converted.insert(key.clone(), json!(go_template(source, migration, &path, value)));
            }
            out[into] = Value::Object(converted);
        }
    }
    if let Some(map) = source.get("spec.target.template.data").and_then(Value::as_object) {
        let mut data = Map::new();
        for (key, value) in map {
            let path = format!("spec.target.template.data.{key}");
            data.insert(key.clone(), json!(go_template(source, migration, &path, value)));
        }
        out["data"] = Value::Object(data);
    }
    let mut template_from = Vec::new();
    for i in 0..source.len("spec.target.template.templateFrom") {
        let at = format!("spec.target.template.templateFrom[{i}]");
        let Some(config_map) = source.str(&format!("{at}.configMap.name")) else {
            source.note(migration, &at, "only templates from a ConfigMap are supported (not from a Secret or literal)");
            continue;
        };
        for j in 0..source.len(&format!("{at}.configMap.items")) {
            let item = format!("{at}.configMap.items[{j}]");
            let key = source.str(&format!("{item}.key")).unwrap_or_default();
            if source.str(&format!("{item}.templateAs")).is_some_and(|t| t != "Values") {
                source.note(migration, &format!("{item}.templateAs"), "only Values (the item is one key) is supported");
            }
            template_from.push(json!({ "configMap": { "name": config_map, "key": key }, "secretKey": key }));
        }
        source.note(
            migration,
            &format!("{at}.configMap"),
            "the ConfigMap's templates are ESO Go templates; rewrite them in minijinja ({{{{ key }}}}, not \
             {{{{ .key }}}})",
        );
        source.drop_field(migration, &format!("{at}.target"), "templates always make Secret data");
    }
    if !template_from.is_empty() {
        out["templateFrom"] = Value::Array(template_from);
    }
    if let Some(policy @ ("Replace" | "Merge")) = source.str("spec.target.template.mergePolicy") {
        out["mergePolicy"] = json!(policy);
    }
    if source.str("spec.target.template.engineVersion").is_some_and(|v| v != "v2") {
        source.note(migration, "spec.target.template.engineVersion", "only ESO's v2 template syntax is converted");
    }
    // A template that makes nothing but the type is the target's type alone.
    if out.as_object().is_some_and(|o| !o.is_empty()) {
        target["template"] = out;
    }
}

fn go_template(source: &mut Source<'_>, migration: &mut Migration, path: &str, value: &Value) -> String {
    let text = value.as_str().unwrap_or_default();
    let (converted, simple) = convert_go_template(text);
    if !simple {
        source.note(
            migration,
            path,
            "Go template functions differ from minijinja's; carried as written with {{ .key }} turned into \
             {{ key }}: check it with kubectl vaultsync render",
        );
    }
    converted
}

/// `{{ .key }}` to `{{ key }}`; whether nothing else (functions, pipes, ranges) was in it.
fn convert_go_template(text: &str) -> (String, bool) {
    let mut out = String::new();
    let mut simple = true;
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            simple = false;
            break;
        };
        let inner = rest[start + 2..start + end].trim().trim_start_matches('-').trim_end_matches('-').trim();
        match inner.strip_prefix('.') {
            Some(key) if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                out.push_str(&format!("{{{{ {key} }}}}"));
            }
            _ => {
                simple = false;
                out.push_str(&rest[start..start + end + 2].replace("{{ .", "{{ ").replace("{{.", "{{ "));
            }
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    (out, simple)
}

pub(super) fn store(source: &mut Source<'_>, migration: &mut Migration, inputs: &[Value]) {
    let cluster = source.value["kind"] == "ClusterSecretStore";
    let kind = if cluster { "ClusterVaultStore" } else { "VaultStore" };
    let provider = if source.get("spec.provider.azurekv").is_some() {
        azure_provider(source, migration, inputs, cluster)
    } else if source.get("spec.provider.vault").is_some() {
        vault_provider(source, migration, cluster)
    } else {
        let names: Vec<String> =
            source.value["spec"]["provider"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default();
        source.note(
            migration,
            "spec.provider",
            &format!(
                "provider {} has no vaultsync counterpart (Azure Key Vault, OpenBao and HashiCorp Vault are \
                 supported); no store is made",
                names.join(", ")
            ),
        );
        return;
    };
    let mut spec = json!({ "provider": provider });
    if cluster {
        spec["conditions"] = conditions(source, migration);
    }
    source.drop_field(migration, "spec.controller", "vaultsync has no controller classes: one operator serves all");
    source.drop_field(migration, "spec.refreshInterval", "vaultsync checks each store's Ready condition on its own");
    source.drop_field(migration, "spec.retrySettings", "vaultsync retries with backoff by failure reason");
    let metadata = source.metadata(&source.name.clone());
    migration.resources.push(resource(kind, metadata, spec));
}

fn conditions(source: &mut Source<'_>, migration: &mut Migration) -> Value {
    let count = source.len("spec.conditions");
    if count == 0 {
        source.note(
            migration,
            "spec.conditions",
            "no conditions: ESO lets every namespace use the store; the ClusterVaultStore says so with an empty \
             namespaceSelector, narrow it if you can",
        );
        return json!([{ "namespaceSelector": {} }]);
    }
    let mut out = Vec::new();
    for i in 0..count {
        let at = format!("spec.conditions[{i}]");
        let mut condition = json!({});
        if let Some(names) = source.get(&format!("{at}.namespaces")) {
            condition["namespaces"] = names.clone();
        }
        if let Some(selector) = source.get(&format!("{at}.namespaceSelector")) {
            condition["namespaceSelector"] = selector.clone();
        }
        source.drop_field(
            migration,
            &format!("{at}.namespaceRegexes"),
            "vaultsync names namespaces or selects them by label, not by regular expression",
        );
        if condition.as_object().is_some_and(|c| !c.is_empty()) {
            out.push(condition);
        }
    }
    Value::Array(out)
}

fn azure_provider(source: &mut Source<'_>, migration: &mut Migration, inputs: &[Value], cluster: bool) -> Value {
    let p = "spec.provider.azurekv";
    let vault_url = source.str(&format!("{p}.vaultUrl")).unwrap_or_default().trim_end_matches('/').to_string();
    let tenant =
        source.str(&format!("{p}.tenantId")).map(str::to_string).unwrap_or_else(|| format!("{PLACEHOLDER}TENANT-ID"));
    let mut azure = json!({ "vaultUrl": vault_url, "tenantId": tenant });
    match source.str(&format!("{p}.environmentType")) {
        None | Some("PublicCloud") => {}
        Some("ChinaCloud") => azure["cloud"] = json!("China"),
        Some("USGovernmentCloud") => azure["cloud"] = json!("USGovernment"),
        Some(other) => source.note(
            migration,
            &format!("{p}.environmentType"),
            &format!("{other} is not a cloud vaultsync names; use cloud Custom with its authorityHost"),
        ),
    }
    let auth = match source.str(&format!("{p}.authType")).unwrap_or("ServicePrincipal") {
        "WorkloadIdentity" => {
            let account = source.str(&format!("{p}.serviceAccountRef.name")).unwrap_or_default().to_string();
            let account_ns = source
                .str(&format!("{p}.serviceAccountRef.namespace"))
                .map(str::to_string)
                .or(source.namespace.clone());
            let client_id = client_id_of(inputs, &account, account_ns.as_deref()).unwrap_or_else(|| {
                source.note(
                    migration,
                    &format!("{p}.serviceAccountRef"),
                    "ESO reads the client ID from the service account's azure.workload.identity/client-id \
                     annotation, and the account is not in the input: set workloadIdentity.clientId",
                );
                format!("{PLACEHOLDER}CLIENT-ID")
            });
            let mut reference = json!({ "name": account });
            if cluster && let Some(ns) = account_ns {
                reference["namespace"] = json!(ns);
            }
            json!({ "workloadIdentity": { "serviceAccountRef": reference, "clientId": client_id } })
        }
        "ManagedIdentity" => {
            if !cluster {
                source.note(
                    migration,
                    &format!("{p}.authType"),
                    "vaultsync lets only ClusterVaultStores read with the operator's managed identity (unless the \
                     operator is installed with operator.identityInVaultStores); make it a ClusterVaultStore",
                );
            }
            let mut identity = json!({});
            if let Some(id) = source.str(&format!("{p}.identityId")) {
                identity["clientId"] = json!(id);
            }
            json!({ "managedIdentity": identity })
        }
        _ => {
            let id_secret = secret_ref(source, &format!("{p}.authSecretRef.clientId"), cluster);
            source.note(
                migration,
                &format!("{p}.authSecretRef.clientId"),
                &format!(
                    "vaultsync takes the client ID as text, not from a Secret (it was in {}): set \
                     servicePrincipal.clientId",
                    id_secret["name"].as_str().unwrap_or("a Secret")
                ),
            );
            let mut principal = json!({ "clientId": format!("{PLACEHOLDER}CLIENT-ID") });
            if source.get(&format!("{p}.authSecretRef.clientSecret")).is_some() {
                principal["clientSecretRef"] = secret_ref(source, &format!("{p}.authSecretRef.clientSecret"), cluster);
            } else if source.get(&format!("{p}.authSecretRef.clientCertificate")).is_some() {
                principal["clientCertificateRef"] =
                    secret_ref(source, &format!("{p}.authSecretRef.clientCertificate"), cluster);
            }
            json!({ "servicePrincipal": principal })
        }
    };
    azure["auth"] = auth;
    json!({ "azureKeyVault": azure })
}

/// A `{name, key, namespace}` reference; a ClusterVaultStore's must name its namespace.
fn secret_ref(source: &mut Source<'_>, at: &str, cluster: bool) -> Value {
    let mut reference = json!({
        "name": source.str(&format!("{at}.name")).unwrap_or_default(),
        "key": source.str(&format!("{at}.key")).unwrap_or_default(),
    });
    let ns = source.str(&format!("{at}.namespace")).map(str::to_string);
    if let Some(ns) = ns.filter(|_| cluster) {
        reference["namespace"] = json!(ns);
    } else if cluster {
        reference["namespace"] = json!(format!("{PLACEHOLDER}namespace"));
    }
    reference
}

/// The client ID a ServiceAccount in the input carries for workload identity.
pub(super) fn client_id_of(inputs: &[Value], account: &str, namespace: Option<&str>) -> Option<String> {
    inputs
        .iter()
        .filter(|v| v["kind"] == "ServiceAccount" && v["metadata"]["name"] == account)
        .find(|v| namespace.is_none_or(|ns| v["metadata"]["namespace"].as_str().is_none_or(|n| n == ns)))
        .and_then(|v| v["metadata"]["annotations"]["azure.workload.identity/client-id"].as_str())
        .map(str::to_string)
}

fn vault_provider(source: &mut Source<'_>, migration: &mut Migration, cluster: bool) -> Value {
    let p = "spec.provider.vault";
    let server = source.str(&format!("{p}.server")).unwrap_or_default().to_string();
    let mut bao = json!({ "server": server });
    if server.starts_with("http://") {
        bao["insecureHttp"] = json!(true);
    }
    if let Some(mount) = source.str(&format!("{p}.path")) {
        bao["mount"] = json!(mount.trim_matches('/'));
    }
    match source.str(&format!("{p}.version")) {
        Some("v1") => bao["kvVersion"] = json!(1),
        _ => bao["kvVersion"] = json!(2),
    }
    if let Some(ns) = source.str(&format!("{p}.namespace")) {
        bao["namespace"] = json!(ns);
    }
    if let Some(ca) = source.str(&format!("{p}.caBundle")) {
        use base64::Engine as _;
        match base64::engine::general_purpose::STANDARD.decode(ca.trim()).ok().and_then(|b| String::from_utf8(b).ok()) {
            Some(pem) => bao["caBundle"] = json!(pem),
            None => source.note(migration, &format!("{p}.caBundle"), "not Base64 of a PEM bundle; set caBundle"),
        }
    }
    source.drop_field(
        migration,
        &format!("{p}.caProvider"),
        "vaultsync takes the CA bundle inline (caBundle), not from a Secret or ConfigMap",
    );
    let a = format!("{p}.auth");
    let auth = if source.get(&format!("{a}.kubernetes")).is_some() {
        let k = format!("{a}.kubernetes");
        let mut kubernetes = json!({ "role": source.str(&format!("{k}.role")).unwrap_or_default() });
        if let Some(mount) = source.str(&format!("{k}.mountPath")) {
            kubernetes["mountPath"] = json!(mount);
        }
        let account = source.str(&format!("{k}.serviceAccountRef.name"));
        let mut reference = json!({ "name": account.unwrap_or("default") });
        if account.is_none() {
            source.note(
                migration,
                &k,
                "without serviceAccountRef ESO uses its own service account; vaultsync reads with a service account \
                 of the store's namespace: set serviceAccountRef.name",
            );
        }
        if cluster {
            let ns = source.str(&format!("{k}.serviceAccountRef.namespace")).unwrap_or("REPLACE-namespace");
            reference["namespace"] = json!(ns);
        }
        if let Some(audiences) = source.get(&format!("{k}.serviceAccountRef.audiences")).and_then(Value::as_array)
            && let Some(first) = audiences.first()
        {
            kubernetes["audience"] = first.clone();
        }
        source.drop_field(
            migration,
            &format!("{k}.secretRef"),
            "vaultsync requests a fresh token for the service account; long-lived token Secrets are not used",
        );
        kubernetes["serviceAccountRef"] = reference;
        json!({ "kubernetes": kubernetes })
    } else if source.get(&format!("{a}.appRole")).is_some() {
        let r = format!("{a}.appRole");
        let mut app_role = json!({
            "roleId": source.str(&format!("{r}.roleId")).unwrap_or_default(),
            "secretRef": secret_ref(source, &format!("{r}.secretRef"), cluster),
        });
        if let Some(path) = source.str(&format!("{r}.path")) {
            app_role["mountPath"] = json!(path);
        }
        source.drop_field(migration, &format!("{r}.roleRef"), "vaultsync takes the role ID as text (roleId)");
        json!({ "appRole": app_role })
    } else if source.get(&format!("{a}.tokenSecretRef")).is_some() {
        json!({ "token": { "secretRef": secret_ref(source, &format!("{a}.tokenSecretRef"), cluster) } })
    } else {
        source.note(
            migration,
            &a,
            "only kubernetes, appRole and tokenSecretRef auth are converted; set a supported auth method",
        );
        json!({ "token": { "secretRef": { "name": format!("{PLACEHOLDER}token"), "key": "token" } } })
    };
    bao["auth"] = auth;
    json!({ "openbao": bao })
}

#[cfg(test)]
mod tests {
    use super::convert_go_template;

    #[test]
    fn simple_go_templates_become_minijinja() {
        assert_eq!(
            convert_go_template("postgres://{{ .user }}:{{.password}}@db"),
            ("postgres://{{ user }}:{{ password }}@db".into(), true)
        );
        let (text, simple) = convert_go_template("{{ .cert | b64dec }}");
        assert!(!simple);
        assert_eq!(text, "{{ cert | b64dec }}");
    }
}
