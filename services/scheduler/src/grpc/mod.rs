//! gRPC adapters of the scheduler: the job API and worker sessions.

mod jobs;
mod session;

pub use jobs::JobsGrpc;
pub use session::SessionGrpc;
