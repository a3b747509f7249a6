//! `make demo`: starts the local control plane and the backend servers, prints how to reach
//! them, and keeps them running until Ctrl-C.

use vaultsync_e2e::{ControlPlane, keyvault::KeyVaultServer, openbao, process::tool};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let cp = ControlPlane::shared();
    let bao = openbao::OpenBao::shared();
    let vault = KeyVaultServer::start().await?;
    let ca = std::env::temp_dir().join(format!("vaultsync-demo-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, vault.ca_pem())?;
    let seeded = vault.set_secret("demo-db-password", "demo-value-1");

    println!("vaultsync test environment is up ({:.1}s):", started.elapsed().as_secs_f64());
    println!();
    println!("  Kubernetes   export KUBECONFIG={}", cp.kubeconfig_path().display());
    println!("               alias kubectl={}", tool("kubectl")?.display());
    println!("               kubectl get namespaces");
    println!("  Key Vault    {} (secrets API 7.2-7.6; CA bundle {})", vault.url(), ca.display());
    println!("               seeded secret demo-db-password, version {seeded}");
    println!("  OpenBao      {} (dev server, KV v2 at secret/)", bao.addr);
    println!(
        "               BAO_ADDR={} BAO_TOKEN={} {} kv list secret/",
        bao.addr,
        openbao::ROOT_TOKEN,
        openbao::bao_binary().display()
    );
    println!();
    println!("Press Ctrl-C to stop; everything started here is stopped and its data removed.");
    tokio::signal::ctrl_c().await?;
    let _ = std::fs::remove_file(&ca);
    Ok(())
}
