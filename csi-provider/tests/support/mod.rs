//! Shared setup for the CSI tests: the plugin running in process on sockets in a folder of its
//! own (removed, with every mount under it, when the test ends, also on failure), gRPC clients on
//! those sockets, pods (service accounts and real TokenRequest tokens) on the shared control
//! plane, and the Key Vault + Entra test servers and OpenBao set up for a pod's identity.

#![allow(dead_code, unused_imports)] // each test binary uses a different part

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Parser as _;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use serde_json::{Value, json};
use tonic::transport::Channel;
use vaultsync_csi::{
    params::{POD_NAME, POD_NAMESPACE, POD_UID, SERVICE_ACCOUNT, TOKENS},
    proto::{
        csi::{
            NodePublishVolumeRequest, NodeUnpublishVolumeRequest, VolumeCapability, identity_client::IdentityClient,
            node_client::NodeClient, volume_capability,
        },
        provider::csi_driver_provider_client::CsiDriverProviderClient,
    },
};
use vaultsync_e2e::{
    TestNamespace,
    entra::{ClientSecret, EntraServer, Federation},
    eventually,
    keyvault::KeyVaultServer,
    service_account_token,
    tls::TestCa,
};

pub const AZURE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The Key Vault name SecretProviderClasses use; the plugin maps it to the test server.
pub const VAULT_NAME: &str = "kv-test";
pub const TENANT: &str = "tenant-1";

// === Logs ===

pub use vaultsync_e2e::logs::{assert_free_of as assert_logs_free_of, capture as capture_logs, text as logs};

// === The plugin ===

/// The plugin running in process, serving both modes in a folder of its own.
pub struct Plugin {
    pub dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Plugin {
    /// Starts the plugin with the sockets in a new folder and `extra` flags (the inline forms only).
    pub async fn start(extra: &[String]) -> Plugin {
        Self::start_with(extra, None, &[]).await
    }

    /// Starts the plugin trusting `ca_pem` too (OpenBao's own CA).
    pub async fn start_trusting(extra: &[String], ca_pem: &str) -> Plugin {
        Self::start_with(extra, None, &[ca_pem]).await
    }

    /// Starts the plugin serving the store forms too, resolving stores with `client`.
    pub async fn start_with_stores(extra: &[String], client: kube::Client) -> Plugin {
        Self::start_with(extra, Some(client), &[]).await
    }

    async fn start_with(extra: &[String], client: Option<kube::Client>, more_cas: &[&str]) -> Plugin {
        capture_logs();
        vaultsync_e2e::tls::install_crypto_provider();
        let dir = std::env::temp_dir().join(format!("vaultsync-csi-{}", &uuid_hex()[..12]));
        std::fs::create_dir_all(dir.join("targets")).expect("creating the plugin folder");
        let bundle = std::iter::once(TestCa::shared().ca_pem()).chain(more_cas.iter().copied()).collect::<Vec<_>>();
        std::fs::write(dir.join("ca.pem"), bundle.join("\n")).expect("writing the CA bundle");
        let mut argv: Vec<String> = vec![
            "vaultsync-csi".into(),
            "--provider-dir".into(),
            dir.join("providers").display().to_string(),
            "--csi-endpoint".into(),
            format!("unix://{}", dir.join("csi.sock").display()),
            "--node-id".into(),
            "test-node".into(),
            "--ca-bundle-file".into(),
            dir.join("ca.pem").display().to_string(),
        ];
        argv.extend(extra.iter().cloned());
        let args = vaultsync_csi::Args::parse_from(argv);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = vaultsync_csi::metrics::Metrics::new();
        let inline = std::sync::Arc::new(vaultsync_csi::inline_reader(&args, &metrics).expect("the inline reader"));
        let reader: std::sync::Arc<dyn vaultsync_csi::reader::VaultReader> = match client {
            Some(client) => std::sync::Arc::new(vaultsync_csi::store_reader(&args, client, inline, &metrics)),
            None => inline,
        };
        let task = tokio::spawn(vaultsync_csi::run_with_reader(args, reader, metrics, async move {
            let _ = stopped.await;
        }));
        let plugin = Plugin { dir, stop: Some(stop), task: Some(task) };
        let (provider, csi) = (plugin.provider_socket(), plugin.csi_socket());
        eventually(Duration::from_secs(10), "the plugin's sockets", || {
            let ready = provider.exists() && csi.exists();
            async move { ready.then_some(()) }
        })
        .await;
        plugin
    }

    pub fn provider_socket(&self) -> PathBuf {
        self.dir.join("providers/vaultsync.sock")
    }

    pub fn csi_socket(&self) -> PathBuf {
        self.dir.join("csi.sock")
    }

    /// A new target path (not created: the plugin creates it).
    pub fn target(&self, name: &str) -> PathBuf {
        self.dir.join("targets").join(name)
    }

    pub async fn provider(&self) -> CsiDriverProviderClient<Channel> {
        CsiDriverProviderClient::new(unix_channel(&self.provider_socket()).await)
    }

    pub async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(unix_channel(&self.csi_socket()).await)
    }

    pub async fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(unix_channel(&self.csi_socket()).await)
    }

    /// Stops the plugin and waits for it; its sockets are gone afterwards.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the plugin task").expect("the plugin stopped cleanly");
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        unmount_all_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Unmounts whatever is mounted under `dir` (deepest first), so a failed test leaves no mount.
pub fn unmount_all_under(dir: &Path) {
    let Ok(points) = vaultsync_csi::mount::mount_points() else { return };
    let mut under: Vec<PathBuf> = points.into_iter().filter(|p| p.starts_with(dir)).collect();
    under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in under {
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn uuid_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A gRPC channel over a unix socket.
pub async fn unix_channel(path: &Path) -> Channel {
    vaultsync_csi::server::connect(path).await.expect("connecting to the unix socket")
}

// === Pods ===

/// Creates the service account `name` in the test namespace.
pub async fn service_account(ns: &TestNamespace, name: &str) {
    let account =
        ServiceAccount { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() };
    ns.api::<ServiceAccount>().create(&PostParams::default(), &account).await.expect("creating a service account");
}

/// What kubelet tells about a pod (`podInfoOnMount`), with real tokens of `account` for `audiences`.
pub async fn pod_attributes(
    ns: &TestNamespace,
    account: &str,
    pod: &str,
    audiences: &[&str],
) -> BTreeMap<String, String> {
    let accounts: Api<ServiceAccount> = ns.api();
    let mut tokens = serde_json::Map::new();
    for audience in audiences {
        let token = service_account_token(&accounts, account, audience).await.expect("TokenRequest");
        tokens.insert(audience.to_string(), json!({ "token": token, "expirationTimestamp": "2099-01-01T00:00:00Z" }));
    }
    BTreeMap::from([
        (POD_NAME.to_string(), pod.to_string()),
        (POD_NAMESPACE.to_string(), ns.name.clone()),
        (POD_UID.to_string(), format!("uid-{pod}")),
        (SERVICE_ACCOUNT.to_string(), account.to_string()),
        (TOKENS.to_string(), Value::Object(tokens).to_string()),
        ("csi.storage.k8s.io/ephemeral".to_string(), "true".to_string()),
    ])
}

/// The tokens in attributes made by [`pod_attributes`], to scan logs for.
pub fn tokens_of(attributes: &BTreeMap<String, String>) -> Vec<String> {
    let tokens: Value = serde_json::from_str(&attributes[TOKENS]).expect("tokens JSON");
    tokens.as_object().into_iter().flatten().filter_map(|(_, t)| t["token"].as_str().map(str::to_string)).collect()
}

/// An Azure provider `objects` parameter: `(objectName, objectAlias)` pairs.
pub fn azure_objects(objects: &[(&str, Option<&str>)]) -> String {
    let mut yaml = String::from("array:\n");
    for (name, alias) in objects {
        yaml.push_str(&format!("  - |\n    objectName: {name}\n    objectType: secret\n"));
        if let Some(alias) = alias {
            yaml.push_str(&format!("    objectAlias: {alias}\n"));
        }
    }
    yaml
}

/// The parameters of a SecretProviderClass written for the Azure provider (workload identity).
pub fn azure_parameters(client_id: &str, objects: &[(&str, Option<&str>)]) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("keyvaultName".to_string(), VAULT_NAME.to_string()),
        ("tenantID".to_string(), TENANT.to_string()),
        ("clientID".to_string(), client_id.to_string()),
        ("objects".to_string(), azure_objects(objects)),
    ])
}

// === Vaults ===

/// The Key Vault and Entra test servers, with `accounts` (service account, client ID) federated.
pub struct Azure {
    pub vault: KeyVaultServer,
    pub entra: EntraServer,
}

impl Azure {
    pub async fn start(ns: &TestNamespace, accounts: &[(&str, &str)]) -> Azure {
        Self::start_with_secrets(ns, accounts, &[]).await
    }

    /// Also with service principals: `(client ID, client secret)` pairs.
    pub async fn start_with_secrets(ns: &TestNamespace, accounts: &[(&str, &str)], secrets: &[(&str, &str)]) -> Azure {
        let access_token = format!("kv-access-{}", ns.name);
        // The vault's 401 challenge names the tenant and the vault's own origin as the resource, which the Entra
        // server issues tokens for.
        let vault = KeyVaultServer::builder()
            .authority("https://login.microsoftonline.com", TENANT)
            .start()
            .await
            .expect("the Key Vault test server");
        let mut entra = EntraServer::builder(Some(ns.client.clone())).resource(vault.challenge_resource());
        for (account, client_id) in accounts {
            entra = entra.federation(Federation {
                client_id: client_id.to_string(),
                subject: format!("system:serviceaccount:{}:{account}", ns.name),
                audience: AZURE_AUDIENCE.into(),
                access_token: access_token.clone(),
            });
        }
        for (client_id, secret) in secrets {
            entra = entra.client_secret(ClientSecret {
                client_id: client_id.to_string(),
                secret: secret.to_string(),
                access_token: access_token.clone(),
            });
        }
        let entra = entra.start().await.expect("the Entra test server");
        vault.require_bearer(Some(access_token));
        Azure { vault, entra }
    }

    /// The plugin flags that point the Azure form at these servers.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--azure-authority-host".into(),
            self.entra.authority_host().to_string(),
            "--azure-vault-endpoint".into(),
            format!("{VAULT_NAME}={}", self.vault.url()),
        ]
    }
}

/// An Azure store on the test servers with workload identity. Its `serviceAccountRef` is the
/// operator's reader; the CSI side uses each pod's own account instead.
pub fn azure_store(azure: &Azure, client_id: &str, namespace: &str) -> serde_json::Value {
    json!({ "azureKeyVault": {
        "vaultUrl": azure.vault.url(), "tenantId": TENANT, "cloud": "Custom",
        "authorityHost": azure.entra.authority_host(), "caBundle": TestCa::shared().ca_pem(),
        "auth": { "workloadIdentity": {
            "serviceAccountRef": { "name": "operator-reader", "namespace": namespace }, "clientId": client_id } },
    }})
}

/// vaultsync's CRDs, the service account `web` in `ns`, and the Azure test servers with `web` federated as the
/// application `app-web`.
pub async fn web_on_azure(ns: &TestNamespace) -> Azure {
    vaultsync_e2e::install_crds(&ns.client).await;
    service_account(ns, "web").await;
    Azure::start(ns, &[("web", "app-web")]).await
}

/// VaultStore `kv` on the Azure test servers (workload identity with `client_id`, which the CSI side uses with each
/// pod's own account) and VaultSecret `name` reading from it: `spec` is its `data` and `dataFrom`.
pub async fn apply_vault_secret(ns: &TestNamespace, azure: &Azure, client_id: &str, name: &str, mut spec: Value) {
    use kube::api::{Patch, PatchParams};
    let apply = PatchParams::apply("test").force();
    let store = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultStore", "metadata": { "name": "kv" },
        "spec": { "provider": azure_store(azure, client_id, &ns.name) } });
    ns.api::<vaultsync_api::VaultStore>().patch("kv", &apply, &Patch::Apply(&store)).await.expect("VaultStore");
    spec["storeRef"] = json!({ "name": "kv" });
    let vault_secret = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret",
        "metadata": { "name": name }, "spec": spec });
    ns.api::<vaultsync_api::VaultSecret>()
        .patch(name, &apply, &Patch::Apply(&vault_secret))
        .await
        .expect("VaultSecret");
}

/// A provider Mount request as the Secrets Store CSI Driver sends it, without nodePublishSecretRef secrets.
pub fn provider_mount(attributes: &BTreeMap<String, String>) -> vaultsync_csi::proto::provider::MountRequest {
    vaultsync_csi::proto::provider::MountRequest {
        attributes: serde_json::to_string(attributes).expect("attributes JSON"),
        secrets: "{}".into(),
        target_path: "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/secrets/mount".into(),
        permission: "420".into(),
        current_object_version: Vec::new(),
    }
}

/// A NodePublishVolume request for an inline volume with `context` (pod info and parameters).
pub fn publish_request(volume: &str, target: &Path, context: BTreeMap<String, String>) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: volume.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_capability("")),
        readonly: true,
        volume_context: context.into_iter().collect(),
        ..Default::default()
    }
}

pub fn mount_capability(group: &str) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(volume_capability::MountVolume {
            fs_type: String::new(),
            mount_flags: Vec::new(),
            volume_mount_group: group.into(),
        })),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeReaderOnly as i32,
        }),
    }
}

pub fn unpublish_request(volume: &str, target: &Path) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest { volume_id: volume.into(), target_path: target.display().to_string() }
}

/// The files of a volume as a reader sees them: name -> contents, through `..data` (one payload).
pub fn read_volume(target: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(target).expect("listing the volume").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            continue;
        }
        files.insert(name, std::fs::read_to_string(entry.path()).expect("reading a file"));
    }
    files
}
