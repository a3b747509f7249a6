//! The Entra test server, exercised over real HTTPS (and the metadata endpoint's plain HTTP): each
//! way a request is refused, with Entra's error codes, and the call counts and injected faults.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use serde_json::Value;
use vaultsync_e2e::{
    TestNamespace,
    entra::{ClientSecret, Endpoint, EntraServer, Federation, Grant, ManagedIdentity},
    service_account_token,
    tls::TestCa,
};

const AUDIENCE: &str = "api://AzureADTokenExchange";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Posts a token request; returns the status and the JSON body.
async fn token(entra: &EntraServer, form: &[(&str, &str)]) -> (u16, Value) {
    let url = format!("{}/tenant-1/oauth2/v2.0/token", entra.authority_host());
    let response = TestCa::shared().client().expect("client").post(url).form(form).send().await.expect("token request");
    (response.status().as_u16(), response.json().await.expect("a JSON answer"))
}

fn assertion<'a>(client_id: &'a str, jwt: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("scope", "https://vault.azure.net/.default"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", jwt),
    ]
}

/// The AADSTS code that starts an Entra error description.
fn aadsts(body: &Value) -> &str {
    body["error_description"].as_str().and_then(|d| d.split(':').next()).unwrap_or_default()
}

#[tokio::test]
async fn federated_assertions_are_checked_against_the_issuer_keys_and_the_credential() {
    let ns = TestNamespace::new("entra-server").await;
    let accounts: Api<ServiceAccount> = ns.api();
    for name in ["app", "other"] {
        let sa = ServiceAccount {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            ..Default::default()
        };
        accounts.create(&PostParams::default(), &sa).await.expect("service account");
    }
    let federation = Federation {
        client_id: "app-id".into(),
        subject: format!("system:serviceaccount:{}:app", ns.name),
        audience: AUDIENCE.into(),
        access_token: "issued-to-app".into(),
    };
    let entra = EntraServer::builder(Some(ns.client.clone())).federation(federation).start().await.expect("entra");
    let jwt = service_account_token(&accounts, "app", AUDIENCE).await.expect("token");

    let (status, body) = token(&entra, &assertion("app-id", &jwt)).await;
    assert_eq!((status, body["access_token"].as_str()), (200, Some("issued-to-app")), "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].is_u64(), "Entra answers expires_in as a number: {body}");

    // The signature is checked with the issuer's published key: one changed claim breaks it.
    let parts: Vec<&str> = jwt.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("claims")).expect("json");
    claims["sub"] = Value::from(format!("system:serviceaccount:{}:app", ns.name) + "x");
    let forged = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims.to_string()), parts[2]);
    let (status, body) = token(&entra, &assertion("app-id", &forged)).await;
    assert_eq!((status, aadsts(&body)), (400, "AADSTS50013"), "{body}");

    claims["iss"] = Value::from("https://issuer.example");
    let foreign = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims.to_string()), parts[2]);
    let (_, body) = token(&entra, &assertion("app-id", &foreign)).await;
    assert_eq!(aadsts(&body), "AADSTS700211", "an unknown issuer: {body}");

    let other = service_account_token(&accounts, "other", AUDIENCE).await.expect("token");
    let (_, body) = token(&entra, &assertion("app-id", &other)).await;
    assert_eq!(aadsts(&body), "AADSTS700213", "another subject: {body}");

    let wrong_audience = service_account_token(&accounts, "app", "api://something-else").await.expect("token");
    let (_, body) = token(&entra, &assertion("app-id", &wrong_audience)).await;
    assert_eq!(aadsts(&body), "AADSTS700212", "another audience: {body}");

    let (status, body) = token(&entra, &assertion("unknown-app", &jwt)).await;
    assert_eq!((status, aadsts(&body)), (400, "AADSTS700016"), "{body}");

    let mut bad_scope = assertion("app-id", &jwt);
    bad_scope[2] = ("scope", "https://management.azure.com/.default");
    let (status, body) = token(&entra, &bad_scope).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")), "{body}");

    assert_eq!(entra.calls(Grant::Federated), 6);
    assert_eq!(entra.counts(), (1, 6));
}

#[tokio::test]
async fn client_secrets_discovery_and_throttling() {
    let secret = ClientSecret { client_id: "sp".into(), secret: "s3cret".into(), access_token: "issued-to-sp".into() };
    let entra =
        EntraServer::builder(None).client_secret(secret).resource("https://localhost:9").start().await.expect("entra");
    let form = |secret: &'static str, scope: &'static str| {
        vec![("grant_type", "client_credentials"), ("client_id", "sp"), ("client_secret", secret), ("scope", scope)]
    };

    let (status, body) = token(&entra, &form("s3cret", "https://localhost:9/.default")).await;
    assert_eq!((status, body["access_token"].as_str()), (200, Some("issued-to-sp")), "a configured resource: {body}");
    let (status, body) = token(&entra, &form("wrong", "https://vault.azure.net/.default")).await;
    assert_eq!((status, aadsts(&body)), (401, "AADSTS7000215"), "{body}");
    let (status, body) = token(&entra, &form("s3cret", "https://vault.azure.net")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")), "a scope needs /.default: {body}");

    entra.fail_next(Endpoint::Token, 1, 429, Some(3));
    let url = format!("{}/tenant-1/oauth2/v2.0/token", entra.authority_host());
    let http = TestCa::shared().client().expect("client");
    let throttled =
        http.post(&url).form(&form("s3cret", "https://vault.azure.net/.default")).send().await.expect("request");
    assert_eq!(throttled.status().as_u16(), 429);
    assert_eq!(throttled.headers()["retry-after"], "3");
    let (status, _) = token(&entra, &form("s3cret", "https://vault.azure.net/.default")).await;
    assert_eq!(status, 200, "one fault, then served");
    assert_eq!(entra.calls(Grant::ClientSecret), 5);

    let discovery = http
        .get(format!("{}/tenant-1/v2.0/.well-known/openid-configuration", entra.authority_host()))
        .send()
        .await
        .expect("discovery");
    let document: Value = discovery.json().await.expect("json");
    assert_eq!(document["token_endpoint"], url);
    assert_eq!(document["issuer"], format!("{}/tenant-1/v2.0", entra.authority_host()));
    assert_eq!(entra.calls(Grant::Discovery), 1);
}

#[tokio::test]
async fn the_metadata_endpoint_answers_as_imds_does() {
    let entra = EntraServer::builder(None)
        .managed_identity(ManagedIdentity { client_id: None, access_token: "system".into() })
        .managed_identity(ManagedIdentity { client_id: Some("user-1".into()), access_token: "user".into() })
        .start()
        .await
        .expect("entra");
    let http = TestCa::shared().client().expect("client");
    let get = |query: &'static str, metadata: bool| {
        let request = http.get(format!("{}?{query}", entra.metadata_endpoint()));
        let request = if metadata { request.header("Metadata", "true") } else { request };
        async move {
            let response = request.send().await.expect("request");
            let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap_or_default().to_string());
            (response.status().as_u16(), retry_after, response.json::<Value>().await.expect("json"))
        }
    };
    let resource = "api-version=2018-02-01&resource=https://vault.azure.net";

    let (status, _, body) = get(resource, true).await;
    assert_eq!((status, body["access_token"].as_str()), (200, Some("system")), "{body}");
    assert!(
        body["expires_in"].is_string() && body["expires_on"].is_string(),
        "IMDS answers numbers as strings: {body}"
    );
    assert_eq!(body["resource"], "https://vault.azure.net");
    let (_, _, body) = get("api-version=2018-02-01&resource=https://vault.azure.net&client_id=user-1", true).await;
    assert_eq!(body["access_token"], "user");

    let (status, _, body) = get(resource, false).await;
    assert_eq!((status, body["error_description"].as_str()), (400, Some("Required metadata header not specified")));
    let (status, _, body) = get("api-version=2018-02-01&resource=https://vault.azure.net&client_id=nobody", true).await;
    assert_eq!((status, body["error_description"].as_str()), (400, Some("Identity not found")));
    let (status, _, body) = get("api-version=2018-02-01&resource=https://unknown.example", true).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_resource")), "{body}");

    entra.fail_next(Endpoint::Metadata, 1, 404, None);
    entra.fail_next(Endpoint::Metadata, 1, 410, None);
    entra.fail_next(Endpoint::Metadata, 1, 429, Some(2));
    entra.fail_next(Endpoint::Metadata, 1, 503, None);
    let mut answers = Vec::new();
    for _ in 0..5 {
        let (status, retry_after, _) = get(resource, true).await;
        answers.push((status, retry_after));
    }
    assert_eq!(answers, [(404, None), (410, None), (429, Some("2".to_string())), (503, None), (200, None)]);
    assert_eq!(entra.calls(Grant::ManagedIdentity), 10);
    assert_eq!(entra.counts(), (3, 7));
}
