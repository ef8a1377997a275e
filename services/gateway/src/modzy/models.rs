//! `GET /api/models...`: pipelines as Modzy models, so the SDK can look
//! them up. A built-in pipeline has its template's version (1); a deployed
//! one has a version per deploy, of which the latest is the one jobs run.

use axum::response::Response;
use batchmill_core::{Caller, FieldViolation};
use batchmill_proto::pipelines::v1::{self as ppb, pipeline_service_server::PipelineService};
use serde_json::{Value, json};

use super::{ModzyError, ok};
use crate::auth::as_caller;
use crate::forward::PipelinesForwarder;

fn version_of(p: &ppb::Pipeline) -> u32 {
    p.version.max(1)
}

fn model(p: &ppb::Pipeline) -> Value {
    let latest = version_of(p);
    json!({
        "modelId": p.name,
        "identifier": p.name,
        "name": p.name,
        "latestVersion": latest.to_string(),
        "latestActiveVersion": latest.to_string(),
        "versions": (1..=latest).map(|v| v.to_string()).collect::<Vec<_>>(),
        "isActive": true,
        "author": if p.built_in { "batchmill" } else { "" },
        "description": if !p.description.is_empty() {
            p.description.as_str()
        } else if p.built_in {
            "built-in pipeline"
        } else {
            "deployed pipeline"
        },
    })
}

fn version(p: &ppb::Pipeline, v: u32) -> Value {
    let latest = version_of(p);
    json!({
        "modelId": p.name,
        "identifier": p.name,
        "version": v.to_string(),
        "status": if v == latest { "active" } else { "inactive" },
        "isActive": v == latest,
        "outputs": [{"name": "results.json", "mediaType": "application/json"}],
    })
}

async fn pipeline(
    pipelines: &PipelinesForwarder,
    caller: &Caller,
    name: &str,
) -> Result<Option<ppb::Pipeline>, ModzyError> {
    let request = as_caller(caller, ppb::GetPipelineRequest { name: name.to_owned() });
    match PipelineService::get_pipeline(pipelines, request).await {
        Ok(r) => Ok(r.into_inner().pipeline),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(status) => Err(status.into()),
    }
}

/// Checks that `model` names a pipeline and `version` the version jobs run.
pub async fn check_version(
    pipelines: &PipelinesForwarder,
    caller: &Caller,
    model: &str,
    version: &str,
) -> Result<(), ModzyError> {
    let Some(p) = pipeline(pipelines, caller, model).await? else {
        return Err(FieldViolation::new(
            "model.identifier",
            format!("{model:?} is no model (pipeline) of this cluster"),
        )
        .into());
    };
    let latest = version_of(&p);
    if version != latest.to_string() {
        let message = format!("{model} has no runnable version {version:?}; its version is \"{latest}\"");
        return Err(FieldViolation::new("model.version", message).into());
    }
    Ok(())
}

/// `rest`: the path after `/api/models`.
pub async fn route(
    pipelines: &PipelinesForwarder,
    caller: &Caller,
    rest: &[&str],
    query: &[(String, String)],
) -> Result<Response, ModzyError> {
    let missing = |name: &str| ModzyError::not_found(format!("model {name} not found"));
    match rest {
        [] => {
            let request = as_caller(caller, ppb::ListPipelinesRequest {});
            let all = PipelineService::list_pipelines(pipelines, request).await?.into_inner().pipelines;
            let name = query.iter().find(|(k, _)| k == "name" || k == "modelId").map(|(_, v)| v.as_str());
            ok(&Value::Array(all.iter().filter(|p| name.is_none_or(|n| n == p.name)).map(model).collect()))
        }
        // The SDK reads this when it starts. Modzy users pick hardware for a
        // model here; batchmill's scheduler assigns workers itself, so there
        // are none to pick.
        ["requirements", "account"] => ok(&Value::Array(Vec::new())),
        [name] => ok(&model(&pipeline(pipelines, caller, name).await?.ok_or_else(|| missing(name))?)),
        [name, "versions"] => {
            let p = pipeline(pipelines, caller, name).await?.ok_or_else(|| missing(name))?;
            ok(&Value::Array((1..=version_of(&p)).map(|v| version(&p, v)).collect()))
        }
        [name, "versions", v] => {
            let p = pipeline(pipelines, caller, name).await?.ok_or_else(|| missing(name))?;
            match v.parse::<u32>() {
                Ok(n) if (1..=version_of(&p)).contains(&n) => ok(&version(&p, n)),
                _ => Err(ModzyError::not_found(format!("model {name} has no version {v}"))),
            }
        }
        _ => Err(ModzyError::not_found(format!("no route for GET /api/models/{}", rest.join("/")))),
    }
}
