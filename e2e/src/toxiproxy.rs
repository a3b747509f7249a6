//! Toxiproxy (Shopify's TCP fault proxy, built by `scripts/build-toxiproxy.sh`), one server per test binary,
//! for putting faults between the operator and a vault or Entra: a proxy forwards a loopback port to a server,
//! and toxics (latency, connections cut after some bytes, resets, black holes) or disabling the proxy (refused
//! connections, open ones closed) make the faults. TLS passes through untouched, so clients still verify the
//! server they reach.
//!
//! The server's HTTP API (`/proxies`, `/proxies/{name}/toxics`) is what this module drives; its shapes are those
//! of Toxiproxy 2.x.

use std::{sync::LazyLock, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::process::{Supervised, free_port, log_dir, tool};

/// A running Toxiproxy server.
pub struct Toxiproxy {
    api: String,
    http: reqwest::Client,
    _process: Supervised,
}

static SHARED: LazyLock<Result<Toxiproxy, String>> = LazyLock::new(|| Toxiproxy::start().map_err(|e| format!("{e:#}")));

impl Toxiproxy {
    /// The server shared by every test of this binary, started on first use.
    pub fn shared() -> &'static Toxiproxy {
        match &*SHARED {
            Ok(t) => t,
            Err(e) => panic!("Toxiproxy did not start: {e}"),
        }
    }

    fn start() -> anyhow::Result<Self> {
        let program = tool("toxiproxy-server")?;
        let mut last_error = None;
        // A port found free can be taken before the server binds it; try a few.
        for _ in 0..3 {
            let port = free_port()?;
            let args = vec!["-host".to_string(), "127.0.0.1".to_string(), "-port".to_string(), port.to_string()];
            let mut process = Supervised::start("toxiproxy", &program, &args, &log_dir())?;
            let ready = process
                .wait_ready(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
            match ready {
                Ok(()) => {
                    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
                    return Ok(Self { api: format!("http://127.0.0.1:{port}"), http, _process: process });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.context("Toxiproxy did not start")?)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.api));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("{method} {path} to Toxiproxy"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("Toxiproxy answered {method} {path} with {status}: {text}");
        }
        Ok(if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text)? })
    }

    /// A new proxy named `name` (unique in this binary) forwarding a free loopback port to `upstream`
    /// (`host:port`).
    pub async fn proxy(&'static self, name: &str, upstream: &str) -> anyhow::Result<Proxy> {
        let body = json!({ "name": name, "listen": "127.0.0.1:0", "upstream": upstream, "enabled": true });
        let answer = self.call(reqwest::Method::POST, "/proxies", Some(body)).await?;
        let listen = answer["listen"].as_str().context("the proxy's listen address")?;
        let port = listen.rsplit(':').next().and_then(|p| p.parse().ok()).context("the proxy's port")?;
        Ok(Proxy { server: self, name: name.to_string(), port })
    }
}

/// The direction a toxic acts on: what the client sends (`Upstream`) or what the server answers (`Downstream`).
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Upstream,
    Downstream,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
        }
    }
}

/// A fault, as one of Toxiproxy's toxics.
#[derive(Clone, Copy, Debug)]
pub enum Toxic {
    /// Every chunk of data waits this long (plus up to `jitter`).
    Latency { latency: Duration, jitter: Duration },
    /// The connection is closed once this many bytes went through (an answer cut in the middle).
    LimitData { bytes: u64 },
    /// Connections are reset (TCP RST) after this long.
    ResetPeer { after: Duration },
    /// Data stops flowing; the connection is closed after `after` (zero: never), as a silent network would.
    Timeout { after: Duration },
}

impl Toxic {
    fn kind_and_attributes(self) -> (&'static str, Value) {
        match self {
            Toxic::Latency { latency, jitter } => {
                ("latency", json!({ "latency": latency.as_millis() as u64, "jitter": jitter.as_millis() as u64 }))
            }
            Toxic::LimitData { bytes } => ("limit_data", json!({ "bytes": bytes })),
            Toxic::ResetPeer { after } => ("reset_peer", json!({ "timeout": after.as_millis() as u64 })),
            Toxic::Timeout { after } => ("timeout", json!({ "timeout": after.as_millis() as u64 })),
        }
    }
}

/// One proxy of the shared server.
pub struct Proxy {
    server: &'static Toxiproxy,
    pub name: String,
    /// The loopback port clients connect to.
    pub port: u16,
}

impl Proxy {
    /// Refuses new connections and closes the open ones (a server that is down).
    pub async fn disable(&self) -> anyhow::Result<()> {
        self.set_enabled(false).await
    }

    /// Forwards again.
    pub async fn enable(&self) -> anyhow::Result<()> {
        self.set_enabled(true).await
    }

    async fn set_enabled(&self, enabled: bool) -> anyhow::Result<()> {
        let path = format!("/proxies/{}", self.name);
        self.server.call(reqwest::Method::POST, &path, Some(json!({ "enabled": enabled }))).await.map(drop)
    }

    /// Adds `toxic` under `name` on `stream`, for every connection.
    pub async fn add(&self, name: &str, stream: Stream, toxic: Toxic) -> anyhow::Result<()> {
        let (kind, attributes) = toxic.kind_and_attributes();
        let body = json!({ "name": name, "type": kind, "stream": stream.name(), "toxicity": 1.0,
            "attributes": attributes });
        self.server.call(reqwest::Method::POST, &format!("/proxies/{}/toxics", self.name), Some(body)).await.map(drop)
    }

    /// Removes the toxic `name`.
    pub async fn remove(&self, name: &str) -> anyhow::Result<()> {
        let path = format!("/proxies/{}/toxics/{name}", self.name);
        self.server.call(reqwest::Method::DELETE, &path, None).await.map(drop)
    }

    /// The toxics in place, by name.
    pub async fn toxics(&self) -> anyhow::Result<Vec<String>> {
        let answer = self.server.call(reqwest::Method::GET, &format!("/proxies/{}/toxics", self.name), None).await?;
        Ok(answer.as_array().into_iter().flatten().filter_map(|t| t["name"].as_str().map(String::from)).collect())
    }
}
