//! REST routes read from the `google.api.http` options in the descriptors:
//! a new annotated RPC gets its route with no code here.

use batchmill_proto::google::api::{HttpRule, http_rule::Pattern};
use prost::Message;
use prost_reflect::{DescriptorPool, MethodDescriptor, Value};

use super::template::PathTemplate;

/// Why the REST routes could not be read from the descriptors.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("decoding the descriptor set: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    #[error("the descriptor set lacks the google.api.http option")]
    NoHttpOption,
    #[error("no service {0} in the descriptor set")]
    NoService(String),
    #[error("{method}: {message}")]
    BadRule { method: String, message: String },
}

/// One HTTP binding of an RPC.
#[derive(Debug, Clone)]
pub struct Route {
    pub verb: http::Method,
    pub template: PathTemplate,
    /// The request field the body maps to; "*" for all, "" for none.
    pub body: String,
    /// The response field that is the HTTP body; "" for the whole response.
    pub response_body: String,
    pub method: MethodDescriptor,
}

/// Every route of every annotated method of `services` in `pool`.
pub fn load(pool: &DescriptorPool, services: &[&str]) -> Result<Vec<Route>, RouteError> {
    let ext = pool.get_extension_by_name("google.api.http").ok_or(RouteError::NoHttpOption)?;
    let mut routes = Vec::new();
    for name in services {
        let service = pool.get_service_by_name(name).ok_or_else(|| RouteError::NoService((*name).to_owned()))?;
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&ext) {
                continue;
            }
            let Value::Message(rule) = options.get_extension(&ext).into_owned() else {
                continue;
            };
            let rule = HttpRule::decode(rule.encode_to_vec().as_slice())
                .map_err(|e| RouteError::BadRule { method: method.full_name().to_owned(), message: e.to_string() })?;
            add(&mut routes, &method, &rule)?;
            for extra in &rule.additional_bindings {
                add(&mut routes, &method, extra)?;
            }
        }
    }
    // Most specific first: a `:verb` route before the plain one it would
    // otherwise shadow (`/v1/jobs/{job_id}` matches `/v1/jobs/x:cancel`).
    routes.sort_by_key(|r| std::cmp::Reverse(r.template.specificity()));
    Ok(routes)
}

fn add(routes: &mut Vec<Route>, method: &MethodDescriptor, rule: &HttpRule) -> Result<(), RouteError> {
    let bad = |message: String| RouteError::BadRule { method: method.full_name().to_owned(), message };
    let (verb, path) = match &rule.pattern {
        Some(Pattern::Get(p)) => (http::Method::GET, p),
        Some(Pattern::Put(p)) => (http::Method::PUT, p),
        Some(Pattern::Post(p)) => (http::Method::POST, p),
        Some(Pattern::Delete(p)) => (http::Method::DELETE, p),
        Some(Pattern::Patch(p)) => (http::Method::PATCH, p),
        Some(Pattern::Custom(c)) => {
            (http::Method::from_bytes(c.kind.as_bytes()).map_err(|e| bad(e.to_string()))?, &c.path)
        }
        None => return Err(bad("http rule without a pattern".into())),
    };
    let template = PathTemplate::parse(path).map_err(|e| bad(e.to_string()))?;
    routes.push(Route {
        verb,
        template,
        body: rule.body.clone(),
        response_body: rule.response_body.clone(),
        method: method.clone(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_job_service_routes() {
        let pool = DescriptorPool::decode(batchmill_proto::FILE_DESCRIPTOR_SET).unwrap();
        let routes = load(&pool, &["batchmill.jobs.v1.JobService"]).unwrap();
        let find = |name: &str| routes.iter().find(|r| r.method.name() == name).unwrap();
        let submit = find("SubmitJob");
        assert_eq!(
            (submit.verb.clone(), submit.body.as_str(), submit.response_body.as_str()),
            (http::Method::POST, "*", "job")
        );
        assert!(find("CancelJob").template.matches("/v1/jobs/abc:cancel").is_some());
        assert!(find("GetJob").template.matches("/v1/jobs/abc").is_some());
        assert!(find("DryRunJob").template.matches("/v1/jobs:dryRun").is_some());
        assert_eq!(find("DryRunJob").body, "job");
        assert!(find("ListDeadLetters").template.matches("/v1/jobs/abc/deadLetters").is_some());
        assert!(find("RerunDeadLetters").template.matches("/v1/jobs/abc/deadLetters:rerun").is_some());
        assert!(find("RerunDeadLetters").template.matches("/v1/jobs/abc/deadLetters").is_none());
        assert!(find("StreamJobLogs").template.matches("/v1/jobs/abc/logs").is_some());
        assert!(find("ListBatches").template.matches("/v1/jobs/abc/batches").is_some());
        assert!(find("ListJobResults").template.matches("/v1/jobs/abc/results").is_some());
        assert!(find("ListOutputs").template.matches("/v1/jobs/abc/outputs").is_some());
        assert!(find("RetryJob").template.matches("/v1/jobs/abc:retry").is_some());
        assert!(find("RetryJob").template.matches("/v1/jobs/abc:cancel").is_none());
        assert!(find("ListJobEvents").template.matches("/v1/jobs/abc/events").is_some());
        assert!(find("ListJobEvents").template.matches("/v1/jobs/abc/events:watch").is_none());
        assert!(find("WatchJobEvents").template.matches("/v1/jobs/abc/events:watch").is_some());
        assert!(find("RetryFailedItems").template.matches("/v1/jobs/abc:retryFailedItems").is_some());
        assert_eq!(routes.len(), 16);
        let first = routes.iter().find(|r| r.template.matches("/v1/jobs/abc:watch").is_some()).unwrap();
        assert_eq!(first.method.name(), "WatchJob");
    }
}
