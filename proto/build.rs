//! Compiles batchmill's contracts and writes the descriptor set that server
//! reflection and the gateway's REST transcoding read.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "batchmill/accounts/v1/accounts.proto",
    "batchmill/jobs/v1/jobs.proto",
    "batchmill/pipelines/v1/pipelines.proto",
    "batchmill/lister/v1/lister.proto",
    "batchmill/enqueuer/v1/enqueuer.proto",
    "batchmill/queue/v1/batch.proto",
    "batchmill/scheduler/v1/scheduler.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=batchmill");
    println!("cargo:rerun-if-changed=third_party");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("batchmill_descriptor.bin"))
        .compile_protos(PROTOS, &[".", "third_party"])?;
    Ok(())
}
