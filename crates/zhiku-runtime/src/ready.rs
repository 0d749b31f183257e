//! State a service fills in once its model or store is loaded.
//!
//! The server starts listening before the (slow) load so that health checks answer at once:
//! NOT_SERVING while loading, SERVING after. Handlers read the state through [`Ready::get`],
//! which answers UNAVAILABLE while it is not there yet.

use std::sync::Arc;

use tokio::sync::OnceCell;
use tonic::Status;

pub struct Ready<T> {
    what: &'static str,
    cell: Arc<OnceCell<T>>,
}

impl<T> Clone for Ready<T> {
    fn clone(&self) -> Self {
        Self {
            what: self.what,
            cell: self.cell.clone(),
        }
    }
}

impl<T> Ready<T> {
    /// `what` names the thing being loaded, for the UNAVAILABLE message ("model").
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            cell: Arc::new(OnceCell::new()),
        }
    }

    /// A cell that is ready from the start.
    pub fn with(what: &'static str, value: T) -> Self {
        Self {
            what,
            cell: Arc::new(OnceCell::new_with(Some(value))),
        }
    }

    /// Fills the cell; a second call is ignored (the first value stays).
    pub fn set(&self, value: T) {
        let _ = self.cell.set(value);
    }

    pub fn is_ready(&self) -> bool {
        self.cell.initialized()
    }

    pub fn get(&self) -> Result<&T, Status> {
        self.cell.get().ok_or_else(|| {
            Status::unavailable(format!(
                "the {} is still loading; retry when grpc.health.v1 says SERVING",
                self.what
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_until_set() {
        let ready: Ready<u32> = Ready::new("model");
        let err = ready.get().unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("model is still loading"));
        ready.set(7);
        ready.set(8);
        assert_eq!(*ready.get().unwrap(), 7);
    }
}
