//! The CRD YAML in `crds/` is generated from the Rust types; this test fails when it is stale.
//! `make crds` (VAULTSYNC_UPDATE_CRDS=1) writes it anew.

use std::path::PathBuf;

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

#[test]
fn crds_in_the_repository_match_the_rust_types() {
    let update = std::env::var_os("VAULTSYNC_UPDATE_CRDS").is_some();
    let mut stale = Vec::new();
    for crd in vaultsync_api::crds() {
        let file = crd_dir().join(format!("{}.yaml", crd.metadata.name.as_deref().expect("crd name")));
        let yaml = format!(
            "# Generated from the Rust types in api/ by `make crds`; do not edit.\n{}",
            serde_yaml::to_string(&crd).expect("yaml")
        );
        if update {
            std::fs::write(&file, &yaml).expect("writing crds/");
        } else if std::fs::read_to_string(&file).ok().as_deref() != Some(yaml.as_str()) {
            stale.push(file.display().to_string());
        }
    }
    assert!(stale.is_empty(), "CRD YAML is stale, run `make crds`: {stale:?}");
}
