//! `why NAME`: walks a VaultSecret's chain in the order the operator does — the store exists, the namespace may use
//! it, the objects are allowed (the stores crate's own tenancy rules), the store is Ready, the target Secret is
//! vaultsync's to write, then what the operator reported (the vault's answer, templates, values) — and says in one
//! line what is wrong first and how to fix it.

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{Api, ResourceExt as _};
use vaultsync_api::{
    ClusterVaultStore, VaultSecret, VaultStore,
    secret::{CreationPolicy, StoreKind},
};
use vaultsync_operator::vaultsecret::OWNER_LABEL;
use vaultsync_stores::{StoreError, tenancy};

use crate::{Kube, Output, ready, status};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VaultSecret.
    pub name: String,
}

/// What is wrong, and how to fix it.
#[derive(Debug, PartialEq, Eq)]
pub struct Diagnosis {
    /// A short CamelCase name of the problem (`Ready` when nothing is wrong).
    pub reason: String,
    pub line: String,
}

fn problem(reason: &str, what: String, fix: &str) -> Diagnosis {
    Diagnosis { reason: reason.into(), line: format!("{what}: {fix}") }
}

pub async fn run(kube: &Kube, args: &Args) -> anyhow::Result<Output> {
    let diagnosis = diagnose(kube, &args.name).await?;
    let code = i32::from(diagnosis.reason != "Ready");
    Ok(Output { text: format!("{}\n", diagnosis.line), code })
}

/// Where a VaultSecret's chain breaks first.
pub async fn diagnose(kube: &Kube, name: &str) -> anyhow::Result<Diagnosis> {
    let ns = kube.namespace.as_str();
    let Some(vs) = Api::<VaultSecret>::namespaced(kube.client.clone(), ns).get_opt(name).await? else {
        return Ok(problem(
            "VaultSecretNotFound",
            format!("VaultSecret {ns}/{name} does not exist"),
            "check the name and namespace (kubectl get vaultsecrets -A)",
        ));
    };
    if let Some(found) = check_store(kube, &vs).await? {
        return Ok(found);
    }
    if let Some(found) = check_target(kube, &vs).await? {
        return Ok(found);
    }
    Ok(from_status(&vs))
}

/// The store: it exists, the namespace may use it and read the objects named, and it is Ready.
async fn check_store(kube: &Kube, vs: &VaultSecret) -> anyhow::Result<Option<Diagnosis>> {
    let (ns, store_name) = (kube.namespace.as_str(), vs.spec.store_ref.name.as_str());
    let (key, conditions) = match vs.spec.store_ref.kind {
        StoreKind::VaultStore => {
            let key = format!("VaultStore/{ns}/{store_name}");
            match Api::<VaultStore>::namespaced(kube.client.clone(), ns).get_opt(store_name).await? {
                None => return Ok(Some(missing_store(&key, ns))),
                Some(store) => (key, store.status.unwrap_or_default().conditions),
            }
        }
        StoreKind::ClusterVaultStore => {
            let key = format!("ClusterVaultStore/{store_name}");
            let Some(store) = Api::<ClusterVaultStore>::all(kube.client.clone()).get_opt(store_name).await? else {
                return Ok(Some(missing_store(&key, ns)));
            };
            let rules = &store.spec.conditions;
            let labels = if tenancy::needs_labels(rules, ns) {
                match Api::<Namespace>::all(kube.client.clone()).get(ns).await {
                    Ok(namespace) => Some(namespace.labels().clone()),
                    // Without the namespace's labels the selectors cannot be judged here; the operator's condition
                    // still says whether it was admitted.
                    Err(kube::Error::Api(e)) if e.code == 403 => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            } else {
                None
            };
            let allowed = match tenancy::admit(&key, rules, ns, labels.as_ref()) {
                Ok(allowed) => allowed,
                Err(refused) => return Ok(Some(refusal(&refused, store_name))),
            };
            for object in objects(vs) {
                if let Err(refused) = tenancy::check_object(&key, ns, allowed.as_deref(), object) {
                    return Ok(Some(refusal(&refused, store_name)));
                }
            }
            (key, store.status.unwrap_or_default().conditions)
        }
    };
    Ok(match ready(&conditions) {
        Some(c) if c.status == "False" => Some(problem(
            "StoreNotReady",
            format!("{key} is not Ready ({}: {})", c.reason, c.message),
            "fix the store's provider or identity as the message says (kubectl vaultsync status shows every store)",
        )),
        _ => None,
    })
}

fn missing_store(key: &str, ns: &str) -> Diagnosis {
    problem(
        "StoreNotFound",
        format!("{key} does not exist"),
        &format!(
            "create it, or point spec.storeRef at an existing store (kubectl get vaultstores -n {ns}; kubectl get \
             clustervaultstores)"
        ),
    )
}

/// A refusal by the store's tenancy rules, with the change that lifts it.
fn refusal(refused: &StoreError, store: &str) -> Diagnosis {
    let fix = match refused {
        StoreError::NamespaceNotAllowed { namespace, .. } => format!(
            "add {namespace} to spec.conditions[].namespaces of ClusterVaultStore {store}, or label the namespace to \
             match one of its namespaceSelectors"
        ),
        StoreError::ObjectNotAllowed { namespace, object, .. } => format!(
            "add a glob matching {object} to allowedObjects of the condition that admits {namespace} in \
             ClusterVaultStore {store}, or read an object it allows"
        ),
        _ => "see the store".into(),
    };
    problem(refused.reason(), refused.to_string(), &fix)
}

/// The object names a VaultSecret reads directly (`dataFrom.find` lists, so it is checked by the operator).
fn objects(vs: &VaultSecret) -> Vec<&str> {
    let data = vs.spec.data.iter().map(|d| d.remote_ref.name.as_str());
    data.chain(vs.spec.data_from.iter().filter_map(|d| d.extract.as_ref()).map(|e| e.name.as_str())).collect()
}

/// The target Secret: absent, ours, or merged into with `creationPolicy: Merge`.
async fn check_target(kube: &Kube, vs: &VaultSecret) -> anyhow::Result<Option<Diagnosis>> {
    let secret = status::secret_name(vs);
    let found = match Api::<Secret>::namespaced(kube.client.clone(), &kube.namespace).get_metadata_opt(&secret).await {
        Ok(found) => found,
        // A user who may not read Secrets still gets the rest of the chain.
        Err(kube::Error::Api(e)) if e.code == 403 => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let policy = vs.spec.target.creation_policy;
    if policy == CreationPolicy::None {
        return Ok(None); // no Secret to write, so none to own
    }
    Ok(match found {
        None if policy == CreationPolicy::Merge => Some(problem(
            "TargetNotFound",
            format!("creationPolicy Merge merges into Secret {secret}, which does not exist"),
            "create the Secret, or use creationPolicy Owner to have vaultsync create it",
        )),
        Some(meta) if policy != CreationPolicy::Merge && meta.labels().get(OWNER_LABEL) != Some(&vs.name_any()) => {
            Some(problem(
                "OwnershipConflict",
                format!("Secret {secret} exists and was not created by this VaultSecret, so vaultsync leaves it alone"),
                "delete that Secret (vaultsync then creates its own), set target.name to another Secret, or use \
                 creationPolicy Merge to add vaultsync's keys to it",
            ))
        }
        _ => None,
    })
}

/// What the operator reported.
fn from_status(vs: &VaultSecret) -> Diagnosis {
    let ns = vs.namespace().unwrap_or_default();
    let name = vs.name_any();
    let status = vs.status.clone().unwrap_or_default();
    let Some(condition) = ready(&status.conditions) else {
        return problem(
            "NoStatus",
            format!("the operator has not reported on VaultSecret {ns}/{name} yet"),
            &format!(
                "check that the operator runs and watches namespace {ns} (kubectl get pods -n vaultsync-system; its \
                 --watch-namespace)"
            ),
        );
    };
    let stale = status.observed_generation.is_some_and(|g| Some(g) < vs.metadata.generation);
    if condition.status == "True" {
        let at = status.synced_at.as_deref().unwrap_or("-");
        let (secret, store) = (status::secret_name(vs), status::store_label(vs));
        let pending = if stale { "; the operator has not yet synced the latest spec" } else { "" };
        return Diagnosis {
            reason: if stale { "Pending".into() } else { "Ready".into() },
            line: format!("nothing is wrong: {ns}/{name} wrote Secret {secret} from {store}, last at {at}{pending}"),
        };
    }
    let fix = match condition.reason.as_str() {
        "NotFound" => "create the object in the vault, or fix remoteRef.name / version (a pinned version must exist)",
        "Disabled" | "Expired" | "NotYetValid" => {
            "enable or renew the object's version in the vault, or pin another version"
        }
        "Forbidden" => {
            "grant the store's identity read access to the object (Key Vault: Key Vault Secrets User; \
                        OpenBao: the role's policy)"
        }
        "AuthenticationFailed" | "IdentityNotAllowed" | "MissingCredential" => {
            "fix the store's identity: its federated credential, client secret or role"
        }
        "Throttled" | "BackendUnavailable" | "BackendError" => {
            "the vault is unreachable or throttling; the operator retries on its own, check the vault and the network"
        }
        "TemplateError" => {
            "fix the template; check it locally with kubectl vaultsync render -f VAULTSECRET --values \
                            VALUES"
        }
        "InvalidValue" | "InvalidCertificate" | "WrongPassword" => {
            "the value does not fit property, decoding or format; check it with kubectl vaultsync render"
        }
        "OwnershipConflict" => "delete the other Secret, set target.name, or use creationPolicy Merge",
        "InvalidSpec" | "KeyConflict" | "NoObjectsFound" => "fix the VaultSecret's spec as the message says",
        "PasswordNotFound" => "create the password Secret the spec names, with that key",
        _ => "see the message; kubectl describe vaultsecret shows the operator's Events",
    };
    problem(&condition.reason, format!("{} ({})", condition.message, condition.reason), fix)
}
