//! Pipelines as versioned templates with a config contract, as a user of
//! Archetype's JOS meets them: a version records a JSON Schema of its
//! config, the fields a job may set and defaults; a job's config is the
//! defaults with its own merged over them; a locked field, a type error, a
//! missing required field and an unknown field are each a 400 naming the
//! path; every version stays readable as it was deployed.

use std::time::Duration;

use batchmill_proto::pipelines::v1 as ppb;
use batchmill_tests::{Options, Sandbox};
use serde_json::{Value, json};

const SCORED: &str = r#"
class PythonPredictor:
    def __init__(self, config, job_spec):
        self.config = config

    def predict(self, payload, batch_id):
        return [{"item": p, "threshold": self.config["threshold"], "precision": self.config["model"]["precision"],
                 "label": self.config["label"]} for p in payload]
"#;

/// Deploys version after version of "scored" with the given defaults.
async fn deploy(sandbox: &Sandbox, defaults: Value) -> anyhow::Result<ppb::Pipeline> {
    let schema = json!({
        "type": "object",
        "properties": {
            "threshold": {"type": "number", "minimum": 0, "maximum": 1},
            "label": {"type": "string"},
            "model": {"type": "object", "properties": {
                "name": {"type": "string"},
                "precision": {"enum": ["fp32", "fp16"]}
            }, "additionalProperties": false},
        },
        "required": ["threshold", "label", "model"],
        "additionalProperties": false
    });
    let request = ppb::DeployPipelineRequest {
        name: "scored".into(),
        kind: "BatchAPI".into(),
        predictor: Some(ppb::Predictor { r#type: "python".into(), path: "predictor.py".into(), ..Default::default() }),
        files: [("predictor.py".to_owned(), SCORED.as_bytes().to_vec())].into_iter().collect(),
        config_schema: schema.as_object().map(batchmill_core::json::json_to_struct),
        overridable: vec!["threshold".into(), "label".into(), "model.precision".into()],
        defaults: defaults.as_object().map(batchmill_core::json::json_to_struct),
        resources: Some(ppb::Resources { cpu: "500m".into(), memory: "1Gi".into(), ..Default::default() }),
        queue: "batch".into(),
        timeout: Some(batchmill_core::time::duration_ms(600_000)),
        retry: Some(ppb::RetryPolicy {
            max_deliveries: 5,
            initial_backoff: Some(batchmill_core::time::duration_ms(2_000)),
            max_backoff: Some(batchmill_core::time::duration_ms(20_000)),
        }),
        compute: None,
    };
    let deployed = sandbox.pipelines().await?.deploy_pipeline(request).await?.into_inner();
    Ok(deployed.pipeline.unwrap_or_default())
}

fn job(config: Value) -> Value {
    json!({"pipeline": "scored", "workers": 1, "itemList": {"items": [1, 2, 3], "batchSize": 2}, "config": config})
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_keep_their_contract_and_jobs_get_defaults_with_their_overrides() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 1, queues: "batch=2".into(), ..Options::default() }).await?;
    let (http, base) = (sandbox.http(), sandbox.rest_url());
    let v1 = deploy(&sandbox, json!({"threshold": 0.5, "model": {"name": "resnet", "precision": "fp32"}})).await?;
    assert_eq!((v1.version, v1.overridable.len()), (1, 3));

    // A contract that cannot hold is refused at deploy, naming the field.
    let err = deploy(&sandbox, json!({"threshold": "high"})).await.expect_err("a default of the wrong type");
    assert!(err.to_string().contains("defaults.threshold"), "{err}");

    // The job's config: the defaults, its own over them, checked.
    let done = sandbox
        .submit_rest(job(json!({"label": "cats", "model": {"precision": "fp16"}})), Duration::from_secs(90))
        .await?;
    assert_eq!(done.state(), batchmill_proto::jobs::v1::JobState::Succeeded, "{done:?}");
    let results = sandbox.results(&done).await?;
    let mut lines: Vec<Value> = results
        .iter()
        .filter(|(k, _)| k.ends_with(".jsonl"))
        .flat_map(|(_, body)| body.lines().map(|l| serde_json::from_str(l).unwrap_or_default()).collect::<Vec<Value>>())
        .collect();
    lines.sort_by_key(|l| l["index"].as_i64());
    let expected: Vec<Value> = (1..=3)
        .map(|i| json!({"index": i - 1, "result": {"item": i, "threshold": 0.5, "precision": "fp16", "label": "cats"}}))
        .collect();
    assert_eq!(lines, expected);
    // It inherits the version's timeout and retries.
    assert_eq!(
        (done.timeout.as_ref().map(|t| t.seconds), done.max_receive_count),
        (Some(600), 5),
        "the version's timeout and deliveries"
    );
    let recorded = done.config.map(|c| Value::Object(batchmill_core::json::struct_to_json(&c)));
    assert_eq!(
        recorded,
        Some(json!({"threshold": 0.5, "label": "cats", "model": {"name": "resnet", "precision": "fp16"}})),
        "the job records the config it ran with"
    );

    // Each mistake is a 400 naming the path.
    for (config, field, why) in [
        (json!({"label": "x", "model": {"name": "vgg"}}), "config.model.name", "is locked"),
        (json!({"label": "x", "threshold": "high"}), "config.threshold", "not of type"),
        (json!({"threshold": 0.2}), "config.label", "is required"),
        (json!({"label": "x", "colour": "red"}), "config.colour", "is locked"),
    ] {
        let response = http.post(format!("{base}/v1/jobs")).json(&job(config.clone())).send().await?;
        let status = response.status();
        let body: Value = response.json().await?;
        let violation = &body["details"][0]["fieldViolations"][0];
        assert_eq!(status, 400, "{config}: {body}");
        assert_eq!(violation["field"], field, "{config}: {body}");
        assert!(violation["description"].as_str().is_some_and(|d| d.contains(why)), "{config}: {body}");
    }

    // Versions are immutable: a new one leaves the old one as it was.
    let v2 = deploy(&sandbox, json!({"threshold": 0.7, "label": "dogs", "model": {"precision": "fp32"}})).await?;
    assert_eq!(v2.version, 2);
    let get = |v: u32| http.get(format!("{base}/v1/pipelines/scored/versions/{v}")).send();
    let first: Value = get(1).await?.json().await?;
    assert_eq!(first["version"], 1);
    assert_eq!(first["defaults"], json!({"threshold": 0.5, "model": {"name": "resnet", "precision": "fp32"}}));
    assert_eq!(first["overridable"], json!(["threshold", "label", "model.precision"]));
    assert_eq!(first["configSchema"]["required"], json!(["threshold", "label", "model"]));
    let resources = &first["resources"];
    assert_eq!(
        (&resources["cpu"], &resources["memory"], &resources["gpuCount"]),
        (&json!("500m"), &json!("1Gi"), &json!(0))
    );
    assert_eq!(
        (&first["queue"], &first["timeout"], &first["retry"]),
        (&json!("batch"), &json!("600s"), &json!({"maxDeliveries": 5, "initialBackoff": "2s", "maxBackoff": "20s"}))
    );
    let second: Value = get(2).await?.json().await?;
    assert_eq!(second["defaults"]["label"], "dogs");
    assert_eq!(get(3).await?.status(), 404);
    let latest: Value = http.get(format!("{base}/v1/pipelines/scored")).send().await?.json().await?;
    assert_eq!(latest["version"], 2);
    // A job now needs no label: version 2 has a default for it.
    let done = sandbox.submit_rest(job(json!({})), Duration::from_secs(90)).await?;
    assert_eq!(done.state(), batchmill_proto::jobs::v1::JobState::Succeeded, "{done:?}");
    Ok(())
}

/// The built-in pipelines are versioned templates too: each shows its
/// version, what it does and its config schema, and a job's config is
/// checked against it at submission.
#[tokio::test(flavor = "multi_thread")]
async fn built_in_pipelines_show_their_template_and_check_a_jobs_config() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 1, ..Options::default() }).await?;
    let (http, base) = (sandbox.http(), sandbox.rest_url());
    let embed: Value = http.get(format!("{base}/v1/pipelines/embed/versions/1")).send().await?.json().await?;
    assert_eq!((&embed["builtIn"], &embed["version"], &embed["kind"]), (&json!(true), &json!(1), &json!("BuiltIn")));
    assert!(embed["description"].as_str().is_some_and(|d| d.contains("sentence encoder")), "{embed}");
    assert_eq!(embed["configSchema"]["properties"]["precision"]["enum"], json!(["fp32", "fp16", "bf16"]));
    assert_eq!(embed["overridable"], json!(["model", "precision"]));
    assert_eq!(http.get(format!("{base}/v1/pipelines/embed/versions/2")).send().await?.status(), 404);
    let listed: Value = http.get(format!("{base}/v1/pipelines")).send().await?.json().await?;
    let echo = listed["pipelines"].as_array().and_then(|all| all.iter().find(|p| p["name"] == "echo")).cloned();
    let echo = echo.unwrap_or_default();
    assert_eq!((&echo["version"], &echo["overridable"]), (&json!(1), &json!(["*"])), "{listed}");

    for (pipeline, config, field, why) in [
        ("embed", json!({"batch": 8}), "config.batch", "is locked"),
        ("embed", json!({"precision": "int8"}), "config.precision", "is not one of"),
        ("echo", json!({"lanes": 9}), "config.lanes", "greater than the maximum"),
    ] {
        let body =
            json!({"pipeline": pipeline, "workers": 1, "config": config, "itemList": {"items": [1], "batchSize": 1}});
        let response = http.post(format!("{base}/v1/jobs")).json(&body).send().await?;
        let status = response.status();
        let error: Value = response.json().await?;
        let violation = &error["details"][0]["fieldViolations"][0];
        assert_eq!((status.as_u16(), &violation["field"]), (400, &json!(field)), "{body}: {error}");
        assert!(violation["description"].as_str().is_some_and(|d| d.contains(why)), "{body}: {error}");
    }
    // echo lets through the fields it does not read, as Cortex's clients send them.
    let done = sandbox
        .submit_rest(
            json!({"pipeline": "echo", "workers": 1, "config": {"k": 1}, "itemList": {"items": [1, 2], "batchSize": 1}}),
            Duration::from_secs(60),
        )
        .await?;
    assert_eq!(done.state(), batchmill_proto::jobs::v1::JobState::Succeeded, "{done:?}");
    Ok(())
}
