//! The OpenAPI document as a user meets it: a running gateway serves it
//! without a key at /openapi.json; a real validator (openapi-spec-validator,
//! from PyPI) accepts it; what the gateway answers over REST for a real job
//! matches the schemas it gives; and the reference page at /openapi.html
//! shows every operation.

use std::time::Duration;

use batchmill_tests::{Options, Sandbox, http_as, tool};
use serde_json::{Value, json};

/// Whether `value` matches `schema` (OpenAPI 3.0's subset that the document
/// uses: `$ref`, `allOf`, types, enums, properties and additionalProperties),
/// naming the first place it does not.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) -> anyhow::Result<()> {
    if let Some(target) = schema["$ref"].as_str() {
        let name = target.trim_start_matches("#/components/schemas/");
        let resolved = &doc["components"]["schemas"][name];
        if resolved.is_null() {
            anyhow::bail!("{at}: {target} does not resolve");
        }
        return conforms(doc, resolved, value, at);
    }
    if let Some(all) = schema["allOf"].as_array() {
        return all.iter().try_for_each(|s| conforms(doc, s, value, at));
    }
    let bad = |want: &str| Err(anyhow::anyhow!("{at}: {value} is not {want}"));
    match schema["type"].as_str() {
        None => Ok(()),
        Some("string") => {
            let Some(text) = value.as_str() else { return bad("a string") };
            match schema["enum"].as_array() {
                Some(values) if !values.iter().any(|v| v == text) => bad("one of the enum's values"),
                _ => Ok(()),
            }
        }
        Some("integer") if value.is_i64() || value.is_u64() => Ok(()),
        Some("number") if value.is_number() => Ok(()),
        Some("boolean") if value.is_boolean() => Ok(()),
        Some("array") => {
            let Some(items) = value.as_array() else { return bad("an array") };
            items.iter().enumerate().try_for_each(|(i, v)| conforms(doc, &schema["items"], v, &format!("{at}[{i}]")))
        }
        Some("object") => {
            let Some(object) = value.as_object() else { return bad("an object") };
            for (key, v) in object {
                let at = format!("{at}.{key}");
                match (&schema["properties"][key], &schema["additionalProperties"]) {
                    (Value::Null, Value::Bool(true)) => {}
                    (Value::Null, extra @ Value::Object(_)) => conforms(doc, extra, v, &at)?,
                    (Value::Null, _) => anyhow::bail!("{at}: not in the schema"),
                    (property, _) => conforms(doc, property, v, &at)?,
                }
            }
            Ok(())
        }
        Some(kind) => bad(&format!("of type {kind}")),
    }
}

/// The 200 schema of the operation at `path` and `verb`.
fn ok_schema<'a>(doc: &'a Value, path: &str, verb: &str) -> &'a Value {
    let content = &doc["paths"][path][verb]["responses"]["200"]["content"];
    let schema = &content["application/json"]["schema"];
    assert!(!schema.is_null(), "no 200 response for {verb} {path}");
    schema
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_is_valid_and_describes_what_the_gateway_answers() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 1, ..Options::default() }).await?;
    let base = sandbox.rest_url();

    // Served without a key.
    let anonymous = batchmill_tests::http_anonymous();
    let response = anonymous.get(format!("{base}/openapi.json")).send().await?;
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await?;
    assert_eq!(doc["openapi"], "3.0.3");

    // A real validator accepts it.
    let file = tempfile::Builder::new().suffix(".json").tempfile()?;
    std::fs::write(file.path(), serde_json::to_vec_pretty(&doc)?)?;
    let validator = tool("openapi-spec-validator")?;
    let out = tokio::process::Command::new(&validator).arg(file.path()).output().await?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("OK"), "{} refused the document:\n{said}", validator.display());

    // The reference page shows every operation.
    let page = anonymous.get(format!("{base}/openapi.html")).send().await?;
    assert_eq!(page.status(), 200);
    assert!(page.headers()[reqwest::header::CONTENT_TYPE].to_str()?.starts_with("text/html"));
    let page = page.text().await?;
    let mut operations = 0;
    for item in doc["paths"].as_object().into_iter().flatten().map(|(_, item)| item) {
        for op in item.as_object().into_iter().flatten().map(|(_, op)| op) {
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(page.contains(&format!("id=\"{id}\"")), "the reference page lacks {id}");
            operations += 1;
        }
    }
    assert!(operations > 20, "{operations} operations");
    // The API itself still wants a key.
    assert_eq!(anonymous.get(format!("{base}/v1/jobs")).send().await?.status(), 401);

    // What the gateway answers matches the document: a job submitted as its
    // request schema says, then every read of it.
    let http = http_as(&sandbox.api_key);
    let submit = json!({"pipeline": "echo", "workers": 1, "itemList": {"items": [1, {"a": "b"}, "c"], "batchSize": 2}});
    let request_schema = &doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    conforms(&doc, request_schema, &submit, "request")?;
    let response = http.post(format!("{base}/v1/jobs")).json(&submit).send().await?;
    assert_eq!(response.status(), 200);
    let job: Value = response.json().await?;
    conforms(&doc, ok_schema(&doc, "/v1/jobs", "post"), &job, "SubmitJob")?;
    let id = job["jobId"].as_str().unwrap_or_default().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let job: Value = http.get(format!("{base}/v1/jobs/{id}")).send().await?.json().await?;
        conforms(&doc, ok_schema(&doc, "/v1/jobs/{job_id}", "get"), &job, "GetJob")?;
        if job["state"] == "JOB_STATE_SUCCEEDED" {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the job did not succeed: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (path, template) in [
        ("/v1/jobs".to_owned(), "/v1/jobs"),
        (format!("/v1/jobs/{id}/batches"), "/v1/jobs/{job_id}/batches"),
        (format!("/v1/jobs/{id}/results"), "/v1/jobs/{job_id}/results"),
        (format!("/v1/jobs/{id}/outputs"), "/v1/jobs/{job_id}/outputs"),
        (format!("/v1/jobs/{id}/events"), "/v1/jobs/{job_id}/events"),
        (format!("/v1/jobs/{id}/deadLetters"), "/v1/jobs/{job_id}/deadLetters"),
        ("/v1/pipelines".to_owned(), "/v1/pipelines"),
        ("/v1/caller".to_owned(), "/v1/caller"),
        ("/v1/accounts".to_owned(), "/v1/accounts"),
    ] {
        let response = http.get(format!("{base}{path}")).send().await?;
        assert_eq!(response.status(), 200, "GET {path}");
        let body: Value = response.json().await?;
        conforms(&doc, ok_schema(&doc, template, "get"), &body, &format!("GET {path}"))?;
        assert!(body.as_object().is_some_and(|o| !o.is_empty()), "GET {path} answered {body}");
    }
    // An error is the Status the document gives.
    let response = http.post(format!("{base}/v1/jobs")).json(&json!({"pipeline": "echo"})).send().await?;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await?;
    let status = &doc["paths"]["/v1/jobs"]["post"]["responses"]["default"]["content"]["application/json"]["schema"];
    conforms(&doc, status, &error, "error")?;
    Ok(())
}
