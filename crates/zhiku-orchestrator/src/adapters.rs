//! Knowledge bases with their own LoRA adapter. `CreateKnowledgeBase` with an
//! `adapter_path` has the generator load the adapter at once (`Generator.LoadAdapter`), so
//! a new knowledge base with a new adapter needs no restart. The path is kept with the
//! knowledge base: an Ask that finds the generator without the adapter (it restarted, or
//! someone unloaded it) loads it again once and retries.

use tonic::Code;
use tonic::codec::Streaming;
use zhiku_proto::v1::{
    CreateKnowledgeBaseRequest, GenerateRequest, GenerateStreamResponse, KnowledgeBase,
    LoadAdapterRequest,
};

use crate::Orchestrator;
use crate::downstream::Deadline;
use crate::error::OrchestratorError;

impl Orchestrator {
    /// With `adapter_path`, loads the adapter into the generator under `adapter` (the
    /// knowledge base's name when empty) before anything is created.
    pub(crate) async fn load_kb_adapter(
        &self,
        request: &mut CreateKnowledgeBaseRequest,
        deadline: Deadline,
    ) -> Result<(), OrchestratorError> {
        if request.adapter_path.is_empty() {
            return Ok(());
        }
        if request.adapter.is_empty() {
            request.adapter = request.name.clone();
        }
        self.load_adapter(&request.adapter, &request.adapter_path, deadline)
            .await
    }

    async fn load_adapter(
        &self,
        name: &str,
        path: &str,
        deadline: Deadline,
    ) -> Result<(), OrchestratorError> {
        let info = self
            .downstream
            .generator
            .clone()
            .load_adapter(deadline.request(LoadAdapterRequest {
                name: name.to_owned(),
                path: path.to_owned(),
            }))
            .await
            .map_err(OrchestratorError::downstream("generator"))?
            .into_inner();
        tracing::info!(adapter = %info.name, rank = info.rank, path, "adapter loaded into the generator");
        Ok(())
    }

    /// Starts the answer stream with the knowledge base's adapter, loading the adapter again
    /// when the generator no longer has it and the knowledge base knows where it lives.
    pub(crate) async fn generate_for(
        &self,
        knowledge_base: &KnowledgeBase,
        request: GenerateRequest,
        deadline: Deadline,
    ) -> Result<Streaming<GenerateStreamResponse>, OrchestratorError> {
        let first = self
            .downstream
            .generator
            .clone()
            .generate_stream(deadline.request(request.clone()))
            .await;
        let status = match first {
            Ok(stream) => return Ok(stream.into_inner()),
            Err(status) => status,
        };
        if status.code() != Code::NotFound
            || knowledge_base.adapter.is_empty()
            || knowledge_base.adapter_path.is_empty()
        {
            return Err(OrchestratorError::downstream("generator")(status));
        }
        tracing::warn!(
            adapter = %knowledge_base.adapter,
            path = %knowledge_base.adapter_path,
            "the generator lacks the knowledge base's adapter: loading it again"
        );
        self.load_adapter(
            &knowledge_base.adapter,
            &knowledge_base.adapter_path,
            deadline,
        )
        .await?;
        Ok(self
            .downstream
            .generator
            .clone()
            .generate_stream(deadline.request(request))
            .await
            .map_err(OrchestratorError::downstream("generator"))?
            .into_inner())
    }
}
