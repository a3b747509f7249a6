//! Vault answers are outside input: property tests (cases: `PROPTEST_CASES`, 64 by default, raised by `make fuzz`)
//! that serve generated answers (status, `Retry-After`, `WWW-Authenticate`, JSON shaped like the real thing with
//! hostile values, or garbage) over verified HTTPS to the real Key Vault and OpenBao clients. Every read and list must
//! come back (no panic, no hang: within 10 s) with a value or an error, never a value out of an error answer.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use serde_json::{Value, json};
use vaultsync_backend::{
    Backend, ObjectRef, Principal,
    azure::{AzureEndpoint, AzureKeyVault, RetryPolicy, http_client},
    openbao::{AuthMethod, KvMount, KvVersion, OpenBao},
    token::StaticToken,
};
use vaultsync_e2e::tls::{TestCa, loopback_listener, serve_https};

/// One generated answer.
#[derive(Clone, Debug, Default)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

type Current = Arc<Mutex<Answer>>;

/// Answers a request without a token with Key Vault's challenge (as a vault does before anything else), and every
/// other request with the current generated answer.
async fn answer(State(current): State<Current>, headers: axum::http::HeaderMap) -> Response {
    if !headers.contains_key("authorization") && !headers.contains_key("x-vault-token") {
        let challenge = r#"Bearer authorization="https://login.microsoftonline.com/t", resource="https://localhost""#;
        return (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response();
    }
    let answer = current.lock().expect("answer lock").clone();
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = (status, answer.body).into_response();
    for (name, value) in answer.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// An HTTPS server (the test CA, `localhost`) answering whatever `current` holds.
async fn server() -> (String, Current, tokio::task::JoinHandle<()>) {
    let current = Current::default();
    let (listener, addr) = loopback_listener().await.expect("a listener");
    let config = TestCa::shared().loopback_server_config().expect("a certificate");
    let app = Router::new().fallback(answer).with_state(current.clone());
    let task = tokio::spawn(serve_https(listener, config, app));
    (format!("https://localhost:{}", addr.port()), current, task)
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::from),
        Just(json!({})),
        Just(json!([])),
    ]
}

/// Links a page may name: its own origin (a loop, or another page), other origins, garbage.
fn link(origin: String) -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(format!("{origin}/secrets?api-version=7.6&$skiptoken=x"))),
        Just(json!(format!("{}/secrets", origin.to_uppercase()))),
        Just(json!("https://attacker.example/secrets")),
        Just(json!("")),
        ".{0,40}".prop_map(Value::from),
        scalar(),
    ]
}

fn key_vault_body(origin: String) -> impl Strategy<Value = Vec<u8>> {
    let item = (".{0,30}", scalar(), scalar(), scalar()).prop_map(|(id, enabled, exp, nbf)| {
        json!({ "id": format!("https://v/secrets/{id}"), "attributes": { "enabled": enabled, "exp": exp, "nbf": nbf } })
    });
    let bundle = (scalar(), scalar(), scalar(), scalar()).prop_map(|(value, id, enabled, content_type)| {
        json!({ "value": value, "id": id, "contentType": content_type, "attributes": { "enabled": enabled } })
    });
    let page = (proptest::collection::vec(item, 0..4), link(origin), scalar())
        .prop_map(|(items, next, odd)| json!({ "value": items, "nextLink": next, "odd": odd }));
    let error =
        (".{0,20}", ".{0,40}").prop_map(|(code, message)| json!({ "error": { "code": code, "message": message } }));
    prop_oneof![
        bundle.prop_map(|v| v.to_string().into_bytes()),
        page.prop_map(|v| v.to_string().into_bytes()),
        error.prop_map(|v| v.to_string().into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..200),
    ]
}

fn openbao_body() -> impl Strategy<Value = Vec<u8>> {
    let data = proptest::collection::btree_map("[a-z]{1,6}", scalar(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()));
    let read = (data, scalar(), any::<bool>()).prop_map(|(data, version, v2)| {
        if v2 {
            json!({ "data": { "data": data, "metadata": { "version": version } } })
        } else {
            json!({ "data": data })
        }
    });
    let keys = proptest::collection::vec(prop_oneof![".{0,20}".prop_map(Value::from), scalar()], 0..5)
        .prop_map(|keys| json!({ "data": { "keys": keys } }));
    let errors = proptest::collection::vec(scalar(), 0..3).prop_map(|errors| json!({ "errors": errors }));
    prop_oneof![
        read.prop_map(|v| v.to_string().into_bytes()),
        keys.prop_map(|v| v.to_string().into_bytes()),
        errors.prop_map(|v| v.to_string().into_bytes()),
        scalar().prop_map(|v| v.to_string().into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..200),
    ]
}

fn status() -> impl Strategy<Value = u16> {
    let listed = prop::sample::select(vec![401u16, 403, 404, 408, 429, 500, 503]);
    prop_oneof![4 => Just(200u16), 2 => listed, 1 => 100u16..600]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let retry_after = prop_oneof!["[0-9]{1,25}", ".{0,12}", Just("0".to_string())];
    let challenge = prop_oneof![
        Just(r#"Bearer authorization="https://login.microsoftonline.com/t", resource="https://localhost""#.to_string()),
        Just(
            r#"Bearer authorization="https://login.microsoftonline.com/t", resource="https://evil.example""#
                .to_string()
        ),
        ".{0,60}",
    ];
    (proptest::option::of(retry_after), proptest::option::of(challenge)).prop_map(|(retry, challenge)| {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        headers.extend(retry.map(|r| ("retry-after".to_string(), r)));
        headers.extend(challenge.map(|c| ("www-authenticate".to_string(), c)));
        headers
    })
}

fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64);
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

/// Retries quickly, so a case costs milliseconds whatever `Retry-After` says.
fn fast() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 2,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
        max_retry_after: Duration::from_millis(10),
    }
}

/// The Key Vault client for the server at `url`, with a fixed token.
fn key_vault(url: &str) -> AzureKeyVault {
    let http = http_client(Some(TestCa::shared().ca_pem())).expect("a client");
    let endpoint = AzureEndpoint::new(http, url, "7.6").expect("an endpoint").with_retry(fast());
    AzureKeyVault::new(
        Arc::new(endpoint),
        Arc::new(StaticToken("token".into())),
        Principal::StaticToken { fingerprint: "fuzz".into() },
    )
}

/// Runs `call` on this runtime from inside the (synchronous) property runner, within 10 s.
fn within<T>(call: impl Future<Output = T>) -> Result<T, TestCaseError> {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .map_err(|_| TestCaseError::fail("no answer within 10 s: the client hangs or loops"))
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_key_vault_answer_is_handled() {
    let (url, current, task) = server().await;
    let kv = key_vault(&url);
    let strategy = (status(), headers(), key_vault_body(url.clone()));
    runner()
        .run(&strategy, |(status, headers, body)| {
            *current.lock().expect("answer lock") = Answer { status, headers, body };
            let read = within(kv.get(&ObjectRef::latest("db-password")))?;
            if status != 200 {
                prop_assert!(read.is_err(), "a value out of a {status} answer");
            }
            let _ = within(kv.list("app-"))?;
            let _ = within(kv.check())?;
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_openbao_answer_is_handled() {
    let (url, current, task) = server().await;
    let http = http_client(Some(TestCa::shared().ca_pem())).expect("a client");
    let strategy = (status(), headers(), openbao_body(), any::<bool>());
    runner()
        .run(&strategy, |(status, headers, body, v2)| {
            *current.lock().expect("answer lock") = Answer { status, headers, body };
            let location = KvMount {
                server: url.clone(),
                insecure_http: false,
                namespace: None,
                mount: "secret".into(),
                kv_version: if v2 { KvVersion::V2 } else { KvVersion::V1 },
            };
            let auth = AuthMethod::Token(zeroize::Zeroizing::new("token".into()));
            let principal = Principal::OpenBaoToken { fingerprint: "fuzz".into() };
            let bao = OpenBao::new(http.clone(), location, auth, principal).expect("a client").with_retry(fast());
            let read = within(bao.get(&ObjectRef::latest("app/db")))?;
            if status != 200 {
                prop_assert!(read.is_err(), "a value out of a {status} answer");
            }
            let _ = within(Backend::list(&bao, "app/"))?;
            let _ = within(bao.check())?;
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    task.abort();
}

/// Found by `any_key_vault_answer_is_handled` (1000 cases): a vault whose list names its own page as the next one
/// made the client loop for ever. Now it stops with an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_that_links_back_to_itself_ends() {
    let (url, current, task) = server().await;
    let page =
        json!({ "value": [{ "id": format!("{url}/secrets/app-one") }], "nextLink": format!("{url}/secrets?page=1") });
    *current.lock().expect("answer lock") =
        Answer { status: 200, headers: Vec::new(), body: page.to_string().into_bytes() };
    let kv = key_vault(&url);
    let listed = tokio::time::timeout(Duration::from_secs(10), kv.list("app-")).await.expect("an answer in time");
    let error = listed.expect_err("a list that does not end is an error");
    assert!(error.to_string().contains("does not end"), "{error}");
    task.abort();
}
