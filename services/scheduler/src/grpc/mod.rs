//! gRPC adapters of the scheduler: the job and pipeline APIs and worker sessions.

mod jobs;
mod pipelines;
mod session;

pub use jobs::JobsGrpc;
pub use pipelines::PipelinesGrpc;
pub use session::SessionGrpc;
