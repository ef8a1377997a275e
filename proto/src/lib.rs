//! batchmill's protobuf contracts, compiled with tonic-prost-build.
//!
//! Packages follow `batchmill.<area>.v1`; [`FILE_DESCRIPTOR_SET`] holds every
//! file (with `google.api.http` options) for reflection and REST transcoding.

// Generated code: its servers' routing functions are long by construction.
#![allow(clippy::doc_markdown, clippy::large_enum_variant, clippy::too_many_lines)]

/// The encoded `FileDescriptorSet` of every batchmill contract and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/batchmill_descriptor.bin"));

/// google.api: the HTTP annotation types.
pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
}

/// Public account and API-key API.
pub mod accounts {
    pub mod v1 {
        tonic::include_proto!("batchmill.accounts.v1");
    }
}

/// Public job API.
pub mod jobs {
    pub mod v1 {
        tonic::include_proto!("batchmill.jobs.v1");
    }
}

/// Public pipeline API.
pub mod pipelines {
    pub mod v1 {
        tonic::include_proto!("batchmill.pipelines.v1");
    }
}

/// Internal lister API.
pub mod lister {
    pub mod v1 {
        tonic::include_proto!("batchmill.lister.v1");
    }
}

/// Internal enqueuer API.
pub mod enqueuer {
    pub mod v1 {
        tonic::include_proto!("batchmill.enqueuer.v1");
    }
}

/// Messages carried by JetStream.
pub mod queue {
    pub mod v1 {
        tonic::include_proto!("batchmill.queue.v1");
    }
}

/// Internal scheduler-worker API.
pub mod scheduler {
    pub mod v1 {
        tonic::include_proto!("batchmill.scheduler.v1");
    }
}
