//! gRPC handlers, one file per service.

pub mod orchestrator_api;

pub use orchestrator_api::OrchestratorApi;
