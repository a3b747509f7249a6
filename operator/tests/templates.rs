//! `target.template`: data, labels, annotations and the Secret type made from a VaultSecret's own values (inline and
//! from a ConfigMap), the helpers users need (JSON, base64, htpasswd, dockerconfigjson), and every class of template
//! error reported as `TemplateError` with the template and key named, no value shown, and the Secret untouched.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::Env;
use vaultsync_api::VaultSecret;
use vaultsync_e2e::eventually;

fn spec(template: Value) -> Value {
    json!({ "storeRef": { "name": "kv" }, "data": [
        { "secretKey": "user", "remoteRef": { "name": "registry-user" } },
        { "secretKey": "password", "remoteRef": { "name": "registry-password" } },
        { "secretKey": "db", "remoteRef": { "name": "db-config" } },
    ], "target": { "template": template } })
}

#[tokio::test]
async fn templates_make_data_labels_annotations_and_type() {
    let env = Env::start("templates").await;
    env.vault.set_secret("registry-user", "robot");
    env.vault.set_secret("registry-password", "registry-token-value");
    env.vault.set_secret("db-config", r#"{"host":"db.internal","port":5432}"#);
    let config_map = ConfigMap {
        metadata: ObjectMeta { name: Some("app-templates".into()), ..Default::default() },
        data: Some(
            [("app.yaml".to_string(), "db: {{ (db | from_json).host }}:{{ (db | from_json).port }}\n".into())].into(),
        ),
        ..Default::default()
    };
    env.ns.api::<ConfigMap>().create(&PostParams::default(), &config_map).await.expect("ConfigMap");
    env.apply_vault_secret(
        "registry",
        spec(json!({
            "type": "kubernetes.io/dockerconfigjson",
            "data": {
                ".dockerconfigjson": "{{ dockerconfigjson('registry.example', user, password) }}",
                "auth": "{{ (user ~ ':' ~ password) | b64enc }}",
                "htpasswd": "{{ password | htpasswd(user, 5) }}",
            },
            "templateFrom": [{ "configMap": { "name": "app-templates", "key": "app.yaml" }, "secretKey": "app.yaml" }],
            "labels": { "registry": "{{ user }}" },
            "annotations": { "example.com/db-host": "{{ (db | from_json).host }}" },
        })),
    )
    .await;
    let vs = env.wait_reason("registry", "Synced").await;
    let secret = env.secret("registry").await.expect("the Secret");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"), "the apiserver accepted the type");
    let data = secret.data.clone().expect("data");
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, [".dockerconfigjson", "app.yaml", "auth", "htpasswd"], "mergePolicy Replace: templates only");
    let docker: Value = serde_json::from_slice(&data[".dockerconfigjson"].0).expect("JSON");
    assert_eq!(docker["auths"]["registry.example"]["password"], "registry-token-value");
    assert_eq!(data["app.yaml"].0, b"db: db.internal:5432\n");
    let (user, hash) = std::str::from_utf8(&data["htpasswd"].0).unwrap().split_once(':').unwrap();
    assert_eq!(user, "robot");
    assert!(bcrypt::verify("registry-token-value", hash).unwrap(), "htpasswd verifies");
    assert_eq!(secret.metadata.labels.as_ref().unwrap()["registry"], "robot");
    assert_eq!(secret.metadata.annotations.as_ref().unwrap()["example.com/db-host"], "db.internal");
    assert_eq!(vs.status.expect("status").versions["app.yaml"], "template");
    let auth = data["auth"].0.clone();
    env.remember_values(&[std::str::from_utf8(&auth).unwrap(), hash]);

    // A refresh with nothing changed renders the same bytes (bcrypt salts come from the value): no rewrite.
    let resource_version = secret.metadata.resource_version.clone();
    env.annotate("registry", "vaultsync.dev/force-sync", "1").await;
    let api = env.ns.api::<VaultSecret>();
    eventually(Duration::from_secs(20), "the forced refresh", || async {
        let vs = api.get("registry").await.ok()?;
        (vs.status?.force_sync.as_deref() == Some("1")).then_some(())
    })
    .await;
    let after = env.secret("registry").await.expect("the Secret");
    assert_eq!(after.metadata.resource_version, resource_version, "unchanged content is not written again");

    // mergePolicy Merge keeps the fetched keys beside the templated ones.
    env.apply_vault_secret(
        "merged",
        spec(json!({ "mergePolicy": "Merge", "data": { "url": "https://{{ user }}@registry.example" } })),
    )
    .await;
    env.wait_reason("merged", "Synced").await;
    let merged = env.secret("merged").await.expect("Secret").data.expect("data");
    assert_eq!(merged["url"].0, b"https://robot@registry.example");
    assert_eq!(merged["password"].0, b"registry-token-value");
    env.finish().await;
}

/// The notes of the `TemplateError` Events about VaultSecret `app`, and how many times they were recorded.
async fn template_error_events(env: &Env) -> (Vec<String>, i32) {
    use k8s_openapi::api::events::v1::Event;
    let events = env.ns.api::<Event>().list(&Default::default()).await.expect("listing Events");
    let ours: Vec<Event> = events
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("app"))
        .filter(|e| e.reason.as_deref() == Some("TemplateError"))
        .collect();
    let count = ours.iter().map(|e| e.series.as_ref().map_or(1, |s| s.count)).sum();
    (ours.into_iter().filter_map(|e| e.note).collect(), count)
}

#[tokio::test]
async fn every_template_error_names_template_and_key_and_keeps_the_secret() {
    let env = Env::start("templates-errors").await;
    env.vault.set_secret("registry-user", "robot");
    env.vault.set_secret("registry-password", "hunter2-registry");
    env.vault.set_secret("db-config", "not json hunter2-registry");
    env.apply_vault_secret("app", spec(json!({ "data": { "out": "{{ user }}" } }))).await;
    env.wait_reason("app", "Synced").await;
    let before = env.secret("app").await.expect("the Secret");

    let cases = [
        ("syntax", json!({ "data": { "out": "{{ user " } }), r#"target.template.data["out"]"#, "syntax error"),
        ("undefined", json!({ "data": { "out": "{{ missing }}" } }), r#"data["out"]"#, "undefined value"),
        ("filter", json!({ "data": { "out": "{{ user | nope }}" } }), r#"data["out"]"#, "unknown filter"),
        ("bad-input", json!({ "data": { "cfg": "{{ (db | from_json).host }}" } }), r#"data["cfg"]"#, "not JSON"),
        ("not-pem", json!({ "data": { "key": "{{ password | pem_key }}" } }), r#"data["key"]"#, "neither PEM"),
        (
            "fuel",
            json!({ "data": { "out": "{% for i in range(100000) %}{% for j in range(100) %}x{% endfor %}{% endfor %}" } }),
            r#"data["out"]"#,
            "too much work",
        ),
        ("label", json!({ "labels": { "user": "{{ user }} {{ user }}" } }), r#"labels["user"]"#, "invalid label value"),
        (
            "type",
            json!({ "type": "{{ user }} type", "data": { "a": "b" } }),
            "target.template.type",
            "invalid Secret type",
        ),
        (
            "configmap",
            json!({ "templateFrom": [{ "configMap": { "name": "absent", "key": "t" }, "secretKey": "out" }] }),
            "ConfigMap absent",
            "does not exist",
        ),
    ];
    for (index, (what, template, names, problem)) in cases.into_iter().enumerate() {
        env.apply_vault_secret("app", spec(template)).await;
        let api = env.ns.api::<VaultSecret>();
        let generation = api.get("app").await.expect("VaultSecret").metadata.generation;
        let message = eventually(Duration::from_secs(20), &format!("{what}: TemplateError"), || async {
            let vs = api.get("app").await.ok()?;
            let status = vs.status?;
            let ready = status.conditions.into_iter().find(|c| c.type_ == "Ready")?;
            (status.observed_generation == generation && ready.reason == "TemplateError").then_some(ready.message)
        })
        .await;
        assert!(message.contains(names) && message.contains(problem), "{what}: {message}");
        assert!(!message.contains("hunter2") && !message.contains("robot"), "{what}: no value in {message}");
        assert_eq!(env.secret("app").await.expect("kept").data, before.data, "{what}: the Secret is untouched");
        // The Event recorder makes repeats of a reason one Event with a series count: one more per failure.
        let (notes, count) = template_error_events(&env).await;
        assert!(count > index as i32, "{what}: an Event for each failure ({count})");
        if index == 0 {
            assert!(notes.iter().any(|n| n.contains(names) && n.contains(problem)), "{what}: {notes:?}");
        }
        assert!(notes.iter().all(|n| !n.contains("hunter2") && !n.contains("robot")), "no value in {notes:?}");
    }
    // A template may read only this VaultSecret's values: no environment, files or includes.
    env.apply_vault_secret("app", spec(json!({ "data": { "out": "{% include '/etc/passwd' %}" } }))).await;
    let api = env.ns.api::<VaultSecret>();
    eventually(Duration::from_secs(20), "an include to be refused", || async {
        let vs = api.get("app").await.ok()?;
        let ready = vs.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == "TemplateError" && ready.message.contains("template not found")).then_some(())
    })
    .await;

    // Fixing the template syncs again; the Secret changes only then.
    let fixed = spec(json!({ "data": { "out": "{{ user }}-fixed" } }));
    env.ns
        .api::<VaultSecret>()
        .patch(
            "app",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret", "spec": fixed })),
        )
        .await
        .expect("fixing");
    env.wait_secret_value("app", "out", "robot-fixed").await;
    env.finish().await;
}
