//! The bad-input corpus (`e2e/corpus/*.yaml`, see its README): every case is sent to the real apiserver and the
//! operator, and must get the outcome its file names: refused at admission with a message, or admitted and reported
//! with a reason on the Ready condition while every Secret of the namespace stays exactly as it was; Event Grid
//! deliveries get their status and cause no vault read. One test runs them all and lists every case that went
//! otherwise.

mod support;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde::Deserialize;
use serde_json::{Value, json};
use support::{Env, EventGrid};
use vaultsync_api::VaultSecret;
use vaultsync_e2e::{eventually, keyvault::Op};

#[derive(Deserialize)]
struct CorpusFile {
    kind: Option<String>,
    base: Option<Value>,
    cases: Vec<Case>,
}

#[derive(Deserialize, Clone)]
struct Case {
    name: String,
    patch: Option<Value>,
    spec: Option<Value>,
    refused: Option<String>,
    reason: Option<String>,
    message: Option<String>,
    // Event Grid
    key: Option<String>,
    body: Option<String>,
    status: Option<u16>,
}

fn corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/corpus")
}

fn load(file: &str) -> CorpusFile {
    let path = corpus_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Expands the corpus's shorthands: `@repeat:<text>:<n>` anywhere in a string (the text repeated), and whole-value
/// lists `@keys:<n>`, `@extracts:<n>`, `@conditions:<n>`, `@strings:<n>`.
fn expand(value: &Value) -> Value {
    match value {
        Value::String(s) => {
            if let Some((what, n)) = s.strip_prefix('@').and_then(|r| r.split_once(':'))
                && let Ok(n) = n.parse::<usize>()
            {
                {
                    match what {
                        "keys" => {
                            return Value::Array(
                                (0..n)
                                    .map(|i| json!({ "secretKey": format!("k{i}"), "remoteRef": { "name": "x" } }))
                                    .collect(),
                            );
                        }
                        "extracts" => {
                            return Value::Array(
                                (0..n).map(|i| json!({ "extract": { "name": format!("x{i}") } })).collect(),
                            );
                        }
                        "conditions" => {
                            return Value::Array((0..n).map(|i| json!({ "namespaces": [format!("n{i}")] })).collect());
                        }
                        "strings" => return Value::Array((0..n).map(|i| json!(format!("s{i}"))).collect()),
                        _ => {}
                    }
                }
            }
            Value::String(expand_text(s))
        }
        Value::Array(items) => Value::Array(items.iter().map(expand).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), expand(v))).collect()),
        other => other.clone(),
    }
}

fn expand_text(s: &str) -> String {
    let Some(at) = s.find("@repeat:") else { return s.to_string() };
    let rest = &s[at + "@repeat:".len()..];
    let Some((text, n)) = rest.rsplit_once(':') else { return s.to_string() };
    let Ok(n) = n.parse::<usize>() else { return s.to_string() };
    format!("{}{}", &s[..at], text.repeat(n))
}

/// RFC 7386 merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(target), Some(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn spec_of(file: &CorpusFile, case: &Case) -> Value {
    let spec = match (&case.spec, &case.patch) {
        (Some(spec), _) => spec.clone(),
        (None, Some(patch)) => {
            let mut base = file.base.clone().expect("a base spec");
            merge(&mut base, patch);
            base
        }
        (None, None) => file.base.clone().expect("a base spec"),
    };
    expand(&spec)
}

fn dynamic_api(env: &Env, kind: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("vaultsync.dev", "v1alpha1", kind));
    if kind == "ClusterVaultStore" {
        Api::all_with(env.ns.client.clone(), &resource)
    } else {
        Api::namespaced_with(env.ns.client.clone(), &env.ns.name, &resource)
    }
}

/// Every Secret of the namespace, by name, with its data.
async fn secrets(env: &Env) -> BTreeMap<String, Option<BTreeMap<String, ByteString>>> {
    let list = env.ns.api::<Secret>().list(&Default::default()).await.expect("listing Secrets");
    list.items.into_iter().map(|s| (s.metadata.name.unwrap_or_default(), s.data)).collect()
}

/// Runs the admission cases of `file`; returns (cases run, what went otherwise).
async fn admission(env: &Env, file: &str) -> (usize, Vec<String>) {
    let corpus = load(file);
    let kind = corpus.kind.clone().expect("the file names its kind");
    let api = dynamic_api(env, &kind);
    let mut wrong = Vec::new();
    for case in &corpus.cases {
        let expected = case.refused.as_deref().expect("an admission case names its refusal");
        let name = format!("{}-{}", env.ns.name, case.name);
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "vaultsync.dev/v1alpha1", "kind": kind,
            "metadata": { "name": name }, "spec": spec_of(&corpus, case),
        }))
        .expect("an object");
        match api.create(&PostParams::default(), &object).await {
            Err(kube::Error::Api(status)) if status.code == 422 && status.message.contains(expected) => {}
            Err(kube::Error::Api(status)) => wrong.push(format!(
                "{file} {}: refused with {} {:?}, expected {expected:?}",
                case.name, status.code, status.message
            )),
            Err(e) => wrong.push(format!("{file} {}: {e}", case.name)),
            Ok(_) => {
                wrong.push(format!("{file} {}: admitted, expected a refusal naming {expected:?}", case.name));
                let _ = api.delete(&name, &Default::default()).await;
            }
        }
    }
    (corpus.cases.len(), wrong)
}

/// The vault objects, stores and Secrets the condition cases refer to.
async fn condition_fixtures(env: &Env) {
    let vault = &env.vault;
    vault.set_secret("good", "corpus-good-value");
    vault.set_secret("config", r#"{"user":"app","url":"https://db"}"#);
    vault.set_secret("not-base64", "%%% not base64 %%%");
    let big = "x".repeat(600 * 1024);
    vault.set_secret("big-a", &big);
    vault.set_secret("big-b", &big);
    vault.set_secret("app-one", "corpus-app-one");
    vault.set_secret("app-two", "corpus-app-two");
    vault.set_secret("app-keys", r#"{"app-one":"corpus-collides"}"#);
    vault.set_secret("forbidden", "corpus-forbidden-value");
    vault.forbid("forbidden");

    let mut no_credentials = env.store_spec();
    no_credentials["provider"]["azureKeyVault"]["auth"] =
        json!({ "servicePrincipal": { "clientId": "app-x", "clientSecretRef": { "name": "missing", "key": "k" } } });
    env.apply_store("no-credentials", no_credentials).await;
    let closed = vaultsync_e2e::process::free_port().expect("a free port");
    let mut foreign = env.store_spec();
    foreign["provider"]["azureKeyVault"]["vaultUrl"] = json!(format!("https://localhost:{closed}"));
    env.apply_store("foreign", foreign).await;

    let secrets = env.ns.api::<Secret>();
    for (name, immutable) in [("users-secret", false), ("users-immutable", true)] {
        let secret = Secret {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            data: Some([("theirs".to_string(), ByteString(b"kept".to_vec()))].into()),
            immutable: immutable.then_some(true),
            ..Default::default()
        };
        secrets.create(&PostParams::default(), &secret).await.expect("a user's Secret");
    }
    let mut other = support::one_key("value", "good");
    other["target"] = json!({ "name": "owned-elsewhere" });
    env.apply_vault_secret("other", other).await;
    env.wait_reason("other", "Synced").await;
}

/// Waits until the VaultSecret reports on its current generation; returns (reason, message).
async fn reported(env: &Env, name: &str) -> (String, String) {
    let api = env.ns.api::<VaultSecret>();
    eventually(Duration::from_secs(40), &format!("{name} to report on its spec"), || {
        let api = api.clone();
        async move {
            let vs = api.get(name).await.ok()?;
            let status = vs.status?;
            (status.observed_generation == vs.metadata.generation).then_some(())?;
            let ready = status.conditions.into_iter().find(|c| c.type_ == "Ready")?;
            Some((ready.reason, ready.message))
        }
    })
    .await
}

/// Runs the condition cases on the synced VaultSecret `corpus`; returns (cases run, what went otherwise).
async fn conditions(env: &Env, file: &str) -> (usize, Vec<String>) {
    let corpus = load(file);
    let api = env.ns.api::<VaultSecret>();
    let base = corpus.base.clone().expect("a base spec");
    env.apply_vault_secret("corpus", base.clone()).await;
    env.wait_secret_value("corpus", "value", "corpus-good-value").await;
    env.wait_reason("corpus", "Synced").await;
    let before = secrets(env).await;
    let mut wrong = Vec::new();
    for case in &corpus.cases {
        let expected = case.reason.as_deref().expect("a condition case names its reason");
        let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret",
            "metadata": { "name": "corpus" }, "spec": spec_of(&corpus, case) });
        // The same field manager as every apply of this VaultSecret, so each case replaces the spec whole.
        if let Err(e) = api.patch("corpus", &PatchParams::apply("test").force(), &Patch::Apply(&body)).await {
            wrong.push(format!("{file} {}: not admitted: {e}", case.name));
            continue;
        }
        let (reason, message) = reported(env, "corpus").await;
        if reason != expected || case.message.as_ref().is_some_and(|m| !message.contains(m.as_str())) {
            wrong.push(format!(
                "{file} {}: {reason} {message:?}, expected {expected} {:?}",
                case.name,
                case.message.as_deref().unwrap_or("")
            ));
        }
        let after = secrets(env).await;
        if after != before {
            let changed: Vec<&String> =
                after.keys().chain(before.keys()).filter(|k| after.get(*k) != before.get(*k)).collect();
            wrong.push(format!("{file} {}: Secrets changed: {changed:?}", case.name));
        }
    }
    // Back to the valid spec: the Secret is still the one written first.
    env.apply_vault_secret("corpus", base).await;
    let (reason, _) = reported(env, "corpus").await;
    assert_eq!(reason, "Synced", "the VaultSecret recovers from the corpus");
    (corpus.cases.len(), wrong)
}

/// Sends the Event Grid deliveries; none may cause a vault read. Returns (cases run, what went otherwise).
async fn deliveries(env: &Env, grid: &EventGrid, file: &str) -> (usize, Vec<String>) {
    let corpus = load(file);
    let vault_url = env.vault.url();
    let event = |vault: &str, object: &str| {
        json!([{ "id": uuid(), "eventType": "Microsoft.KeyVault.SecretNewVersionCreated",
            "subject": object, "eventTime": "2026-12-01T00:00:00Z", "dataVersion": "1",
            "data": { "Id": format!("{vault}/secrets/{object}/0123456789abcdef0123456789abcdef"),
                "VaultName": "corpus", "ObjectType": "Secret", "ObjectName": object,
                "Version": "0123456789abcdef0123456789abcdef" } }])
        .to_string()
    };
    let reads_before = env.vault.calls(Op::GetSecret);
    let mut wrong = Vec::new();
    for case in &corpus.cases {
        let raw = case.body.clone().unwrap_or_default();
        let body = if let Some(n) = raw.strip_prefix("@events:") {
            let one: Value = serde_json::from_str(&event(&vault_url, "good")).expect("JSON");
            Value::Array(vec![one[0].clone(); n.parse().expect("a count")]).to_string()
        } else if let Some(rest) = raw.strip_prefix("@event:") {
            let (vault, object) = rest.rsplit_once(':').expect("@event:<vault>:<object>");
            event(&vault.replace("{vault}", &vault_url), object)
        } else {
            expand_text(&raw)
        };
        let wrong_key = format!("{}x", grid.key);
        let prefix = grid.key[..grid.key.len() / 2].to_string();
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        match case.key.as_deref() {
            Some("right") => headers.push(grid.key_header()),
            Some("wrong") => headers.push(("x-vaultsync-key", &wrong_key)),
            Some("prefix") => headers.push(("x-vaultsync-key", &prefix)),
            _ => {}
        }
        let answer = grid.request("POST", "/eventgrid", &headers, body.as_bytes()).await;
        let expected = case.status.expect("a delivery names its status");
        if answer.status != expected {
            wrong.push(format!("{file} {}: {} {:?}, expected {expected}", case.name, answer.status, answer.body));
        }
    }
    // The positive signal: one valid delivery is read once; so the refused ones above were processed and read nothing.
    let valid = grid.post_events(&serde_json::from_str(&event(&vault_url, "good")).expect("JSON")).await;
    assert_eq!(valid.status, 200, "{:?}", valid.body);
    let vault = &env.vault;
    eventually(Duration::from_secs(20), "the valid delivery's read", || async move {
        (vault.calls(Op::GetSecret) > reads_before).then_some(())
    })
    .await;
    let reads = env.vault.calls(Op::GetSecret) - reads_before;
    if reads != 1 {
        wrong.push(format!("{file}: {reads} vault reads for the deliveries, expected 1 (the valid one)"));
    }
    (corpus.cases.len(), wrong)
}

fn uuid() -> String {
    format!("{:032x}", rand_u128())
}

fn rand_u128() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

#[tokio::test]
async fn the_bad_input_corpus_gets_its_outcomes() {
    let (env, grid) = Env::start_with_event_grid("corpus").await;

    let mut total = 0;
    let mut wrong = Vec::new();
    for file in ["vaultsecret-admission.yaml", "vaultstore-admission.yaml", "clustervaultstore-admission.yaml"] {
        let (n, w) = admission(&env, file).await;
        total += n;
        wrong.extend(w);
    }
    condition_fixtures(&env).await;
    let (n, w) = conditions(&env, "vaultsecret-conditions.yaml").await;
    total += n;
    wrong.extend(w);
    let (n, w) = deliveries(&env, &grid, "eventgrid.yaml").await;
    total += n;
    wrong.extend(w);
    println!("bad-input corpus: {total} cases, {} went otherwise", wrong.len());
    assert!(total >= 100, "the corpus holds {total} cases");
    assert!(wrong.is_empty(), "{} of {total} cases went otherwise:\n{}", wrong.len(), wrong.join("\n"));
    env.remember_values(&["corpus-good-value", "corpus-app-one", "corpus-app-two", "corpus-collides"]);
    env.finish().await;
}

/// Found by the corpus: a spec change whose write the apiserver refuses (a Secret type whose required key the data
/// lacks; the operator itself refuses the TLS type without its keys, so the Docker config type stands in) was reported `SecretWriteFailed` once, and then `Synced` by the next attempt, which found the data
/// unchanged and wrote nothing, so the spec was never applied and nobody was told. Every later attempt must try the
/// write again and keep saying why it fails.
#[tokio::test]
async fn a_refused_spec_change_is_never_reported_synced() {
    let env = Env::start("corpus-spec").await;
    env.vault.set_secret("good", "corpus-spec-value");
    env.apply_vault_secret("typed", support::one_key("value", "good")).await;
    env.wait_secret_value("typed", "value", "corpus-spec-value").await;
    env.wait_reason("typed", "Synced").await;
    let mut spec = support::one_key("value", "good");
    spec["target"] = json!({ "type": "kubernetes.io/dockerconfigjson" });
    spec["refreshInterval"] = json!("10s"); // a failure is retried within 10 s
    env.apply_vault_secret("typed", spec).await;
    // The positive signals: the write was refused, and the operator tried again and was refused again.
    env.wait_metric_at_least(r#"vaultsync_syncs_total{result="error_SecretWriteFailed"}"#, 1).await;
    env.wait_metric_at_least(r#"vaultsync_syncs_total{result="error_SecretWriteFailed"}"#, 2).await;
    let vs = env.ns.api::<VaultSecret>().get("typed").await.expect("the VaultSecret");
    let ready = vs.status.expect("status").conditions.into_iter().find(|c| c.type_ == "Ready").expect("Ready");
    assert_eq!(ready.reason, "SecretWriteFailed", "{}", ready.message);
    let secret = env.secret("typed").await.expect("the Secret is still there");
    assert_eq!(secret.type_.as_deref(), Some("Opaque"), "the old Secret, never deleted");
    assert_eq!(secret.data.expect("data")["value"].0, b"corpus-spec-value");
    env.finish().await;
}
