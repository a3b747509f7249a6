//! The Key Vault API test server, exercised over real HTTPS with certificate verification on.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use vaultsync_e2e::keyvault::{API_VERSIONS, KeyVaultError, KeyVaultServer, Op, PUBLIC_RESOURCE};
use vaultsync_e2e::tls::TestCa;

/// The Key Vault error a client call failed with.
fn vault_error<T: std::fmt::Debug>(result: anyhow::Result<T>) -> KeyVaultError {
    let error = result.expect_err("the call should have failed");
    error.downcast_ref::<KeyVaultError>().cloned().unwrap_or_else(|| panic!("not a Key Vault answer: {error:#}"))
}

fn is_version_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test]
async fn two_versions_read_back_by_version_and_latest() -> anyhow::Result<()> {
    let server = KeyVaultServer::start().await?;
    let client = server.client()?;
    let first = client.set("db-password", "one").await?;
    let second = client.set("db-password", "two").await?;

    let first_version = first.id.rsplit('/').next().unwrap_or_default();
    let second_version = second.id.rsplit('/').next().unwrap_or_default();
    assert!(is_version_id(first_version) && is_version_id(second_version), "{first:?} {second:?}");
    assert_ne!(first_version, second_version);
    assert_eq!(first.id, format!("{}/secrets/db-password/{first_version}", server.url()));

    assert_eq!(client.get("db-password", Some(first_version)).await?.value.as_deref(), Some("one"));
    assert_eq!(client.get("db-password", Some(second_version)).await?.value.as_deref(), Some("two"));
    let latest = client.get("db-password", None).await?;
    assert_eq!((latest.value.as_deref(), latest.id.as_str()), (Some("two"), second.id.as_str()));
    assert!(latest.attributes.enabled);
    assert_eq!(latest.attributes.recovery_level, "Recoverable+Purgeable");
    assert_eq!(latest.attributes.recoverable_days, 90);

    assert_eq!((server.calls(Op::SetSecret), server.calls(Op::GetSecret)), (2, 3));
    assert_eq!(server.total_calls(), 5);
    server.reset_counts();
    assert_eq!(server.total_calls(), 0);
    Ok(())
}

#[tokio::test]
async fn missing_token_gets_bearer_challenge_and_is_not_counted() -> anyhow::Result<()> {
    let server = KeyVaultServer::start().await?;
    server.set_secret("a", "v");
    let response = server.client()?.with_token(None).request(Method::GET, "/secrets/a").send().await?;

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = response.headers()["www-authenticate"].to_str()?.to_string();
    let port = server.addr().port();
    assert_eq!(
        challenge,
        format!(
            "Bearer authorization=\"https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000\", resource=\"https://localhost:{port}\""
        ),
        "the resource is the server's own origin by default"
    );
    let body: Value = response.json().await?;
    assert_eq!(body["error"]["code"], "Unauthorized");
    assert_eq!(server.total_calls(), 0);
    Ok(())
}

#[tokio::test]
async fn the_challenge_names_the_configured_tenant_and_resource() -> anyhow::Result<()> {
    let server = KeyVaultServer::builder()
        .vault_name("team")
        .authority("https://login.example", "tenant-9")
        .challenge_resource(PUBLIC_RESOURCE)
        .start()
        .await?;
    assert_eq!(server.url(), format!("https://team.localhost:{}", server.addr().port()));
    let challenge = |response: reqwest::Response| response.headers()["www-authenticate"].to_str().map(str::to_string);
    let client = server.client()?.with_token(None);
    let answer = challenge(client.request(Method::GET, "/secrets/a").send().await?)?;
    assert_eq!(answer, "Bearer authorization=\"https://login.example/tenant-9\", resource=\"https://vault.azure.net\"");

    server.set_authority("https://localhost:1/", "tenant-10");
    let answer = challenge(client.request(Method::GET, "/secrets/a").send().await?)?;
    assert_eq!(answer, "Bearer authorization=\"https://localhost:1/tenant-10\", resource=\"https://vault.azure.net\"");
    assert_eq!(answer, server.challenge());

    let named = KeyVaultServer::builder().vault_name("other").start().await?;
    let port = named.addr().port();
    assert_eq!(named.challenge_resource(), format!("https://localhost:{port}"), "the vault's host lies under it");
    Ok(())
}

#[tokio::test]
async fn missing_or_unknown_api_version_is_bad_parameter() -> anyhow::Result<()> {
    let server = KeyVaultServer::start().await?;
    server.set_secret("a", "v");
    let http = TestCa::shared().client()?;
    let get = |query: &str| http.get(format!("{}/secrets/a{query}", server.url())).bearer_auth("t").send();

    for query in ["", "?api-version=2015-06-01", "?api-version=7.7", "?api-version=2026-05-01"] {
        let response = get(query).await?;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "query {query:?}");
        let body: Value = response.json().await?;
        assert_eq!(body["error"]["code"], "BadParameter", "query {query:?}");
    }
    for version in API_VERSIONS {
        let response = get(&format!("?api-version={version}")).await?;
        assert_eq!(response.status(), StatusCode::OK, "api-version {version}");
    }
    Ok(())
}

#[tokio::test]
async fn versions_listing_pages_by_25_and_follows_next_link() -> anyhow::Result<()> {
    let server = KeyVaultServer::start().await?;
    let seeded: Vec<String> = (0..30).map(|i| server.set_secret("rotated", &format!("value-{i}"))).collect();
    let client = server.client()?;

    let first_page: Value = client.request(Method::GET, "/secrets/rotated/versions").send().await?.json().await?;
    assert_eq!(first_page["value"].as_array().map(Vec::len), Some(25));
    let next_link = first_page["nextLink"].as_str().unwrap_or_default();
    assert!(next_link.starts_with(&format!("{}/", server.url())), "{next_link}");
    assert!(next_link.contains("api-version=") && next_link.contains("$skiptoken="), "{next_link}");

    server.reset_counts();
    let items = client.versions("rotated").await?;
    assert_eq!(server.calls(Op::ListVersions), 2, "two pages");
    let mut listed: Vec<String> =
        items.iter().map(|i| i.id.rsplit('/').next().unwrap_or_default().to_string()).collect();
    let mut expected = seeded.clone();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
    assert!(items.iter().all(|i| i.id.starts_with(&format!("{}/secrets/rotated/", server.url()))));

    let missing = vault_error(client.versions("never-set").await);
    assert_eq!((missing.status, missing.code.as_str()), (404, "SecretNotFound"));
    Ok(())
}

#[tokio::test]
async fn secrets_listing_has_one_item_per_name_without_values() -> anyhow::Result<()> {
    let server = KeyVaultServer::start().await?;
    let tags = BTreeMap::from([("team".to_string(), "payments".to_string())]);
    server.set_secret_with("beta", "b", Some("text/plain"), tags.clone());
    server.set_secret("alpha", "a1");
    server.set_secret("alpha", "a2");
    let client = server.client()?;

    let items = client.list().await?;
    let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, [format!("{}/secrets/alpha", server.url()), format!("{}/secrets/beta", server.url())]);
    assert_eq!((items[1].content_type.as_deref(), items[1].tags.as_ref()), (Some("text/plain"), Some(&tags)));
    let raw = client.request(Method::GET, "/secrets").send().await?.text().await?;
    assert!(!raw.contains("a2") && !raw.contains("\"value\":\"b\""), "{raw}");
    Ok(())
}

#[tokio::test]
async fn injected_throttling_has_retry_after_and_is_counted() -> anyhow::Result<()> {
    let server = KeyVaultServer::start().await?;
    server.set_secret("a", "v");
    let client = server.client()?;
    server.fail_next(1, 429, Some(7));
    server.fail_next(1, 503, None);

    let throttled = client.request(Method::GET, "/secrets/a").send().await?;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.headers()["retry-after"], "7");
    let body: Value = throttled.json().await?;
    assert_eq!(body["error"]["code"], "Throttled");

    let unavailable = vault_error(client.get("a", None).await);
    assert_eq!((unavailable.status, unavailable.code.as_str()), (503, "ServiceUnavailable"));
    assert_eq!(client.get("a", None).await?.value.as_deref(), Some("v"));
    assert_eq!(server.calls(Op::GetSecret), 3, "faulted requests count too");
    Ok(())
}

#[tokio::test]
async fn forbidden_secret_gets_rbac_403() -> anyhow::Result<()> {
    let server = KeyVaultServer::start().await?;
    server.set_secret("locked", "v");
    server.set_secret("open", "v");
    server.forbid("locked");
    let client = server.client()?;

    let response = client.request(Method::GET, "/secrets/locked").send().await?;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await?;
    assert_eq!(body["error"]["code"], "Forbidden");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("ForbiddenByRbac"), "{body}");
    assert_eq!(client.get("open", None).await?.value.as_deref(), Some("v"));
    assert_eq!(server.calls(Op::GetSecret), 2);
    assert_eq!(client.set("locked", "rotated").await?.value.as_deref(), Some("rotated"), "only reads are denied");
    Ok(())
}

#[tokio::test]
async fn disabled_versions_cannot_be_read() -> anyhow::Result<()> {
    let server = KeyVaultServer::start().await?;
    let old = server.set_secret("s", "old");
    let current = server.set_secret("s", "current");
    let client = server.client()?;

    server.disable_version("s", &old);
    let error = vault_error(client.get("s", Some(&old)).await);
    assert_eq!((error.status, error.code.as_str()), (403, "Forbidden"));
    assert_eq!(error.message, "Operation get is not allowed on a disabled secret.");
    assert_eq!(client.get("s", None).await?.value.as_deref(), Some("current"));

    // Azure does not fall back to an older version when the current one is disabled.
    server.disable_version("s", &current);
    assert_eq!(vault_error(client.get("s", None).await).status, 403);
    let versions = client.versions("s").await?;
    assert!(versions.iter().all(|v| !v.attributes.enabled), "{versions:?}");

    let reenabled = client
        .request(Method::PATCH, &format!("/secrets/s/{current}"))
        .json(&serde_json::json!({"attributes": {"enabled": true}}))
        .send()
        .await?;
    assert_eq!(reenabled.status(), StatusCode::OK);
    let body: Value = reenabled.json().await?;
    assert!(body.get("value").is_none(), "an update answer carries no value");
    assert_eq!(client.get("s", None).await?.value.as_deref(), Some("current"));

    let created_disabled = client
        .request(Method::PUT, "/secrets/s")
        .json(&serde_json::json!({"value": "staged", "attributes": {"enabled": false}}))
        .send()
        .await?;
    assert_eq!(created_disabled.status(), StatusCode::OK);
    let body: Value = created_disabled.json().await?;
    assert_eq!((&body["value"], &body["attributes"]["enabled"]), (&Value::from("staged"), &Value::from(false)));
    assert_eq!(vault_error(client.get("s", None).await).status, 403);
    Ok(())
}

#[tokio::test]
async fn invalid_names_are_bad_parameter() -> anyhow::Result<()> {
    let server = KeyVaultServer::start().await?;
    let client = server.client()?;
    for name in ["under_score", "dot.ted", &"x".repeat(128)] {
        let error = vault_error(client.set(name, "v").await);
        assert_eq!((error.status, error.code.as_str()), (400, "BadParameter"), "name {name:?}");
    }
    let longest = "x".repeat(127);
    assert_eq!(client.set(&longest, "v").await?.value.as_deref(), Some("v"));
    let missing = vault_error(client.get("Never-Set", None).await);
    assert_eq!((missing.status, missing.code.as_str()), (404, "SecretNotFound"));
    assert!(missing.message.contains("Never-Set"), "{}", missing.message);
    Ok(())
}

#[tokio::test]
async fn required_bearer_token_is_enforced() -> anyhow::Result<()> {
    let server = KeyVaultServer::start().await?;
    server.set_secret("a", "v");
    server.require_bearer(Some("the-right-token".to_string()));

    let wrong = vault_error(server.client()?.get("a", None).await);
    assert_eq!((wrong.status, wrong.code.as_str()), (401, "Unauthorized"));
    let right = server.client()?.with_token(Some("the-right-token"));
    assert_eq!(right.get("a", None).await?.value.as_deref(), Some("v"));
    assert_eq!(server.calls(Op::GetSecret), 1, "rejected requests are not counted");

    server.require_bearer(None);
    assert_eq!(server.client()?.get("a", None).await?.value.as_deref(), Some("v"));
    Ok(())
}

#[tokio::test]
async fn deleted_secret_is_gone_and_names_are_case_insensitive() -> anyhow::Result<()> {
    let server = KeyVaultServer::start().await?;
    server.set_secret("Api-Key", "k");
    let client = server.client()?;
    assert_eq!(client.get("api-key", None).await?.value.as_deref(), Some("k"));

    let deleted: Value = client.request(Method::DELETE, "/secrets/api-key").send().await?.json().await?;
    assert_eq!(deleted["recoveryId"], format!("{}/deletedsecrets/Api-Key", server.url()));
    assert!(deleted["scheduledPurgeDate"].as_i64() > deleted["deletedDate"].as_i64());
    assert!(deleted.get("value").is_none());
    assert_eq!(vault_error(client.get("Api-Key", None).await).status, 404);
    assert_eq!(server.calls(Op::DeleteSecret), 1);
    Ok(())
}

#[tokio::test]
async fn deleted_secrets_are_listed_recovered_and_purged() -> anyhow::Result<()> {
    let server = KeyVaultServer::start().await?;
    server.set_secret("kept", "v");
    server.set_secret("gone", "one");
    let client = server.client()?;
    client.call(Method::DELETE, "/secrets/gone", None).await?;

    let listed: Vec<Value> = client.all_pages("/deletedsecrets").await?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], format!("{}/secrets/gone", server.url()));
    assert_eq!(listed[0]["recoveryId"], format!("{}/deletedsecrets/gone", server.url()));
    assert!(listed[0]["attributes"]["created"].is_i64() && listed[0].get("value").is_none());
    let deleted = client.call(Method::GET, "/deletedsecrets/gone", None).await?;
    assert!(deleted["id"].as_str().is_some_and(|id| id.starts_with(&format!("{}/secrets/gone/", server.url()))));
    assert!(deleted["scheduledPurgeDate"].as_i64() > deleted["deletedDate"].as_i64());

    let reused = vault_error(client.set("gone", "two").await);
    assert_eq!((reused.status, reused.code.as_str()), (409, "Conflict"), "{}", reused.message);
    let missing = vault_error(client.call(Method::GET, "/deletedsecrets/kept", None).await);
    assert_eq!((missing.status, missing.code.as_str()), (404, "SecretNotFound"));

    let recovered = client.call(Method::POST, "/deletedsecrets/gone/recover", None).await?;
    assert!(recovered.get("value").is_none() && recovered["attributes"]["enabled"] == true, "{recovered}");
    assert_eq!(client.get("gone", None).await?.value.as_deref(), Some("one"));

    client.call(Method::DELETE, "/secrets/gone", None).await?;
    let purge = client.request(Method::DELETE, "/deletedsecrets/gone").send().await?;
    assert_eq!(purge.status(), StatusCode::NO_CONTENT);
    assert_eq!(vault_error(client.call(Method::GET, "/deletedsecrets/gone", None).await).status, 404);
    assert_eq!(client.set("gone", "new life").await?.value.as_deref(), Some("new life"), "a purged name is free");
    assert_eq!(
        (
            server.calls(Op::ListDeletedSecrets),
            server.calls(Op::RecoverDeletedSecret),
            server.calls(Op::PurgeDeletedSecret)
        ),
        (1, 1, 1)
    );
    Ok(())
}

#[tokio::test]
async fn unknown_operations_are_not_found_and_not_counted() -> anyhow::Result<()> {
    let server = KeyVaultServer::start().await?;
    let client = server.client()?;
    for (method, path) in [(Method::GET, "/storage"), (Method::PUT, "/secrets"), (Method::POST, "/keys/k/sign-nothing")]
    {
        let error = vault_error(client.call(method.clone(), path, None).await);
        assert_eq!((error.status, error.code.as_str()), (404, "NotFound"), "{method} {path}");
    }
    assert_eq!(server.total_calls(), 0);
    Ok(())
}

#[tokio::test]
async fn keys_and_certificates_share_names_and_versions_with_their_secret() -> anyhow::Result<()> {
    let server = KeyVaultServer::start().await?;
    let client = server.client()?;
    let policy = serde_json::json!({ "policy": {
        "issuer": { "name": "Self" },
        "x509_props": { "subject": "CN=svc.example", "sans": { "dns_names": ["svc.example"] }, "validity_months": 3 },
        "key_props": { "kty": "EC", "crv": "P-256" },
        "secret_props": { "contentType": "application/x-pem-file" },
    }});
    let pending = client.request(Method::POST, "/certificates/svc/create").json(&policy).send().await?;
    assert_eq!(pending.status(), StatusCode::ACCEPTED);
    let operation: Value = pending.json().await?;
    assert_eq!(operation["status"], "inProgress");
    assert_eq!(client.call(Method::GET, "/certificates/svc/pending", None).await?["status"], "completed");

    let certificate = client.call(Method::GET, "/certificates/svc", None).await?;
    let version = certificate["id"].as_str().and_then(|id| id.rsplit('/').next()).unwrap_or_default().to_string();
    assert_eq!(certificate["kid"], format!("{}/keys/svc/{version}", server.url()));
    assert_eq!(certificate["sid"], format!("{}/secrets/svc/{version}", server.url()));
    assert_eq!(certificate["policy"]["issuer"]["name"], "Self");
    let secret = client.get("svc", Some(&version)).await?;
    assert_eq!((secret.managed, secret.content_type.as_deref()), (Some(true), Some("application/x-pem-file")));
    assert_eq!(secret.kid.as_deref(), certificate["kid"].as_str());
    let pem = secret.value.unwrap_or_default();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----") && pem.contains("-----BEGIN CERTIFICATE-----"));
    let key = client.call(Method::GET, "/keys/svc", None).await?;
    assert_eq!(
        (&key["key"]["kty"], &key["key"]["crv"], &key["managed"]),
        (&Value::from("EC"), &Value::from("P-256"), &Value::from(true))
    );

    let listed: Vec<Value> = client.all_pages("/certificates").await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["x5t"], certificate["x5t"]);
    let missing = vault_error(client.call(Method::GET, "/certificates/nope", None).await);
    assert_eq!((missing.status, missing.code.as_str()), (404, "CertificateNotFound"));
    let missing = vault_error(client.call(Method::GET, "/keys/nope", None).await);
    assert_eq!((missing.status, missing.code.as_str()), (404, "KeyNotFound"));
    let refused =
        client.request(Method::POST, "/keys/bad/create").json(&serde_json::json!({ "kty": "oct" })).send().await?;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!((server.calls(Op::CreateCertificate), server.calls(Op::GetCertificateOperation)), (1, 1));
    Ok(())
}
