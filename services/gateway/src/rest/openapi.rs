//! The REST API's OpenAPI 3 document, generated from what the transcoder
//! serves: the routes read from the `google.api.http` options ([`Route`]) and
//! the messages' descriptors, with the protos' comments as descriptions. A
//! new annotated RPC appears here with no code, and the document cannot
//! describe a route the gateway does not serve.
//!
//! Bodies are proto3 JSON as the transcoder reads and writes it: lowerCamel
//! field names, enums by name, 64-bit integers as strings, the well-known
//! types in their JSON forms (a `Timestamp` is an RFC 3339 string, a
//! `Duration` `"90s"`, a `Struct` any object).

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{Cardinality, EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::rules::Route;

/// The document's `info.version`: the crate's.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The OpenAPI 3.0 document of `routes`.
pub fn document(routes: &[Route]) -> Value {
    let mut schemas = Schemas::default();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut tags = BTreeMap::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for route in routes {
        let service = route.method.parent_service();
        tags.entry(service.name().to_owned())
            .or_insert_with(|| comment(&service.parent_file(), service.path()).unwrap_or_default());
        let (path, params) = route.template.openapi();
        // An RPC with additional bindings has one operation per binding.
        let id = format!("{}_{}", service.name(), route.method.name());
        let n = seen.entry(id.clone()).and_modify(|n| *n += 1).or_insert(1);
        let id = if *n == 1 { id } else { format!("{id}_{n}") };
        let operation = operation(route, &id, &params, &mut schemas);
        paths.entry(path).or_default().insert(route.verb.as_str().to_ascii_lowercase(), operation);
    }
    let mut components = schemas.finish();
    components.insert("Status".into(), status_schema());
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "batchmill",
            "version": VERSION,
            "description": "Batch inference jobs over REST/JSON: the same services the gateway serves over \
                            gRPC, transcoded from their google.api.http annotations. Every request carries \
                            an API key as `Authorization: Bearer <key>`. Errors are google.rpc.Status \
                            objects; a bad request names each bad field under details.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": tags.into_iter().map(|(name, description)| json!({"name": name, "description": description}))
            .collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "An API key."}},
        },
    })
}

/// One operation: parameters from the path and the query, the body, the
/// response and the error.
fn operation(route: &Route, id: &str, path_params: &[String], schemas: &mut Schemas) -> Value {
    let method = &route.method;
    let input = method.input();
    let description = comment(&method.parent_file(), method.path()).unwrap_or_default();
    // The first sentence.
    let summary = description.split(". ").next().unwrap_or_default().trim_end_matches('.').to_owned();
    let mut parameters = Vec::new();
    for name in path_params {
        let field = field_at(&input, name);
        let mut schema = field.as_ref().map_or_else(|| json!({"type": "string"}), |f| schemas.scalar(f));
        let mut description = field.as_ref().and_then(field_comment).unwrap_or_default();
        if route.template.spans_segments(name) {
            description.push_str(" (may span several path segments, slashes included)");
            schema = json!({"type": "string"});
        }
        parameters.push(json!({
            "name": name, "in": "path", "required": true, "schema": schema, "description": description.trim(),
        }));
    }
    // Fields neither in the path nor the body are query parameters (the
    // transcoder refuses a query where the body takes every field).
    let bound: BTreeSet<&str> = path_params.iter().map(|p| p.split('.').next().unwrap_or(p)).collect();
    if route.body != "*" {
        for field in input.fields() {
            if bound.contains(field.name()) || field.name() == route.body || !is_query(&field) {
                continue;
            }
            let schema = schemas.field(&field);
            let mut param = json!({
                "name": field.json_name(), "in": "query", "schema": schema,
                "description": field_comment(&field).unwrap_or_default(),
            });
            if field.is_list() {
                param["style"] = json!("form");
                param["explode"] = json!(true);
            }
            parameters.push(param);
        }
    }
    let mut op = json!({
        "operationId": id,
        "tags": [method.parent_service().name()],
        "summary": summary,
        "description": description,
        "parameters": parameters,
        "responses": {
            "200": response(route, schemas),
            "default": {
                "description": "An error: its gRPC code, a message, and for a bad request the fields at fault.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}},
            },
        },
    });
    let body = match route.body.as_str() {
        "" => None,
        "*" if bound.is_empty() => Some(schemas.message_ref(&input)),
        "*" => Some(schemas.inline(&input, &bound)),
        field => input.get_field_by_name(field).map(|f| schemas.field(&f)),
    };
    if let Some(schema) = body {
        op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema}}});
    }
    op
}

/// The 200 response: the output message, or the field of it that
/// `response_body` names; a stream is one JSON object per line.
fn response(route: &Route, schemas: &mut Schemas) -> Value {
    let output = route.method.output();
    let schema = match route.response_body.as_str() {
        "" => schemas.message_ref(&output),
        field => match output.get_field_by_name(field) {
            Some(f) => schemas.field(&f),
            None => schemas.message_ref(&output),
        },
    };
    if route.method.is_server_streaming() {
        return json!({
            "description": "A stream of newline-delimited JSON objects (application/x-ndjson), one per message, \
                            until the stream ends or the client disconnects.",
            "content": {"application/x-ndjson": {"schema": schema}},
        });
    }
    json!({"description": "OK", "content": {"application/json": {"schema": schema}}})
}

/// Whether a field can be set from a query parameter (as `request::set_path`
/// does): scalars, enums and the well-known types with a string form.
fn is_query(field: &FieldDescriptor) -> bool {
    match field.kind() {
        Kind::Bytes => false,
        Kind::Message(m) => !field.is_map() && string_form(&m).is_some(),
        _ => true,
    }
}

/// The field at a dotted path of `message`'s fields (proto names).
fn field_at(message: &MessageDescriptor, path: &str) -> Option<FieldDescriptor> {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let field = message.get_field_by_name(head)?;
    match (rest, field.kind()) {
        (None, _) => Some(field),
        (Some(rest), Kind::Message(inner)) => field_at(&inner, rest),
        (Some(_), _) => None,
    }
}

/// The JSON schema of a well-known type with a string form, if `m` is one.
fn string_form(m: &MessageDescriptor) -> Option<Value> {
    Some(match m.full_name() {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$",
                                             "description": "Seconds with an s suffix, e.g. \"90s\" or \"1.5s\"."}),
        "google.protobuf.FieldMask" => json!({"type": "string", "description": "Comma-separated field paths."}),
        "google.protobuf.StringValue" => json!({"type": "string"}),
        "google.protobuf.BytesValue" => json!({"type": "string", "format": "byte"}),
        "google.protobuf.BoolValue" => json!({"type": "boolean"}),
        "google.protobuf.Int32Value" => json!({"type": "integer", "format": "int32"}),
        "google.protobuf.UInt32Value" => json!({"type": "integer", "format": "int64", "minimum": 0}),
        "google.protobuf.Int64Value" => json!({"type": "string", "format": "int64"}),
        "google.protobuf.UInt64Value" => json!({"type": "string", "format": "uint64"}),
        "google.protobuf.FloatValue" => json!({"type": "number", "format": "float"}),
        "google.protobuf.DoubleValue" => json!({"type": "number", "format": "double"}),
        _ => return None,
    })
}

/// The schemas an operation refers to, gathered as they are first named.
#[derive(Default)]
struct Schemas {
    messages: BTreeMap<String, MessageDescriptor>,
    enums: BTreeMap<String, EnumDescriptor>,
}

impl Schemas {
    /// A reference to `m`'s schema (or its JSON form, for a well-known type).
    fn message_ref(&mut self, m: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known(m) {
            return schema;
        }
        self.messages.entry(m.full_name().to_owned()).or_insert_with(|| m.clone());
        json!({"$ref": format!("#/components/schemas/{}", m.full_name())})
    }

    /// `m`'s schema written in place, without the fields in `skip` (those a
    /// path binds).
    fn inline(&mut self, m: &MessageDescriptor, skip: &BTreeSet<&str>) -> Value {
        let mut properties = Map::new();
        for field in m.fields().filter(|f| !skip.contains(f.name())) {
            properties.insert(field.json_name().to_owned(), self.described(&field));
        }
        let mut schema = json!({"type": "object", "properties": properties, "additionalProperties": false});
        if let Some(text) = comment(&m.parent_file(), m.path()) {
            schema["description"] = json!(text);
        }
        schema
    }

    /// A field's schema with its comment as description. (A `$ref` cannot
    /// have siblings in OpenAPI 3.0: a referenced type keeps its own.)
    fn described(&mut self, field: &FieldDescriptor) -> Value {
        let mut schema = self.field(field);
        if let (Some(text), Some(object)) = (field_comment(field), schema.as_object_mut()) {
            if object.contains_key("$ref") {
                schema = json!({"allOf": [schema], "description": text});
            } else {
                object.insert("description".into(), json!(text));
            }
        }
        schema
    }

    /// A field's schema: maps are objects, repeated fields arrays.
    fn field(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else { unreachable!("a map field is a message of entries") };
            let value = self.scalar(&entry.map_entry_value_field());
            return json!({"type": "object", "additionalProperties": value});
        }
        let one = self.scalar(field);
        if field.cardinality() == Cardinality::Repeated { json!({"type": "array", "items": one}) } else { one }
    }

    /// The schema of one value of the field.
    fn scalar(&mut self, field: &FieldDescriptor) -> Value {
        match field.kind() {
            Kind::Double => json!({"type": "number", "format": "double"}),
            Kind::Float => json!({"type": "number", "format": "float"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({"type": "integer", "format": "int32"}),
            Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "int64", "minimum": 0}),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({"type": "string", "format": "int64"}),
            Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64"}),
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "format": "byte"}),
            Kind::Enum(e) => {
                self.enums.entry(e.full_name().to_owned()).or_insert_with(|| e.clone());
                json!({"$ref": format!("#/components/schemas/{}", e.full_name())})
            }
            Kind::Message(m) => self.message_ref(&m),
        }
    }

    /// Every schema named so far, and those they name in turn.
    fn finish(mut self) -> Map<String, Value> {
        let mut out = Map::new();
        let mut done = BTreeSet::new();
        loop {
            let Some((name, m)) =
                self.messages.iter().find(|(n, _)| !done.contains(*n)).map(|(n, m)| (n.clone(), m.clone()))
            else {
                break;
            };
            done.insert(name.clone());
            let schema = self.inline(&m, &BTreeSet::new());
            out.insert(name, schema);
        }
        for (name, e) in &self.enums {
            let mut schema = json!({
                "type": "string",
                "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>(),
            });
            let values: Vec<String> = e
                .values()
                .filter_map(|v| comment(&e.parent_file(), v.path()).map(|c| format!("- {}: {c}", v.name())))
                .collect();
            let text = [comment(&e.parent_file(), e.path()).unwrap_or_default(), values.join("\n")].join("\n\n");
            if !text.trim().is_empty() {
                schema["description"] = json!(text.trim());
            }
            out.insert(name.clone(), schema);
        }
        out
    }
}

/// The JSON form of the well-known types that have no schema of their own.
fn well_known(m: &MessageDescriptor) -> Option<Value> {
    if let Some(schema) = string_form(m) {
        return Some(schema);
    }
    Some(match m.full_name() {
        "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": true}),
        "google.protobuf.Value" => json!({"description": "Any JSON value."}),
        "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.protobuf.Any" => json!({"type": "object", "properties": {"@type": {"type": "string"}},
                                        "additionalProperties": true}),
        _ => return None,
    })
}

/// The `google.rpc.Status` every error answers with.
fn status_schema() -> Value {
    json!({
        "type": "object",
        "description": "An error, as google.rpc.Status in JSON.",
        "properties": {
            "code": {"type": "integer", "format": "int32", "description": "The gRPC status code."},
            "message": {"type": "string", "description": "What went wrong, for a person."},
            "details": {
                "type": "array",
                "description": "For INVALID_ARGUMENT, a google.rpc.BadRequest naming each field at fault.",
                "items": {
                    "type": "object",
                    "properties": {
                        "@type": {"type": "string"},
                        "fieldViolations": {"type": "array", "items": {
                            "type": "object",
                            "properties": {"field": {"type": "string"}, "description": {"type": "string"}},
                        }},
                    },
                },
            },
        },
    })
}

fn field_comment(field: &FieldDescriptor) -> Option<String> {
    comment(&field.parent_file(), field.path())
}

/// The leading comment (or else the trailing one) of the element at `path`
/// in `file`: its lines joined, a blank line between paragraphs.
fn comment(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let location = info.location.iter().find(|l| l.path == path)?;
    let text = location.leading_comments.as_deref().or(location.trailing_comments.as_deref())?;
    let mut paragraphs: Vec<String> = vec![String::new()];
    for line in text.lines().map(str::trim) {
        let last = paragraphs.last_mut().expect("never empty");
        match (line.is_empty(), last.is_empty()) {
            (true, true) => {}
            (true, false) => paragraphs.push(String::new()),
            (false, true) => last.push_str(line),
            (false, false) => {
                last.push(' ');
                last.push_str(line);
            }
        }
    }
    let text = paragraphs.into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join("\n\n");
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use prost_reflect::DescriptorPool;

    use super::*;

    fn doc() -> Value {
        let pool = DescriptorPool::decode(batchmill_proto::FILE_DESCRIPTOR_SET).unwrap();
        document(&super::super::rules::load(&pool, crate::PUBLIC_SERVICES).unwrap())
    }

    /// Every `$ref` under `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_annotated_rpc_is_an_operation() {
        // Counted from the descriptors directly, not through the routes.
        let pool = DescriptorPool::decode(batchmill_proto::FILE_DESCRIPTOR_SET).unwrap();
        let http = pool.get_extension_by_name("google.api.http").unwrap();
        let mut annotated = BTreeSet::new();
        for name in crate::PUBLIC_SERVICES {
            for m in pool.get_service_by_name(name).unwrap().methods() {
                if m.options().has_extension(&http) {
                    annotated.insert(format!("{}_{}", m.parent_service().name(), m.name()));
                }
            }
        }
        let doc = doc();
        let ops: BTreeSet<String> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|op| op["operationId"].as_str().unwrap().to_owned())
            .collect();
        assert!(annotated.len() > 20, "{annotated:?}");
        assert_eq!(ops, annotated);
    }

    #[test]
    fn paths_declare_their_parameters_and_every_reference_resolves() {
        let doc = doc();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let in_path: BTreeSet<&str> = path.split('{').skip(1).map(|s| s.split('}').next().unwrap()).collect();
            for op in item.as_object().unwrap().values() {
                let declared: BTreeSet<&str> = op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                assert_eq!(declared, in_path, "{path}");
            }
        }
        let mut found = Vec::new();
        refs(&doc, &mut found);
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            assert!(schemas.contains_key(name), "{r} does not resolve");
        }
    }

    #[test]
    fn bodies_parameters_and_responses_follow_the_rules() {
        let doc = doc();
        let op = |path: &str, verb: &str| doc["paths"][path][verb].clone();
        let submit = op("/v1/jobs", "post");
        assert_eq!(submit["operationId"], "JobService_SubmitJob");
        assert!(submit["summary"].as_str().unwrap().starts_with("SubmitJob accepts a job"), "{submit}");
        assert_eq!(
            submit["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/batchmill.jobs.v1.SubmitJobRequest"
        );
        // response_body "job": the Job itself, not the response around it.
        assert_eq!(
            submit["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/batchmill.jobs.v1.Job"
        );
        let list = op("/v1/jobs", "get");
        let query: Vec<&str> =
            list["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert!(query.contains(&"pageSize") && query.contains(&"pageToken"), "{query:?}");
        // A stream is newline-delimited JSON.
        let watch = op("/v1/jobs/{job_id}:watch", "get");
        assert!(watch["responses"]["200"]["content"]["application/x-ndjson"].is_object(), "{watch}");
        // Proto3 JSON: lowerCamel names, enums by name, int64 as strings.
        let job = &doc["components"]["schemas"]["batchmill.jobs.v1.Job"];
        assert!(job["properties"]["jobId"].is_object(), "{job}");
        let states = doc["components"]["schemas"]["batchmill.jobs.v1.JobState"]["enum"].as_array().unwrap();
        assert!(states.iter().any(|s| s == "JOB_STATE_SUCCEEDED"));
        let mut int64 = Vec::new();
        find_int64(&doc["components"]["schemas"], &mut int64);
        assert!(int64.iter().all(|t| *t == "string"), "{int64:?}");
    }

    fn find_int64<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if m.get("format").and_then(Value::as_str) == Some("int64") && m.get("minimum").is_none() {
                    out.push(m.get("type").and_then(Value::as_str).unwrap_or(""));
                }
                m.values().for_each(|v| find_int64(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| find_int64(v, out)),
            _ => {}
        }
    }
}
