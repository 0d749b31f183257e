//! TLS to a Qdrant server with a CA of our own (`--qdrant-ca-cert`): a Qdrant process with
//! TLS on, its certificate signed by a CA made here with the `openssl` command. Connecting
//! with the CA file works; without it, the server's certificate is refused. Prints SKIPPED
//! without the Qdrant binary (../shared/qdrant/qdrant or ZHIKU_TEST_QDRANT_BIN) or openssl.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::qdrant_node::{binary, free_port, skipped};
use zhiku_retriever::store::qdrant::{QdrantSettings, QdrantStore};
use zhiku_retriever::{RetrieverError, VectorStore};

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A CA (ca.pem) and a certificate for 127.0.0.1 it signed (server.pem, server.key).
fn make_certificates(dir: &Path) -> bool {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .expect("ext.cnf");
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=zhiku test CA",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    ];
    steps.iter().all(|args| openssl(dir, args))
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_file_besides_the_system_roots() {
    const WHAT: &str = "the Qdrant TLS test";
    let Some(binary) = binary() else {
        skipped(
            WHAT,
            "no Qdrant binary (../shared/qdrant/qdrant, or set ZHIKU_TEST_QDRANT_BIN)",
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    if !make_certificates(dir.path()) {
        skipped(WHAT, "the openssl command is missing or failed");
        return;
    }
    let (http, grpc) = (free_port(), free_port());
    let log = std::fs::File::create(dir.path().join("qdrant.log")).expect("log");
    let _server = Server(
        Command::new(&binary)
            .current_dir(dir.path())
            .env("QDRANT__STORAGE__STORAGE_PATH", dir.path().join("storage"))
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__HTTP_PORT", http.to_string())
            .env("QDRANT__SERVICE__GRPC_PORT", grpc.to_string())
            .env("QDRANT__SERVICE__ENABLE_TLS", "true")
            .env("QDRANT__TLS__CERT", dir.path().join("server.pem"))
            .env("QDRANT__TLS__KEY", dir.path().join("server.key"))
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starts qdrant"),
    );
    let url = format!("https://127.0.0.1:{grpc}");
    let settings = QdrantSettings {
        ca_cert: Some(dir.path().join("ca.pem")),
        collection_prefix: "zhiku_tls_".into(),
        retries: 0,
        ..QdrantSettings::new(url.clone())
    };
    // Up to a minute for the server to listen.
    let deadline = Instant::now() + Duration::from_secs(60);
    let store = loop {
        match QdrantStore::connect(settings.clone()).await {
            Ok(store) => break store,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!(
                "no TLS connection with the CA file: {e}\n{}",
                std::fs::read_to_string(dir.path().join("qdrant.log")).unwrap_or_default()
            ),
        }
    };
    assert!(store.kb_names().await.expect("lists over TLS").is_empty());

    // Without the CA file the certificate is not trusted: UNAVAILABLE, saying why.
    let err = QdrantStore::connect(QdrantSettings {
        ca_cert: None,
        ..settings.clone()
    })
    .await
    .err()
    .expect("an untrusted certificate must fail");
    assert!(matches!(err, RetrieverError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");

    // A CA file that is not one is refused up front.
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").expect("junk");
    let err = QdrantStore::connect(QdrantSettings {
        ca_cert: Some(dir.path().join("junk.pem")),
        ..settings.clone()
    })
    .await
    .err()
    .expect("junk CA");
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
    let err = QdrantStore::connect(QdrantSettings {
        ca_cert: Some(dir.path().join("missing.pem")),
        ..settings
    })
    .await
    .err()
    .expect("missing CA");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}
