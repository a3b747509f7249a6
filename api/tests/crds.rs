//! The CRD YAML in `crds/` (and its copy in the Helm chart, `charts/vaultsync/crds/`) is generated from the Rust
//! types; this test fails when either is stale. `make crds` (VAULTSYNC_UPDATE_CRDS=1) writes both anew.

use std::path::PathBuf;

/// Every folder that holds the generated CRD YAML: the repository's `crds/` and the chart's copy.
fn crd_dirs() -> [PathBuf; 2] {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    [root.join("crds"), root.join("charts/vaultsync/crds")]
}

#[test]
fn crds_in_the_repository_match_the_rust_types() {
    let update = std::env::var_os("VAULTSYNC_UPDATE_CRDS").is_some();
    let mut stale = Vec::new();
    for crd in vaultsync_api::crds() {
        let name = format!("{}.yaml", crd.metadata.name.as_deref().expect("crd name"));
        let yaml = format!(
            "# Generated from the Rust types in api/ by `make crds`; do not edit.\n{}",
            serde_yaml::to_string(&crd).expect("yaml")
        );
        for dir in crd_dirs() {
            let file = dir.join(&name);
            if update {
                std::fs::create_dir_all(&dir).expect("creating the CRD folder");
                std::fs::write(&file, &yaml).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
            } else if std::fs::read_to_string(&file).ok().as_deref() != Some(yaml.as_str()) {
                stale.push(file.display().to_string());
            }
        }
    }
    assert!(stale.is_empty(), "CRD YAML is stale, run `make crds`: {stale:?}");
}
