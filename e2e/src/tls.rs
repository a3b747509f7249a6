//! Test certificates and HTTPS plumbing: one CA per test process that issues loopback server
//! certificates, so test servers speak real TLS and clients trust them through a CA bundle,
//! never by turning verification off.

use std::{net::SocketAddr, sync::Arc, sync::LazyLock};

use anyhow::Context as _;
use hyper_util::{rt::TokioExecutor, rt::TokioIo, server::conn::auto, service::TowerToHyperService};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::net::TcpListener;

/// Installs the process-wide rustls crypto provider (ring) once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A certificate authority for test servers.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

/// A server certificate chain and its private key, PEM encoded.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
}

static SHARED: LazyLock<TestCa> = LazyLock::new(|| TestCa::new().expect("creating the test CA"));

impl TestCa {
    /// The CA shared by every test server of this process.
    pub fn shared() -> &'static TestCa {
        &SHARED
    }

    pub fn new() -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, "vaultsync test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self { ca_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// The CA certificate, PEM encoded: the bundle clients must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Issues a certificate for `localhost` and `127.0.0.1`.
    pub fn issue_loopback(&self) -> anyhow::Result<ServerCert> {
        self.issue_loopback_for(&[])
    }

    /// Issues a certificate for `localhost`, `127.0.0.1` and `names` (such as `vault.localhost`).
    pub fn issue_loopback_for(&self, names: &[&str]) -> anyhow::Result<ServerCert> {
        let mut all = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        all.extend(names.iter().filter(|n| !all.iter().any(|a| a == *n)).map(|n| n.to_string()).collect::<Vec<_>>());
        let params = CertificateParams::new(all)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A rustls server configuration for a loopback server.
    pub fn loopback_server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        self.loopback_server_config_for(&[])
    }

    /// A rustls server configuration for a loopback server also known as `names`.
    pub fn loopback_server_config_for(&self, names: &[&str]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        install_crypto_provider();
        let issued = self.issue_loopback_for(names)?;
        let certs = rustls_pki_types_from_pem(&issued.cert_pem)?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
            .context("parsing the test server key")?;
        let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A reqwest client that trusts this CA (and nothing else).
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        install_crypto_provider();
        let cert = reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?;
        Ok(reqwest::Client::builder().tls_certs_only([cert]).build()?)
    }
}

fn rustls_pki_types_from_pem(pem: &str) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    Ok(rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?)
}

use rustls::pki_types::pem::PemObject as _;

/// Serves `app` over HTTPS on `listener` until the task is dropped or aborted.
pub async fn serve_https(listener: TcpListener, config: Arc<rustls::ServerConfig>, app: axum::Router) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let service = TowerToHyperService::new(app);
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

/// Binds a listener on a free loopback port.
pub async fn loopback_listener() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// A self-signed RSA certificate and its private key in one PEM, as a service principal's
/// certificate credential would be stored. Made with the openssl command (RSA key generation is
/// not something the test CA's crypto backend does).
pub fn rsa_client_certificate_pem(common_name: &str) -> anyhow::Result<String> {
    let dir =
        std::env::temp_dir().join(format!("vaultsync-rsa-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let output = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj"])
        .arg(format!("/CN={common_name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl (needed to make an RSA test certificate)")?;
    anyhow::ensure!(output.status.success(), "openssl failed: {}", String::from_utf8_lossy(&output.stderr));
    let pem = std::fs::read_to_string(&cert)? + &std::fs::read_to_string(&key)?;
    std::fs::remove_dir_all(&dir)?;
    Ok(pem)
}
