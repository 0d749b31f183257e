//! SHA-256, streamed: a base model file's (recorded in an adapter) and a dataset's (recorded
//! in a checkpoint).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::TuneError;

/// The lowercase hex SHA-256 of the file at `path`, read in blocks (a GGUF base is GBs).
pub fn sha256_file(path: &Path) -> Result<String, TuneError> {
    let io = |source| TuneError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut block) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        hasher.update(&block[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// A running SHA-256 that ends as lowercase hex.
#[derive(Default)]
pub(crate) struct HexSha256(Sha256);

impl HexSha256 {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub(crate) fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
