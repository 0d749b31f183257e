//! gRPC handlers, one file per service.

pub mod retriever_api;

pub use retriever_api::RetrieverApi;
