//! gRPC handlers, one file per service.

pub mod error;
pub mod orchestrator_api;

pub use orchestrator_api::OrchestratorApi;
