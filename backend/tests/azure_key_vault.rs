//! The Azure Key Vault client against the Key Vault test server over verified HTTPS: versions,
//! errors, retries, the token challenge, and reads shared through the cache (counted).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use vaultsync_backend::{
    Backend, Error, ObjectKind, ObjectRef, Principal,
    azure::{AzureEndpoint, AzureKeyVault, RetryPolicy, http_client},
    budget::RequestBudget,
    cache::ReadCache,
    token::StaticToken,
};
use vaultsync_e2e::keyvault::{KeyVaultServer, Op};

fn endpoint(vault: &KeyVaultServer) -> AzureEndpoint {
    let http = http_client(Some(vault.ca_pem())).expect("http client");
    let fast = RetryPolicy { base_backoff: Duration::from_millis(10), ..RetryPolicy::default() };
    AzureEndpoint::new(http, &vault.url(), "7.6").expect("endpoint").with_retry(fast)
}

fn principal(name: &str) -> Principal {
    Principal::StaticToken { fingerprint: name.into() }
}

fn reader(endpoint: AzureEndpoint, token: &str) -> AzureKeyVault {
    AzureKeyVault::new(Arc::new(endpoint), Arc::new(StaticToken(token.into())), principal("test"))
}

fn client(vault: &KeyVaultServer, token: &str) -> AzureKeyVault {
    reader(endpoint(vault), token)
}

#[tokio::test]
async fn reads_the_latest_and_a_pinned_version() {
    let vault = KeyVaultServer::start().await.expect("vault");
    let v1 = vault.set_secret("db-password", "one");
    let v2 = vault.set_secret("db-password", "two");
    let kv = client(&vault, "token");

    let latest = kv.get(&ObjectRef::latest("db-password")).await.expect("latest");
    assert_eq!(latest.value.expose(), b"two");
    assert_eq!(latest.version, v2);
    let pinned = kv.get(&ObjectRef::secret("db-password", Some(v1.clone()))).await.expect("pinned");
    assert_eq!(pinned.value.expose(), b"one");
    assert_eq!(pinned.version, v1);
    assert_eq!(vault.calls(Op::GetSecret), 2);
    assert!(!format!("{latest:?}").contains("two"), "Debug output must not show the value");
}

#[tokio::test]
async fn missing_and_forbidden_objects_are_reported_without_retries() {
    let vault = KeyVaultServer::start().await.expect("vault");
    vault.set_secret("tenant-b-key", "b");
    vault.forbid("tenant-b-key");
    let kv = client(&vault, "token");

    let missing = kv.get(&ObjectRef::latest("nope")).await.expect_err("missing");
    assert_eq!(missing, Error::NotFound { object: "nope".into() });
    assert_eq!(missing.reason(), "NotFound");
    let forbidden = kv.get(&ObjectRef::latest("tenant-b-key")).await.expect_err("forbidden");
    assert!(matches!(forbidden, Error::Forbidden { .. }), "{forbidden:?}");
    assert_eq!(vault.calls(Op::GetSecret), 2, "one call each, no retries");
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_with_backoff() {
    let vault = KeyVaultServer::start().await.expect("vault");
    vault.set_secret("api-key", "k");
    let kv = client(&vault, "token");

    vault.fail_next(1, 429, Some(1));
    let started = std::time::Instant::now();
    kv.get(&ObjectRef::latest("api-key")).await.expect("read after one 429");
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was honoured");
    assert_eq!(vault.calls(Op::GetSecret), 2);

    vault.reset_counts();
    vault.fail_next(2, 500, None);
    kv.get(&ObjectRef::latest("api-key")).await.expect("read after two 500s");
    assert_eq!(vault.calls(Op::GetSecret), 3);

    vault.reset_counts();
    vault.fail_next(4, 503, None);
    let error = kv.get(&ObjectRef::latest("api-key")).await.expect_err("still unavailable");
    assert_eq!(error.reason(), "BackendUnavailable");
    assert_eq!(vault.calls(Op::GetSecret), 4, "gives up after max_attempts");

    vault.reset_counts();
    vault.fail_next(1, 429, Some(3600));
    let error = kv.get(&ObjectRef::latest("api-key")).await.expect_err("long Retry-After");
    assert_eq!(error, Error::Throttled { retry_after: Some(Duration::from_secs(3600)) });
    assert_eq!(vault.calls(Op::GetSecret), 1, "a long Retry-After is handed back, not slept through");
}

#[tokio::test]
async fn a_refused_token_is_renewed_once_then_reported() {
    let vault = KeyVaultServer::start().await.expect("vault");
    vault.set_secret("api-key", "k");
    vault.require_bearer(Some("the-right-token".into()));
    let error = client(&vault, "a-wrong-token").get(&ObjectRef::latest("api-key")).await.expect_err("refused");
    assert_eq!(error.reason(), "AuthenticationFailed");
    assert!(!error.to_string().contains("a-wrong-token"), "the token never reaches an error message");
    client(&vault, "the-right-token").get(&ObjectRef::latest("api-key")).await.expect("accepted");
}

#[tokio::test]
async fn concurrent_reads_of_one_object_cost_one_call() {
    let vault = KeyVaultServer::start().await.expect("vault");
    vault.set_secret("shared", "v");
    let kv: Arc<dyn Backend> = Arc::new(client(&vault, "token"));
    let cache = Arc::new(ReadCache::new(Duration::from_secs(60)));

    let reads = (0..100).map(|_| {
        let (kv, cache) = (kv.clone(), cache.clone());
        tokio::spawn(async move { cache.get(kv.as_ref(), &ObjectRef::latest("shared"), None).await })
    });
    for read in futures::future::join_all(reads).await {
        assert_eq!(read.expect("task").expect("read").value.expose(), b"v");
    }
    assert_eq!(vault.calls(Op::GetSecret), 1, "100 concurrent readers, one backend call");

    // Within the window a read is served from the cache; a caller that needs the newest
    // version (max_age zero) reads again.
    vault.set_secret("shared", "v2");
    let cached = cache.get(kv.as_ref(), &ObjectRef::latest("shared"), None).await.expect("cached");
    assert_eq!(cached.value.expose(), b"v");
    let fresh = cache.get(kv.as_ref(), &ObjectRef::latest("shared"), Some(Duration::ZERO)).await.expect("fresh");
    assert_eq!(fresh.value.expose(), b"v2");
    assert_eq!(vault.calls(Op::GetSecret), 2);
}

#[tokio::test]
async fn different_identities_do_not_share_cached_reads() {
    let vault = KeyVaultServer::start().await.expect("vault");
    vault.set_secret("shared", "v");
    let shared = Arc::new(endpoint(&vault));
    let tenant = |id: &str| AzureKeyVault::new(shared.clone(), Arc::new(StaticToken("t".into())), principal(id));
    let (a, b) = (tenant("tenant-a"), tenant("tenant-b"));
    let cache = ReadCache::new(Duration::from_secs(60));
    cache.get(&a, &ObjectRef::latest("shared"), None).await.expect("a");
    cache.get(&b, &ObjectRef::latest("shared"), None).await.expect("b");
    cache.get(&a, &ObjectRef::latest("shared"), None).await.expect("a again");
    assert_eq!(vault.calls(Op::GetSecret), 2, "one read per identity");
}

#[tokio::test]
async fn the_budget_spreads_calls_and_the_observer_counts_them() {
    let vault = KeyVaultServer::start().await.expect("vault");
    vault.set_secret("k", "v");
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let seen = outcomes.clone();
    let metered = endpoint(&vault).metered(
        Some(Arc::new(RequestBudget::new(20, 2))),
        Some(Arc::new(move |op, outcome| seen.lock().expect("lock").push((op, outcome)))),
    );
    let kv = reader(metered, "token");
    let started = std::time::Instant::now();
    for _ in 0..12 {
        kv.get(&ObjectRef::latest("k")).await.expect("read");
    }
    // The first call asks for the vault's challenge (unauthenticated, answered 401), then 12 reads: 2 free, then
    // 11 at 20/s: at least 0.5 s.
    assert!(started.elapsed() >= Duration::from_millis(450), "took {:?}", started.elapsed());
    let outcomes = outcomes.lock().expect("lock").clone();
    assert_eq!(outcomes[0], ("challenge", "unauthorized"), "{outcomes:?}");
    assert_eq!(outcomes.len(), 13, "{outcomes:?}");
    assert!(outcomes[1..].iter().all(|o| *o == ("get_secret", "ok")), "{outcomes:?}");
}

#[tokio::test]
async fn listing_pages_through_every_name_with_the_prefix() {
    let vault = KeyVaultServer::start().await.expect("vault");
    for i in 0..30 {
        vault.set_secret(&format!("app-{i:02}"), "v");
    }
    vault.set_secret("other", "v");
    let kv = client(&vault, "token");
    let listed = kv.list("app-").await.expect("list");
    let names: Vec<&str> = listed.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names.len(), 30, "two pages of 25 followed: {names:?}");
    assert_eq!(names[0], "app-00");
    assert!(!names.contains(&"other"));
    assert!(listed.iter().all(|l| l.enabled && l.updated.is_some()), "items carry their attributes");
    assert_eq!(vault.calls(Op::ListSecrets), 2);
    assert_eq!(vault.calls(Op::GetSecret), 0, "listing reads no value");
}

/// A vault that answers its challenge, then a list page whose nextLink points at `next`.
async fn vault_linking_to(next: &'static str) -> (String, tokio::task::JoinHandle<()>) {
    use axum::{Json, http::HeaderMap, response::IntoResponse};
    use vaultsync_e2e::tls::{TestCa, loopback_listener, serve_https};
    let (listener, addr) = loopback_listener().await.expect("listener");
    let url = format!("https://localhost:{}", addr.port());
    let challenge = format!(r#"Bearer authorization="https://login.microsoftonline.com/t", resource="{url}""#);
    let app = axum::Router::new().route(
        "/secrets",
        axum::routing::get(move |headers: HeaderMap| async move {
            if !headers.contains_key("authorization") {
                let mut answer = axum::http::StatusCode::UNAUTHORIZED.into_response();
                answer.headers_mut().insert("www-authenticate", challenge.parse().expect("header"));
                return answer;
            }
            let page = serde_json::json!({ "value": [{ "id": "https://x/secrets/app-1", "attributes": {} }],
                "nextLink": next });
            Json(page).into_response()
        }),
    );
    let config = TestCa::shared().loopback_server_config().expect("tls");
    (url, tokio::spawn(serve_https(listener, config, app)))
}

#[tokio::test]
async fn a_next_link_to_another_origin_is_refused() {
    for next in [
        "https://evil.example/secrets?api-version=7.6&$skiptoken=x",
        "http://localhost/secrets?api-version=7.6",
        "https://localhost:1/secrets?api-version=7.6",
        "not a link at all",
    ] {
        let (url, server) = vault_linking_to(next).await;
        let http = http_client(Some(vaultsync_e2e::tls::TestCa::shared().ca_pem())).expect("http");
        let endpoint = AzureEndpoint::new(http, &url, "7.6").expect("endpoint");
        let error = reader(endpoint, "t").list("").await.expect_err(next);
        assert!(error.to_string().contains("another origin"), "{next}: {error}");
        server.abort();
    }
}

#[tokio::test]
async fn the_challenge_decides_scope_and_tenant_and_foreign_ones_are_refused() {
    use vaultsync_backend::token::{EntraToken, Grant};
    use vaultsync_e2e::entra::{ClientSecret, EntraServer};

    // A vault that names the public Key Vault resource although it is not in that domain: no token is asked for.
    let foreign = KeyVaultServer::builder().challenge_resource("https://vault.azure.net").start().await.expect("vault");
    let error = client(&foreign, "t").get(&ObjectRef::latest("x")).await.expect_err("foreign resource");
    assert!(error.to_string().contains("not this vault's domain"), "{error}");
    assert_eq!(foreign.total_calls(), 0, "nothing was asked with a token");

    // The vault belongs to another tenant than the store names: the token service is not asked.
    let vault = KeyVaultServer::builder()
        .authority("https://login.microsoftonline.com", "tenant-b")
        .start()
        .await
        .expect("vault");
    vault.set_secret("k", "tenant-value");
    let entra = EntraServer::builder(None)
        .client_secret(ClientSecret { client_id: "app".into(), secret: "s3".into(), access_token: "tok".into() })
        .resource(vault.challenge_resource())
        .start()
        .await
        .expect("entra");
    let http = http_client(Some(vault.ca_pem())).expect("http");
    let reader = |tenant: &str| {
        let token = EntraToken::new(
            http.clone(),
            entra.authority_host(),
            tenant,
            Some("app".into()),
            Grant::ClientSecret(zeroize::Zeroizing::new("s3".into())),
        );
        AzureKeyVault::new(Arc::new(endpoint(&vault)), Arc::new(token), principal(tenant))
    };
    let error = reader("tenant-a").get(&ObjectRef::latest("k")).await.expect_err("another tenant");
    assert!(error.to_string().contains("tenant-b") && error.to_string().contains("tenant-a"), "{error}");
    assert_eq!(entra.counts(), (0, 0), "the token service was not asked");
    // The tenant the challenge names, and the scope of the vault's own resource: a token, and the read.
    let value = reader("tenant-b").get(&ObjectRef::latest("k")).await.expect("read");
    assert_eq!(value.value.expose(), b"tenant-value");
}

#[tokio::test]
async fn certificates_and_keys_are_their_own_objects_in_the_cache() {
    let vault = KeyVaultServer::start().await.expect("vault");
    let policy = serde_json::json!({ "policy": { "key_props": { "kty": "EC", "crv": "P-256" },
        "x509_props": { "subject": "CN=web.example" } } });
    vault
        .client()
        .expect("client")
        .call(reqwest::Method::POST, "/certificates/web/create", Some(&policy))
        .await
        .unwrap();
    vault.reset_counts();
    let kv = client(&vault, "token");
    let cache = ReadCache::new(Duration::from_secs(60));
    let kinds = [ObjectKind::Secret, ObjectKind::Certificate, ObjectKind::Key];
    let mut versions = Vec::new();
    for kind in kinds {
        let read = cache.get(&kv, &ObjectRef::latest("web").of_kind(kind), None).await.expect("read");
        versions.push(read.version.clone());
        match kind {
            // The certificate's secret: its key and chain, as Key Vault stores them.
            ObjectKind::Secret => assert_eq!(read.content_type.as_deref(), Some("application/x-pkcs12")),
            // The certificates API: the leaf alone, DER.
            ObjectKind::Certificate => assert_eq!(read.value.expose().first(), Some(&0x30)),
            ObjectKind::Key => {
                let jwk: serde_json::Value = serde_json::from_slice(read.value.expose()).expect("a JWK");
                assert_eq!((jwk["kty"].as_str(), jwk["crv"].as_str()), (Some("EC"), Some("P-256")));
                assert!(jwk.get("d").is_none(), "never a private member");
            }
        }
        // A second read of the same kind is served by the cache.
        cache.get(&kv, &ObjectRef::latest("web").of_kind(kind), None).await.expect("cached");
    }
    assert!(versions.iter().all(|v| *v == versions[0]), "one version across the three: {versions:?}");
    let counts = (vault.calls(Op::GetSecret), vault.calls(Op::GetCertificate), vault.calls(Op::GetKey));
    assert_eq!(counts, (1, 1, 1), "one GET per kind: the kind is part of the cache key");

    vault.disable_certificate("web");
    for kind in kinds {
        let error = kv.get(&ObjectRef::latest("web").of_kind(kind)).await.expect_err("disabled");
        assert_eq!(error.reason(), "Disabled", "{kind}: {error:?}");
    }
}

/// Reads every `names` through the cache, accepting reads no older than `max_age`.
async fn read_all(cache: &ReadCache, kv: &dyn Backend, names: &[String], max_age: Duration) {
    for name in names {
        cache.get(kv, &ObjectRef::latest(name), Some(max_age)).await.expect("read");
    }
}

#[tokio::test]
async fn a_refresh_lists_the_vault_and_reads_only_what_changed() {
    let vault = KeyVaultServer::start().await.expect("vault");
    let names: Vec<String> = (0..100).map(|i| format!("app-{i:03}")).collect();
    for name in &names {
        vault.set_secret(name, "first");
    }
    // `updated` has whole seconds: a read is trusted against a list only well after the write it saw.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let kv = client(&vault, "token");
    let cache = ReadCache::new(Duration::from_secs(60));
    let max_age = Duration::from_secs(2);
    read_all(&cache, &kv, &names, max_age).await;
    assert_eq!((vault.calls(Op::GetSecret), vault.calls(Op::ListSecrets)), (100, 0), "the first reads are GETs");

    // A refresh round: every cached read is older than accepted; one list of 4 pages shows them unchanged.
    tokio::time::sleep(max_age + Duration::from_millis(100)).await;
    read_all(&cache, &kv, &names, max_age).await;
    assert_eq!((vault.calls(Op::GetSecret), vault.calls(Op::ListSecrets)), (100, 4), "a list replaces 100 GETs");
    assert_eq!(cache.stats.validated.load(std::sync::atomic::Ordering::Relaxed), 100);

    // One secret changes: the next round lists again and reads that one alone, with its new value.
    vault.set_secret("app-042", "second");
    tokio::time::sleep(max_age + Duration::from_millis(100)).await;
    read_all(&cache, &kv, &names, max_age).await;
    assert_eq!((vault.calls(Op::GetSecret), vault.calls(Op::ListSecrets)), (101, 8), "one GET for the changed one");
    let changed = cache.get(&kv, &ObjectRef::latest("app-042"), Some(max_age)).await.expect("read");
    assert_eq!(changed.value.expose(), b"second");

    // A read that must see the vault as it is now never trusts a list.
    cache.get(&kv, &ObjectRef::latest("app-001"), Some(Duration::ZERO)).await.expect("forced");
    assert_eq!(vault.calls(Op::GetSecret), 102);

    // An identity that may not list is read object by object, and the refusal is remembered: one refused list.
    vault.forbid_listing(true);
    tokio::time::sleep(max_age + Duration::from_millis(100)).await;
    read_all(&cache, &kv, &names, max_age).await;
    tokio::time::sleep(max_age + Duration::from_millis(100)).await;
    read_all(&cache, &kv, &names, max_age).await;
    assert_eq!(vault.calls(Op::ListSecrets), 9, "one refused list, then none");
    assert_eq!(vault.calls(Op::GetSecret), 302, "two rounds of GETs");
    assert!(cache.lists.refusal(kv.identity()).is_some_and(|why| why.contains("list permission")));
}

#[tokio::test]
async fn a_list_longer_than_the_reads_it_replaces_is_not_taken() {
    let vault = KeyVaultServer::start().await.expect("vault");
    // 100 secrets in the vault (4 pages), 3 of them read: a list would cost more than reading the 3 again.
    for i in 0..100 {
        vault.set_secret(&format!("other-{i:03}"), "x");
    }
    let names: Vec<String> = (0..3).map(|i| format!("mine-{i}")).collect();
    for name in &names {
        vault.set_secret(name, "v");
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let kv = client(&vault, "token");
    let cache = ReadCache::new(Duration::from_secs(60));
    let max_age = Duration::from_secs(1);
    for _ in 0..3 {
        read_all(&cache, &kv, &names, max_age).await;
        tokio::time::sleep(max_age + Duration::from_millis(100)).await;
    }
    // The first refresh learns that the list is longer than 2 pages (it stops after those); the next does not try.
    assert_eq!(vault.calls(Op::ListSecrets), 2, "one list, stopped after 2 pages");
    assert_eq!(cache.lists.stats.stopped.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(vault.calls(Op::GetSecret), 9, "every round reads its 3 secrets");
}
