//! Free loopback ports for tests that start servers. One file, included by path where a
//! test crate cannot depend on this one (the retriever's and the CLI's own tests).

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::{Mutex, PoisonError};

/// A loopback port that was free a moment ago, and that no earlier call in this process
/// returned: the kernel may hand a just-released port out again, and two servers of one
/// test given the same port fail to start (a retriever and `--metrics-listen` once did; a
/// Qdrant cluster takes nine ports in a row).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if given.insert(port) {
            return port;
        }
    }
}
