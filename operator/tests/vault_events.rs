//! Azure Event Grid deliveries to the operator's endpoint, against a real apiserver and the Key Vault test
//! server: the validation and CloudEvents handshakes, instant refreshes from both schemas (one backend read per
//! object, however many VaultSecrets read it), the shared key, and bad deliveries.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Env, EventGrid, metric_sum, one_key};
use vaultsync_e2e::keyvault::Op;

async fn start(prefix: &str) -> (Env, EventGrid) {
    Env::start_with_event_grid(prefix).await
}

/// A VaultSecret reading `object` into key `value`, refreshed hourly: only an event refreshes it soon.
fn hourly(object: &str) -> Value {
    let mut spec = one_key("value", object);
    spec["refreshInterval"] = json!("1h");
    spec
}

/// A Key Vault event's `data`, as Key Vault sends it.
fn key_vault_data(vault_url: &str, collection: &str, object_type: &str, object: &str, version: &str) -> Value {
    json!({ "Id": format!("{vault_url}/{collection}/{object}/{version}"), "VaultName": "testvault",
        "ObjectType": object_type, "ObjectName": object, "Version": version, "NBF": null, "EXP": null })
}

/// A Key Vault event in the Event Grid schema.
fn grid_event(event_type: &str, data: Value) -> Value {
    json!({ "id": format!("evt-{}", data["ObjectName"].as_str().unwrap_or("x")),
        "topic": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/testvault",
        "subject": data["ObjectName"], "eventType": event_type, "data": data,
        "dataVersion": "1", "metadataVersion": "1", "eventTime": "2026-01-01T00:00:00Z" })
}

/// A SecretNewVersionCreated event in the Event Grid schema.
fn new_secret_version(vault_url: &str, object: &str, version: &str) -> Value {
    grid_event(
        "Microsoft.KeyVault.SecretNewVersionCreated",
        key_vault_data(vault_url, "secrets", "Secret", object, version),
    )
}

/// A Key Vault event as a CloudEvent (structured mode).
fn cloud_event(event_type: &str, data: Value) -> Value {
    json!({ "specversion": "1.0", "id": format!("ce-{}", data["ObjectName"].as_str().unwrap_or("x")),
        "source": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/testvault",
        "subject": data["ObjectName"], "type": event_type, "time": "2026-01-01T00:00:00Z", "data": data })
}

/// The value of the `vaultsync_vault_events_total` sample with these labels.
async fn events_metric(env: &Env, event_type: &str, result: &str) -> u64 {
    let line = format!(r#"vaultsync_vault_events_total{{type="{event_type}",result="{result}"}}"#);
    metric_sum(env.metrics_port, &line).await
}

const SECRET_NEW_VERSION: &str = "Microsoft.KeyVault.SecretNewVersionCreated";

#[tokio::test]
async fn subscription_validation_is_answered_with_the_code() {
    let (env, grid) = start("events-validate").await;
    let code = "512d38b6-c7b8-40c8-89fe-f46f9e9622b6";
    let validation = json!([{ "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
        "topic": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/testvault",
        "subject": "", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": "2026-01-01T00:00:00Z", "metadataVersion": "1", "dataVersion": "2",
        "data": { "validationCode": code,
            "validationUrl": "https://rp-eastus2.eventgrid.azure.net/eventsubscriptions/x/validate?id=y&t=z" } }]);
    let answer = grid.post_events(&validation).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json(), json!({ "validationResponse": code }));

    // The same with the key in the webhook URL, as Event Grid endpoints are often configured.
    let target = format!("/eventgrid?key={}", grid.key);
    let answer =
        grid.request("POST", &target, &[("content-type", "application/json")], validation.to_string().as_bytes()).await;
    assert_eq!((answer.status, answer.json()), (200, json!({ "validationResponse": code })));

    // Without its code the handshake cannot be answered.
    let mut no_code = validation.clone();
    no_code[0]["data"] = json!({});
    assert_eq!(grid.post_events(&no_code).await.status, 400);
    assert_eq!(events_metric(&env, "Microsoft.EventGrid.SubscriptionValidationEvent", "validated").await, 2);
    assert_eq!(events_metric(&env, "Microsoft.EventGrid.SubscriptionValidationEvent", "rejected").await, 1);
    assert_eq!(env.vault.calls(Op::GetSecret), 0, "a handshake reads nothing");
    env.remember_values(&[&grid.key]);
    env.finish().await;
}

#[tokio::test]
async fn a_new_version_event_refreshes_every_reader_at_once_with_one_read() {
    let (env, grid) = start("events-refresh").await;
    env.vault.set_secret("db-password", "first-value");
    for name in ["app-a", "app-b", "app-c"] {
        env.apply_vault_secret(name, hourly("db-password")).await;
    }
    for name in ["app-a", "app-b", "app-c"] {
        env.wait_secret_value(name, "value", "first-value").await;
        env.wait_reason(name, "Synced").await;
    }
    let reads = env.vault.calls(Op::GetSecret);

    let v2 = env.vault.set_secret("db-password", "second-value");
    let event = new_secret_version(&env.vault.url(), "db-password", &v2);
    let started = Instant::now();
    // Event Grid may deliver one event twice in a batch: still one refresh.
    let answer = grid.post_events(&json!([event.clone(), event])).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json(), json!({ "received": 2, "refreshed": 2, "ignored": 0, "rejected": 0 }));
    for name in ["app-a", "app-b", "app-c"] {
        env.wait_secret_value(name, "value", "second-value").await;
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the refresh took {took:?} (the refreshInterval is 1h)");
    // Every reader finished its refresh (its status records the new version) before the reads are counted.
    let api = env.ns.api::<vaultsync_api::VaultSecret>();
    for name in ["app-a", "app-b", "app-c"] {
        let api = api.clone();
        let v2 = v2.clone();
        vaultsync_e2e::eventually(Duration::from_secs(10), &format!("{name} to record the new version"), || {
            let (api, v2) = (api.clone(), v2.clone());
            async move { (api.get(name).await.ok()?.status?.versions.get("value") == Some(&v2)).then_some(()) }
        })
        .await;
    }
    assert_eq!(env.vault.calls(Op::GetSecret), reads + 1, "three readers, one delivery: exactly one backend read");
    assert_eq!(events_metric(&env, SECRET_NEW_VERSION, "refreshed").await, 2);
    env.remember_values(&[&grid.key, "first-value", "second-value"]);
    env.finish().await;
}

#[tokio::test]
async fn cloud_events_refresh_too() {
    let (env, grid) = start("events-cloud").await;
    env.vault.set_secret("api-key", "api-one");
    env.vault.set_secret("tls-cert", "cert-one");
    env.apply_vault_secret("api", hourly("api-key")).await;
    env.apply_vault_secret("tls", hourly("tls-cert")).await;
    env.wait_secret_value("api", "value", "api-one").await;
    env.wait_secret_value("tls", "value", "cert-one").await;
    env.wait_reason("api", "Synced").await;
    env.wait_reason("tls", "Synced").await;
    let reads = env.vault.calls(Op::GetSecret);

    // One structured CloudEvent.
    let v2 = env.vault.set_secret("api-key", "api-two");
    let event = cloud_event(SECRET_NEW_VERSION, key_vault_data(&env.vault.url(), "secrets", "Secret", "api-key", &v2));
    let headers = [grid.key_header(), ("content-type", "application/cloudevents+json; charset=utf-8")];
    let answer = grid.request("POST", "/eventgrid", &headers, event.to_string().as_bytes()).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    env.wait_secret_value("api", "value", "api-two").await;
    assert_eq!(env.vault.calls(Op::GetSecret), reads + 1);
    assert_eq!(env.secret("tls").await.expect("tls").data.expect("data")["value"].0, b"cert-one", "tls untouched");

    // A batch: a certificate's new version (its secret has the certificate's name) and an expiry notice.
    let v2 = env.vault.set_secret("tls-cert", "cert-two");
    let url = env.vault.url();
    let batch = json!([
        cloud_event(
            "Microsoft.KeyVault.CertificateNewVersionCreated",
            key_vault_data(&url, "certificates", "Certificate", "tls-cert", &v2)
        ),
        cloud_event("Microsoft.KeyVault.SecretNearExpiry", key_vault_data(&url, "secrets", "Secret", "api-key", &v2)),
    ]);
    let headers = [grid.key_header(), ("content-type", "application/cloudevents-batch+json; charset=utf-8")];
    let answer = grid.request("POST", "/eventgrid", &headers, batch.to_string().as_bytes()).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json(), json!({ "received": 2, "refreshed": 1, "ignored": 1, "rejected": 0 }));
    env.wait_secret_value("tls", "value", "cert-two").await;
    assert_eq!(env.vault.calls(Op::GetSecret), reads + 2, "the expiry notice read nothing");
    assert_eq!(events_metric(&env, "Microsoft.KeyVault.CertificateNewVersionCreated", "refreshed").await, 1);
    assert_eq!(events_metric(&env, "Microsoft.KeyVault.SecretNearExpiry", "ignored").await, 1);
    env.finish().await;
}

#[tokio::test]
async fn deliveries_without_the_key_are_refused_and_change_nothing() {
    let (env, grid) = start("events-auth").await;
    env.vault.set_secret("db-password", "old-value");
    env.apply_vault_secret("app", hourly("db-password")).await;
    env.wait_secret_value("app", "value", "old-value").await;
    env.wait_reason("app", "Synced").await;
    let reads = env.vault.calls(Op::GetSecret);

    let v2 = env.vault.set_secret("db-password", "new-value");
    let body = json!([new_secret_version(&env.vault.url(), "db-password", &v2)]).to_string();
    let json = ("content-type", "application/json");
    let wrong = format!("{}x", grid.key);
    let refused = [
        ("/eventgrid".to_owned(), vec![json]),
        ("/eventgrid".to_owned(), vec![json, ("x-vaultsync-key", wrong.as_str())]),
        ("/eventgrid".to_owned(), vec![json, ("x-vaultsync-key", "")]),
        ("/eventgrid".to_owned(), vec![json, ("authorization", grid.key.as_str())]),
        (format!("/eventgrid?key={wrong}"), vec![json]),
        (format!("/eventgrid?code={}", grid.key), vec![json]),
    ];
    for (target, headers) in &refused {
        let answer = grid.request("POST", target, headers, body.as_bytes()).await;
        assert_eq!(answer.status, 401, "{target} {headers:?}: {answer:?}");
        assert_eq!(answer.body, "", "a 401 says nothing more");
    }
    let handshake =
        grid.request("OPTIONS", "/eventgrid", &[("webhook-request-origin", "eventgrid.azure.net")], b"").await;
    assert_eq!(handshake.status, 401, "the handshake needs the key too");
    assert_eq!(handshake.header("webhook-allowed-origin"), None);

    assert_eq!(env.secret("app").await.expect("app").data.expect("data")["value"].0, b"old-value");
    assert_eq!(events_metric(&env, "none", "unauthorized").await, refused.len() as u64 + 1);

    // The same delivery with the key (in the query, as in an Event Grid webhook URL) refreshes at once.
    let answer = grid.request("POST", &format!("/eventgrid?key={}", grid.key), &[json], body.as_bytes()).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    env.wait_secret_value("app", "value", "new-value").await;
    // The accepted delivery was handled after the refused ones: one read in all means none of them read.
    assert_eq!(env.vault.calls(Op::GetSecret), reads + 1, "no refused delivery read the vault");
    env.remember_values(&[&grid.key]);
    env.finish().await;
}

#[tokio::test]
async fn bad_deliveries_are_refused_and_unread_objects_cost_nothing() {
    let (env, grid) = start("events-bad").await;
    env.vault.set_secret("db-password", "the-value");
    env.vault.set_secret("unread-object", "nobody-reads-this");
    env.apply_vault_secret("app", hourly("db-password")).await;
    env.wait_secret_value("app", "value", "the-value").await;
    env.wait_reason("app", "Synced").await;
    let reads = env.vault.calls(Op::GetSecret);
    let url = env.vault.url();

    // Not JSON, not events, or nothing in it.
    for body in ["{not json", "\"text\"", "[]", "[1, 2]", "[{\"id\": \"no type\"}]"] {
        let headers = [grid.key_header(), ("content-type", "application/json")];
        let answer = grid.request("POST", "/eventgrid", &headers, body.as_bytes()).await;
        assert_eq!(answer.status, 400, "{body}: {answer:?}");
    }
    // Over 1 MiB, and over 100 events (well under 1 MiB).
    let oversize = format!("[{}]", " ".repeat(1024 * 1024));
    let answer = grid.request("POST", "/eventgrid", &[grid.key_header()], oversize.as_bytes()).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    let many = Value::Array(vec![new_secret_version(&url, "db-password", "v"); 101]);
    assert!(many.to_string().len() < 1024 * 1024);
    assert_eq!(grid.post_events(&many).await.status, 413);
    // Unknown types, and a Key Vault event without the fields it needs.
    let unknown = json!([{ "id": "1", "eventType": "Microsoft.Storage.BlobCreated", "subject": "x", "data": {} }]);
    let answer = grid.post_events(&unknown).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["reasons"], json!(["unknown event type"]));
    let mut no_id = new_secret_version(&url, "db-password", "v");
    no_id["data"].as_object_mut().expect("data").remove("Id");
    assert_eq!(grid.post_events(&json!([no_id])).await.status, 400);
    let mut bad_id = new_secret_version(&url, "db-password", "v");
    bad_id["data"]["Id"] = json!("db-password");
    assert_eq!(grid.post_events(&json!([bad_id])).await.status, 400);
    // A CloudEvents content type with the wrong shape.
    let headers = [grid.key_header(), ("content-type", "application/cloudevents+json")];
    assert_eq!(grid.request("POST", "/eventgrid", &headers, b"[]").await.status, 400);

    // Objects no VaultSecret reads: this vault's, and the same name in another vault. Accepted, nothing read.
    let unread = json!([
        new_secret_version(&url, "unread-object", "v2"),
        new_secret_version("https://othervault.vault.azure.net", "db-password", "v2"),
    ]);
    let answer = grid.post_events(&unread).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json(), json!({ "received": 2, "refreshed": 0, "ignored": 2, "rejected": 0 }));

    // A batch with one usable event among bad ones: 200, the usable one counts.
    let mixed = json!([unknown[0], new_secret_version(&url, "unread-object", "v3")]);
    let answer = grid.post_events(&mixed).await;
    assert_eq!((answer.status, answer.json()["rejected"].clone()), (200, json!(1)), "{answer:?}");

    assert_eq!(events_metric(&env, SECRET_NEW_VERSION, "ignored").await, 3);
    assert_eq!(events_metric(&env, SECRET_NEW_VERSION, "rejected").await, 2);
    // `[1, 2]` (2), an event without a type, the unknown type, and the unknown type of the mixed batch.
    assert_eq!(events_metric(&env, "other", "rejected").await, 5);
    // Deliveries refused before their events were read: 3 not JSON or empty, 2 too large, 1 of the wrong shape.
    assert_eq!(events_metric(&env, "none", "rejected").await, 6);

    // The endpoint still serves: a good event for the object read refreshes it.
    let v2 = env.vault.set_secret("db-password", "the-new-value");
    assert_eq!(grid.post_events(&json!([new_secret_version(&url, "db-password", &v2)])).await.status, 200);
    env.wait_secret_value("app", "value", "the-new-value").await;
    // Handled after every bad and unread delivery: one read in all means none of them read.
    assert_eq!(env.vault.calls(Op::GetSecret), reads + 1, "no bad or unread delivery read the vault");
    env.finish().await;
}

#[tokio::test]
async fn the_cloud_events_handshake_allows_the_origin() {
    let (env, grid) = start("events-options").await;
    let origin = ("webhook-request-origin", "eventgrid.azure.net");
    let answer = grid.request("OPTIONS", "/eventgrid", &[grid.key_header(), origin], b"").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("webhook-allowed-origin"), Some("eventgrid.azure.net"));
    assert_eq!(answer.header("webhook-allowed-rate"), Some("120"));

    let answer = grid.request("OPTIONS", &format!("/eventgrid?key={}", grid.key), &[origin], b"").await;
    assert_eq!((answer.status, answer.header("webhook-allowed-origin")), (200, Some("eventgrid.azure.net")));
    let answer = grid.request("OPTIONS", "/eventgrid", &[grid.key_header()], b"").await;
    assert_eq!(answer.status, 400, "no origin to allow");
    assert_eq!(grid.request("GET", "/eventgrid", &[grid.key_header()], b"").await.status, 405);

    // Turned on without a key file, the operator refuses to start, and says why.
    let mut args = env.operator_args();
    args.event_grid_addr = Some("127.0.0.1:0".parse().expect("an address"));
    let error = vaultsync_operator::run_with_client(env.ns.client.clone(), args).await.expect_err("no key file");
    assert!(error.to_string().contains("--event-grid-key-file"), "{error:#}");
    env.finish().await;
}
