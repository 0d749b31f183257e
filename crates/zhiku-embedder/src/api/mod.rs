//! gRPC handlers, one file per service.

pub mod embedder_api;

pub use embedder_api::EmbedderApi;
