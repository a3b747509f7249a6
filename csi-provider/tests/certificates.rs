//! Certificates and keys in mounts, from the Key Vault test server, in both modes:
//! - a SecretProviderClass written for the Azure provider: `objectType` secret (a PKCS#12 certificate secret as PEM,
//!   key first; `objectFormat: pfx` the stored base64, binary with `objectEncoding: base64`; a PEM one as stored),
//!   cert (the leaf as PEM) and key (the public key as PEM), with their `<type>/<name>` versions;
//! - a VaultSecret named by a volume, rendered as the operator renders it (`format` pem, pfx, der, jwk), and the
//!   `storeRef` + `objects` form with `objectType` and `format`;
//! - what cannot be made is refused with the place named, and nothing written.

mod support;

use std::collections::BTreeMap;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde_json::{Value, json};
use support::*;
use tonic::Code;
use vaultsync_csi::proto::provider::MountResponse;
use vaultsync_e2e::{TestNamespace, keyvault::KeyVaultClient};

const PKCS12: &str = "application/x-pkcs12";
const PEM: &str = "application/x-pem-file";

fn files_of(response: &MountResponse) -> BTreeMap<String, Vec<u8>> {
    response.files.iter().map(|f| (f.path.clone(), f.contents.clone())).collect()
}

/// The PEM sections of `text`: (label, DER).
fn sections(text: &[u8]) -> Vec<(String, Vec<u8>)> {
    let text = std::str::from_utf8(text).expect("PEM is text");
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) {
            current = Some((label.to_string(), String::new()));
        } else if line.starts_with("-----END ") {
            let (label, body) = current.take().expect("END after BEGIN");
            out.push((label, STANDARD.decode(body).expect("base64 body")));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line.trim());
        }
    }
    out
}

fn labels(text: &[u8]) -> Vec<String> {
    sections(text).into_iter().map(|(label, _)| label).collect()
}

/// Self-signed EC certificates created by the vault, `web-pfx` (its secret PKCS#12) and `web-pem` (PEM), and an EC
/// key `signing`; returns a client of the vault and the PFX as the vault holds it (base64).
async fn certificates(azure: &Azure, ns: &TestNamespace) -> (KeyVaultClient, String) {
    let client = azure.vault.client().expect("client").with_token(Some(&format!("kv-access-{}", ns.name)));
    for (name, content_type) in [("web-pfx", PKCS12), ("web-pem", PEM)] {
        let policy = json!({ "policy": { "key_props": { "kty": "EC", "crv": "P-256" },
            "secret_props": { "contentType": content_type },
            "x509_props": { "subject": format!("CN={name}.example"), "validity_months": 12 } } });
        client
            .call(reqwest::Method::POST, &format!("/certificates/{name}/create"), Some(&policy))
            .await
            .expect("creating a certificate");
    }
    let key = json!({ "kty": "EC", "crv": "P-256" });
    client.call(reqwest::Method::POST, "/keys/signing/create", Some(&key)).await.expect("creating a key");
    let stored_pfx = client.get("web-pfx", None).await.expect("the certificate's secret").value.expect("value");
    (client, stored_pfx)
}

/// An Azure provider `objects` parameter from raw entries (each the YAML of one object).
fn azure_objects_yaml(entries: &[&str]) -> String {
    let mut yaml = String::from("array:\n");
    for entry in entries {
        yaml.push_str("  - |\n");
        for line in entry.lines() {
            yaml.push_str(&format!("    {line}\n"));
        }
    }
    yaml
}

#[tokio::test]
async fn azure_provider_certificates_and_keys_in_both_modes() {
    let ns = TestNamespace::new("csi-c-azure").await;
    let azure = web_on_azure(&ns).await;
    let (client, stored_pfx) = certificates(&azure, &ns).await;
    let stored_pem = client.get("web-pem", None).await.expect("the certificate's secret").value.expect("value");
    let plugin = Plugin::start(&azure.flags()).await;

    let mut parameters = azure_parameters("app-web", &[]);
    parameters.insert(
        "objects".into(),
        azure_objects_yaml(&[
            "objectName: web-pfx\nobjectType: secret\nobjectAlias: tls.pem",
            "objectName: web-pfx\nobjectType: secret\nobjectFormat: pfx\nobjectAlias: tls.pfx.b64",
            "objectName: web-pfx\nobjectType: secret\nobjectFormat: PFX\nobjectEncoding: base64\nobjectAlias: tls.pfx",
            "objectName: web-pem\nobjectAlias: pem-as-stored.pem",
            "objectName: web-pfx\nobjectType: cert\nobjectAlias: tls.crt",
            // objectEncoding is for secrets only, as in the Azure provider.
            "objectName: signing\nobjectType: key\nobjectEncoding: base64\nobjectAlias: signing.pub",
        ]),
    );
    let mut attributes = pod_attributes(&ns, "web", "web-0", &[AZURE_AUDIENCE]).await;
    attributes.extend(parameters.clone());

    // Mode 1: the provider's Mount.
    let response = plugin.provider().await.mount(provider_mount(&attributes)).await.expect("Mount").into_inner();
    let files = files_of(&response);
    assert_eq!(labels(&files["tls.pem"]), ["PRIVATE KEY", "CERTIFICATE"], "key first, then the leaf");
    let leaf = sections(&files["tls.crt"]);
    assert_eq!(leaf.len(), 1, "objectType cert is the certificate alone");
    assert_eq!(leaf[0], sections(&files["tls.pem"])[1], "the same leaf");
    assert_eq!(files["tls.pfx.b64"], stored_pfx.as_bytes(), "objectFormat pfx: the value as Key Vault holds it");
    assert_eq!(files["tls.pfx"], STANDARD.decode(&stored_pfx).unwrap(), "objectEncoding base64: the binary PFX");
    assert_eq!(files["pem-as-stored.pem"], stored_pem.as_bytes(), "a PEM certificate secret as stored");
    assert_eq!(labels(&files["signing.pub"]), ["PUBLIC KEY"]);
    let versions: BTreeMap<_, _> =
        response.object_version.iter().map(|v| (v.id.as_str(), v.version.as_str())).collect();
    let ids: Vec<&str> = versions.keys().copied().collect();
    assert_eq!(ids, ["cert/web-pfx", "key/signing", "secret/web-pem", "secret/web-pfx"]);

    // Mode 2: the node plugin writes the same files.
    let target = plugin.target("certs");
    let mut node = plugin.node().await;
    let mut context = pod_attributes(&ns, "web", "web-1", &[AZURE_AUDIENCE]).await;
    context.extend(parameters.clone());
    node.node_publish_volume(publish_request("csi-certs", &target, context)).await.expect("NodePublishVolume");
    for (name, contents) in &files {
        if name == "tls.pem" {
            // A PEM made again: the same key and leaf.
            assert_eq!(sections(&std::fs::read(target.join(name)).unwrap()), sections(contents));
            continue;
        }
        assert_eq!(&std::fs::read(target.join(name)).expect("a file"), contents, "{name}");
    }
    node.node_unpublish_volume(unpublish_request("csi-certs", &target)).await.expect("unpublish");

    // What cannot be made is refused, naming where.
    for (entry, what) in [
        ("objectName: web-pfx\nobjectType: cert\nobjectFormat: pfx", "objectFormat pfx is for objectType secret"),
        ("objectName: web-pfx\nobjectFormat: jks", "objectFormat must be pem or pfx"),
    ] {
        let mut bad = attributes.clone();
        bad.insert("objects".into(), azure_objects_yaml(&[entry]));
        let error = plugin.provider().await.mount(provider_mount(&bad)).await.expect_err(entry);
        assert!(error.message().contains(what) && error.message().contains("objects.array[0]"), "{error:?}");
    }
    let mut keys = Vec::new();
    for contents in files.values().filter(|c| std::str::from_utf8(c).is_ok()) {
        keys.extend(
            sections(contents).into_iter().filter(|(l, _)| l == "PRIVATE KEY").map(|(_, d)| STANDARD.encode(d)),
        );
    }
    assert_logs_free_of(&keys.iter().map(String::as_str).collect::<Vec<_>>());
    plugin.stop().await;
}

#[tokio::test]
async fn a_vault_secret_and_store_objects_render_certificates_and_keys_as_the_operator_does() {
    let ns = TestNamespace::new("csi-c-vs").await;
    let azure = web_on_azure(&ns).await;
    let (client, stored_pfx) = certificates(&azure, &ns).await;
    let jwk: Value = client.call(reqwest::Method::GET, "/keys/signing", None).await.expect("the key");
    let data = json!([
        { "secretKey": "tls.pem", "remoteRef": { "name": "web-pfx", "format": "pem" } },
        { "secretKey": "tls.pfx", "remoteRef": { "name": "web-pfx", "format": "pfx" } },
        { "secretKey": "leaf.der", "remoteRef": { "name": "web-pfx", "objectType": "certificate", "format": "der" } },
        { "secretKey": "leaf.pem", "remoteRef": { "name": "web-pfx", "objectType": "certificate" } },
        { "secretKey": "signing.jwk", "remoteRef": { "name": "signing", "objectType": "key", "format": "jwk" } },
    ]);
    apply_vault_secret(&ns, &azure, "app-web", "certs", json!({ "data": data })).await;
    let plugin = Plugin::start_with_stores(&[], ns.client.clone()).await;
    let mut node = plugin.node().await;

    let target = plugin.target("vs");
    let mut context = pod_attributes(&ns, "web", "web-0", &[AZURE_AUDIENCE]).await;
    context.insert("vaultsync.dev/vaultsecret".into(), "certs".into());
    node.node_publish_volume(publish_request("csi-vs", &target, context.clone())).await.expect("NodePublishVolume");
    let read = |name: &str| std::fs::read(target.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(labels(&read("tls.pem")), ["PRIVATE KEY", "CERTIFICATE"]);
    assert_eq!(read("tls.pfx"), STANDARD.decode(&stored_pfx).unwrap(), "the vault's PFX, binary, as the operator");
    let leaf = sections(&read("leaf.pem"));
    assert_eq!(leaf.len(), 1);
    assert_eq!(read("leaf.der"), leaf[0].1);
    assert_eq!(leaf[0], sections(&read("tls.pem"))[1]);
    let ours: Value = serde_json::from_slice(&read("signing.jwk")).expect("a JWK");
    assert!(ours.get("d").is_none(), "the public half only");
    for member in ["kty", "crv", "x", "y"] {
        assert_eq!(ours[member], jwk["key"][member], "{member}");
    }
    node.node_unpublish_volume(unpublish_request("csi-vs", &target)).await.expect("unpublish");

    // The storeRef + objects form takes the same objectType and format.
    let mut attributes = pod_attributes(&ns, "web", "web-1", &[AZURE_AUDIENCE]).await;
    attributes.insert("storeRef".into(), "kv".into());
    attributes.insert(
        "objects".into(),
        "- objectName: web-pfx\n  objectType: certificate\n  format: der\n  fileName: leaf.der\n\
         - objectName: signing\n  objectType: key\n  fileName: signing.pem\n"
            .into(),
    );
    let response = plugin.provider().await.mount(provider_mount(&attributes)).await.expect("Mount").into_inner();
    let files = files_of(&response);
    assert_eq!(files["leaf.der"], leaf[0].1);
    assert_eq!(labels(&files["signing.pem"]), ["PUBLIC KEY"]);
    let ids: Vec<&str> = response.object_version.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, ["certificate/web-pfx", "key/signing"]);

    // A format that does not fit the object type, and a PFX password from a Secret (the plugin reads none).
    let mut bad = attributes.clone();
    bad.insert("objects".into(), "- objectName: signing\n  objectType: key\n  format: pfx\n".into());
    let error = plugin.provider().await.mount(provider_mount(&bad)).await.expect_err("key as pfx");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("format must fit objectType") && error.message().contains("objects[0]"));
    let with_password = json!([{ "secretKey": "tls.pfx", "remoteRef": { "name": "web-pfx", "format": "pfx",
        "pfxPassword": { "secretRef": { "name": "pw", "key": "password" } } } }]);
    apply_vault_secret(&ns, &azure, "app-web", "protected", json!({ "data": with_password })).await;
    let mut protected = pod_attributes(&ns, "web", "web-2", &[AZURE_AUDIENCE]).await;
    protected.insert("vaultsync.dev/vaultsecret".into(), "protected".into());
    let target = plugin.target("protected");
    let error = node.node_publish_volume(publish_request("csi-p", &target, protected)).await.expect_err("a password");
    assert!(error.message().contains("data[0]") && error.message().contains("PFX passwords"), "{error:?}");
    assert!(!target.exists(), "nothing was made");
    plugin.stop().await;
}
