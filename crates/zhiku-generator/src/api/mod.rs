//! gRPC handlers, one file per service.

pub mod generator_api;

pub use generator_api::GeneratorApi;
