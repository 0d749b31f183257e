//! zhiku's public gRPC API (`proto/zhiku/v1`), generated at build time.
//!
//! Every service lives in the `zhiku.v1` package: [`v1::embedder_server`],
//! [`v1::retriever_server`], [`v1::generator_server`], [`v1::orchestrator_server`],
//! [`v1::tuner_server`] and the matching `*_client` modules.

/// Messages and service stubs of the `zhiku.v1` protobuf package.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("zhiku.v1");
}

/// The encoded `FileDescriptorSet` of every zhiku proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("zhiku_descriptor");

/// Bounds the services enforce on request fields, for callers that fill them.
pub mod limits {
    /// `SamplingParams.stop`: stop strings in one request at most.
    pub const MAX_STOP_STRINGS: usize = 16;
    /// `SamplingParams.stop`: bytes of one stop string at most.
    pub const MAX_STOP_STRING_BYTES: usize = 256;
}

/// Fully qualified gRPC service names, as reflection and `grpc.health.v1` know them.
pub mod service_names {
    pub const EMBEDDER: &str = "zhiku.v1.Embedder";
    pub const RETRIEVER: &str = "zhiku.v1.Retriever";
    pub const GENERATOR: &str = "zhiku.v1.Generator";
    pub const ORCHESTRATOR: &str = "zhiku.v1.Orchestrator";
    pub const TUNER: &str = "zhiku.v1.Tuner";
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_names_every_service() {
        let fds = prost_types_free_decode(super::FILE_DESCRIPTOR_SET);
        for name in [
            "Embedder",
            "Retriever",
            "Generator",
            "Orchestrator",
            "Tuner",
        ] {
            assert!(
                fds.contains(&name.to_string()),
                "{name} missing from {fds:?}"
            );
        }
    }

    /// Collects service names from the descriptor set without needing prost-types: a
    /// FileDescriptorSet is `repeated FileDescriptorProto file = 1`, whose field 6 is
    /// `repeated ServiceDescriptorProto service`, whose field 1 is the name.
    fn prost_types_free_decode(bytes: &[u8]) -> Vec<String> {
        #[derive(Clone, PartialEq, Message)]
        struct Set {
            #[prost(message, repeated, tag = "1")]
            file: Vec<File>,
        }
        #[derive(Clone, PartialEq, Message)]
        struct File {
            #[prost(message, repeated, tag = "6")]
            service: Vec<Service>,
        }
        #[derive(Clone, PartialEq, Message)]
        struct Service {
            #[prost(string, tag = "1")]
            name: String,
        }
        let set = Set::decode(bytes).expect("descriptor set decodes");
        set.file
            .into_iter()
            .flat_map(|f| f.service)
            .map(|s| s.name)
            .collect()
    }
}
