//! Handlers of `zhiku.v1.Generator` (proto/zhiku/v1/generator.proto).
//!
//! Not built yet: every RPC answers UNIMPLEMENTED with a message saying so; the service
//! already starts, serves health and reflection, so clients and deployments can be wired.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};
use zhiku_proto::v1::generator_server::Generator;
use zhiku_proto::v1::{
    CountTokensRequest, CountTokensResponse, GenerateRequest, GenerateResponse,
    GenerateStreamResponse, GeneratorInfoRequest, GeneratorInfoResponse,
};
use zhiku_runtime::error::unimplemented;

const SERVICE: &str = "zhiku.v1.Generator";

/// Why nothing works yet, appended to every UNIMPLEMENTED message.
pub const NOT_BUILT: &str = "the generator (GLM models on candle) is not built yet: see issue 4";

fn not_built(rpc: &str) -> Status {
    let status = unimplemented(SERVICE, rpc);
    Status::unimplemented(format!("{}; {NOT_BUILT}", status.message()))
}

#[derive(Debug, Clone, Default)]
pub struct GeneratorApi;

type GenerateStreamStreamType =
    Pin<Box<dyn Stream<Item = Result<GenerateStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Generator for GeneratorApi {
    async fn generate(
        &self,
        _request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        Err(not_built("Generate"))
    }

    type GenerateStreamStream = GenerateStreamStreamType;

    async fn generate_stream(
        &self,
        _request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        Err(not_built("GenerateStream"))
    }

    async fn count_tokens(
        &self,
        _request: Request<CountTokensRequest>,
    ) -> Result<Response<CountTokensResponse>, Status> {
        Err(not_built("CountTokens"))
    }

    async fn info(
        &self,
        _request: Request<GeneratorInfoRequest>,
    ) -> Result<Response<GeneratorInfoResponse>, Status> {
        Err(not_built("Info"))
    }
}
