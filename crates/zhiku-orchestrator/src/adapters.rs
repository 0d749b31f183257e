//! Knowledge bases with their own LoRA adapter. `CreateKnowledgeBase` with an
//! `adapter_path` has the generator load the adapter at once (`Generator.LoadAdapter`), so
//! a new knowledge base with a new adapter needs no restart. The path is kept with the
//! knowledge base: an Ask that finds the generator without the adapter (it restarted, or
//! someone unloaded it) loads it again once and retries.
//!
//! `BindAdapter` rebinds a knowledge base without a restart (the generator loads the
//! adapter, then the retriever records it with its provenance); `UnbindAdapter` undoes
//! that. An Ask or an Evaluate may name another adapter, or none, for itself
//! ([`Orchestrator::with_requested_adapter`]).

use tonic::Code;
use tonic::codec::Streaming;
use zhiku_proto::v1::{
    BindAdapterRequest, CreateKnowledgeBaseRequest, GenerateRequest, GenerateStreamResponse,
    GeneratorInfoRequest, KnowledgeBase, ListKnowledgeBasesRequest, LoadAdapterRequest,
    SetKnowledgeBaseAdapterRequest, UnbindAdapterRequest, UnloadAdapterRequest,
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

    /// The knowledge base as one request sees it: `requested` (AskRequest.adapter) unset
    /// keeps its own adapter; "" is the base model; a name must be an adapter the generator
    /// has loaded (NOT_FOUND naming it and the loaded ones).
    pub(crate) async fn with_requested_adapter(
        &self,
        mut knowledge_base: KnowledgeBase,
        requested: Option<&str>,
        deadline: Deadline,
    ) -> Result<KnowledgeBase, OrchestratorError> {
        let Some(name) = requested else {
            return Ok(knowledge_base);
        };
        if name == knowledge_base.adapter {
            return Ok(knowledge_base);
        }
        if !name.is_empty() {
            self.require_loaded(name, deadline).await?;
        }
        knowledge_base.adapter = name.to_owned();
        // The stored path is the knowledge base's own adapter's: never load it under
        // another name.
        knowledge_base.adapter_path.clear();
        Ok(knowledge_base)
    }

    /// The names of the adapters the generator has loaded, sorted.
    async fn loaded_adapters(&self, deadline: Deadline) -> Result<Vec<String>, OrchestratorError> {
        let info = self
            .downstream
            .generator
            .clone()
            .info(deadline.request(GeneratorInfoRequest {}))
            .await
            .map_err(OrchestratorError::downstream("generator"))?
            .into_inner();
        let mut names: Vec<String> = info.adapters.into_iter().map(|a| a.name).collect();
        names.sort();
        Ok(names)
    }

    /// NOT_FOUND unless the generator has an adapter called `name`.
    pub(crate) async fn require_loaded(
        &self,
        name: &str,
        deadline: Deadline,
    ) -> Result<(), OrchestratorError> {
        let loaded = self.loaded_adapters(deadline).await?;
        if loaded.iter().any(|a| a == name) {
            return Ok(());
        }
        Err(OrchestratorError::NotFound(format!(
            "adapter `{name}` is not loaded in the generator; loaded: {}",
            if loaded.is_empty() {
                "none".to_owned()
            } else {
                loaded.join(", ")
            }
        )))
    }

    /// Binds an adapter to a knowledge base: the knowledge base must exist; the generator
    /// loads the adapter (or, without a path, must already serve it); then the retriever
    /// records the binding and its provenance. A failed load binds nothing.
    pub async fn bind_adapter(
        &self,
        request: BindAdapterRequest,
        deadline: Deadline,
    ) -> Result<KnowledgeBase, OrchestratorError> {
        if request.knowledge_base.is_empty() {
            return Err(OrchestratorError::Validation(
                "`knowledge_base` is empty: name the knowledge base to bind the adapter to".into(),
            ));
        }
        self.describe_for_ask(&request.knowledge_base, deadline)
            .await?;
        let name = if request.adapter.is_empty() {
            request.knowledge_base.clone()
        } else {
            request.adapter
        };
        if request.adapter_path.is_empty() {
            self.require_loaded(&name, deadline).await?;
        } else {
            self.load_adapter(&name, &request.adapter_path, deadline)
                .await?;
        }
        let bound = self
            .downstream
            .retriever
            .clone()
            .set_knowledge_base_adapter(deadline.request(SetKnowledgeBaseAdapterRequest {
                name: request.knowledge_base,
                adapter: name,
                adapter_path: request.adapter_path,
                provenance: request.provenance,
            }))
            .await
            .map_err(OrchestratorError::downstream("retriever"))?
            .into_inner();
        tracing::info!(knowledge_base = %bound.name, adapter = %bound.adapter, "adapter bound");
        Ok(bound)
    }

    /// Unbinds a knowledge base's adapter; with `unload`, the generator unloads it too
    /// unless another knowledge base is bound to it.
    pub async fn unbind_adapter(
        &self,
        request: UnbindAdapterRequest,
        deadline: Deadline,
    ) -> Result<KnowledgeBase, OrchestratorError> {
        if request.knowledge_base.is_empty() {
            return Err(OrchestratorError::Validation(
                "`knowledge_base` is empty: name the knowledge base to unbind".into(),
            ));
        }
        let before = self
            .describe_for_ask(&request.knowledge_base, deadline)
            .await?;
        let unbound = self
            .downstream
            .retriever
            .clone()
            .set_knowledge_base_adapter(deadline.request(SetKnowledgeBaseAdapterRequest {
                name: request.knowledge_base,
                ..Default::default()
            }))
            .await
            .map_err(OrchestratorError::downstream("retriever"))?
            .into_inner();
        if request.unload && !before.adapter.is_empty() {
            let others = self
                .downstream
                .retriever
                .clone()
                .list_knowledge_bases(deadline.request(ListKnowledgeBasesRequest::default()))
                .await
                .map_err(OrchestratorError::downstream("retriever"))?
                .into_inner()
                .knowledge_bases;
            if !others.iter().any(|kb| kb.adapter == before.adapter) {
                let unloaded = self
                    .downstream
                    .generator
                    .clone()
                    .unload_adapter(deadline.request(UnloadAdapterRequest {
                        name: before.adapter.clone(),
                    }))
                    .await;
                match unloaded {
                    // Already gone: what was asked for.
                    Err(status) if status.code() == Code::NotFound => {}
                    other => {
                        other.map_err(OrchestratorError::downstream("generator"))?;
                    }
                }
            }
        }
        tracing::info!(knowledge_base = %unbound.name, adapter = %before.adapter, "adapter unbound");
        Ok(unbound)
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
