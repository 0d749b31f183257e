//! Qdrant processes started by a test from the Qdrant binary: a cluster on loopback whose
//! nodes can be killed and restarted on their ports and storage. Used by the retriever's
//! cluster test and, through `#[path]`, by the end-to-end one (`tests/qdrant_cluster.rs`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Says on stderr, past the test harness's capture, that `what` was skipped and why: a
/// skipped test must not read as a plain `ok`.
pub fn skipped(what: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {what}: {why}");
}

/// The Qdrant binary: `ZHIKU_TEST_QDRANT_BIN`, else `ZHIKU_QDRANT_BIN`, else
/// `shared/qdrant/qdrant` in the nearest directory above the testing package that has one
/// (`../shared` beside the repository); None when that file is not there (so a variable
/// naming a missing file turns the tests off). The package may be the retriever or the
/// end-to-end one, which includes this file too.
pub fn binary() -> Option<PathBuf> {
    let path = match std::env::var_os("ZHIKU_TEST_QDRANT_BIN")
        .or_else(|| std::env::var_os("ZHIKU_QDRANT_BIN"))
    {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|dir| dir.join("shared/qdrant/qdrant"))
            .find(|path| path.is_file())?,
    };
    path.is_file().then_some(path)
}

// The end-to-end tests' free_port, shared by path: this crate cannot depend on zhiku-e2e.
#[path = "../../../../tests/support/port.rs"]
mod port;
pub use port::free_port;

/// One Qdrant process of a cluster on loopback: its ports and storage outlive restarts.
pub struct QdrantNode {
    pub index: usize,
    pub http_port: u16,
    pub grpc_port: u16,
    pub p2p_port: u16,
    binary: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

impl QdrantNode {
    /// Starts `n` nodes in distributed mode under `dir`: node 0 bootstraps the cluster, the
    /// others join it. Waits until every node is ready and sees all `n` peers.
    pub fn cluster(binary: &Path, dir: &Path, n: usize) -> Vec<QdrantNode> {
        let mut nodes: Vec<QdrantNode> = (0..n)
            .map(|index| {
                let node_dir = dir.join(format!("node{index}"));
                std::fs::create_dir_all(&node_dir).expect("node directory");
                QdrantNode {
                    index,
                    http_port: free_port(),
                    grpc_port: free_port(),
                    p2p_port: free_port(),
                    binary: binary.to_path_buf(),
                    dir: node_dir,
                    child: None,
                }
            })
            .collect();
        let bootstrap = nodes[0].p2p_uri();
        nodes[0].spawn(None);
        nodes[0].wait_ready(Duration::from_secs(60));
        for node in nodes.iter_mut().skip(1) {
            node.spawn(Some(&bootstrap));
            // One at a time: each joins through a consensus change.
            node.wait_ready(Duration::from_secs(60));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for node in &nodes {
            loop {
                let cluster = node.get("/cluster");
                let peers = cluster["result"]["peers"]
                    .as_object()
                    .map_or(0, |p| p.len());
                let leader = !cluster["result"]["raft_info"]["leader"].is_null();
                if peers == n && leader {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} sees {peers} of {n} peers: {cluster}\n{}",
                    node.index,
                    node.logs()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        nodes
    }

    fn p2p_uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.p2p_port)
    }

    /// The gRPC URL zhiku talks to.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    fn spawn(&mut self, bootstrap: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("qdrant.log"))
            .expect("log file");
        let mut command = Command::new(&self.binary);
        command
            .current_dir(&self.dir)
            .env("QDRANT__STORAGE__STORAGE_PATH", self.dir.join("storage"))
            .env(
                "QDRANT__STORAGE__SNAPSHOTS_PATH",
                self.dir.join("snapshots"),
            )
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__HTTP_PORT", self.http_port.to_string())
            .env("QDRANT__SERVICE__GRPC_PORT", self.grpc_port.to_string())
            .env("QDRANT__CLUSTER__ENABLED", "true")
            .env("QDRANT__CLUSTER__P2P__PORT", self.p2p_port.to_string())
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .env("QDRANT__LOG_LEVEL", "INFO")
            .arg("--uri")
            .arg(self.p2p_uri())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        if let Some(b) = bootstrap {
            command.arg("--bootstrap").arg(b);
        }
        self.child = Some(command.spawn().expect("starting qdrant"));
    }

    /// Waits until the node answers `/readyz`.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while http(self.http_port, "GET", "/readyz", None).is_none() {
            assert!(
                Instant::now() < deadline,
                "qdrant node {} not ready after {timeout:?}\n{}",
                self.index,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: no chance to flush or leave the cluster.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again on its ports and storage (it rejoins from its Raft state).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn(None);
        self.wait_ready(Duration::from_secs(60));
    }

    /// The node's Raft peer id.
    pub fn peer_id(&self) -> u64 {
        self.get("/cluster")["result"]["peer_id"]
            .as_u64()
            .expect("peer id")
    }

    /// GET `path` of the REST API as JSON (Null when the node does not answer).
    pub fn get(&self, path: &str) -> serde_json::Value {
        http(self.http_port, "GET", path, None).unwrap_or_default()
    }

    /// POST `body` to `path` of the REST API (Null when the node does not answer).
    pub fn post(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        http(self.http_port, "POST", path, Some(body)).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("qdrant.log")).unwrap_or_default()
    }
}

impl Drop for QdrantNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Of a collection on `nodes`: (replicas that every answering node sees Active, every node's
/// view of every replica).
pub fn replica_states(nodes: &[QdrantNode], collection: &str) -> (usize, Vec<String>) {
    let mut views: std::collections::BTreeMap<(u64, u64), Vec<String>> = Default::default();
    for node in nodes {
        let info = node.get(&format!("/collections/{collection}/cluster"));
        let me = info["result"]["peer_id"].as_u64();
        let local = info["result"]["local_shards"]
            .as_array()
            .into_iter()
            .flatten();
        let remote = info["result"]["remote_shards"]
            .as_array()
            .into_iter()
            .flatten();
        for (shard, peer) in local
            .map(|s| (s, me))
            .chain(remote.map(|s| (s, s["peer_id"].as_u64())))
        {
            let (Some(id), Some(peer)) = (shard["shard_id"].as_u64(), peer) else {
                continue;
            };
            let state = shard["state"].as_str().unwrap_or("?").to_string();
            views.entry((id, peer)).or_default().push(state);
        }
    }
    let active = views
        .values()
        .filter(|states| states.iter().all(|s| s == "Active"))
        .count();
    let all = views
        .iter()
        .map(|((shard, peer), states)| format!("shard {shard} on {peer}: {states:?}"))
        .collect();
    (active, all)
}

/// Every node counts `expected` points in `collection` (exact counts, cluster-wide).
pub fn assert_every_node_counts(nodes: &[QdrantNode], collection: &str, expected: u64) {
    for node in nodes {
        let count = node.post(
            &format!("/collections/{collection}/points/count"),
            &serde_json::json!({"exact": true}),
        );
        assert_eq!(
            count["result"]["count"].as_u64(),
            Some(expected),
            "node {}: {count}",
            node.index
        );
    }
}

/// A minimal HTTP/1.0 request to the REST API on loopback; the JSON body of a 2xx answer.
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Option<serde_json::Value> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let ok = head
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'));
    if !ok {
        return None;
    }
    Some(serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.to_string())))
}
