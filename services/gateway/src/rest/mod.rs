//! REST/JSON transcoding, generic over the descriptors: each request is
//! matched against the `google.api.http` routes, turned into the RPC's
//! request message and sent through the same in-process gRPC services the
//! gRPC port serves, so REST and gRPC share validation and every layer.

mod bulk;
mod codec;
pub(crate) mod error;
mod openapi;
mod reference;
mod request;
mod rules;
pub(crate) mod template;

pub use error::status_response;

use std::str::FromStr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::StatusCode;
use http::uri::PathAndQuery;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions, Value};
use tonic::service::Routes;

use codec::{DynamicCodec, Transcoded};
use request::BadRequest;
use rules::Route;
pub use rules::RouteError;

/// Largest REST request body.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// Request headers passed on to the RPC as metadata. The API key is not:
/// the caller it was checked to be rides in the request's extensions.
const FORWARDED_HEADERS: &[&str] = &["x-request-id"];

/// Where the OpenAPI document of the routes is served, and its reference
/// page (names with a dot, which no Cortex API can have).
pub const OPENAPI_PATH: &str = "/openapi.json";
pub const REFERENCE_PATH: &str = "/openapi.html";

/// The REST face of a set of gRPC services.
pub struct Rest {
    routes: Vec<Route>,
    grpc: Routes,
    /// The OpenAPI document of `routes`, and the page that shows it.
    openapi: Bytes,
    reference: Bytes,
}

impl Rest {
    /// REST routes for the annotated methods of `services`, served by `grpc`.
    pub fn new(grpc: Routes, services: &[&str]) -> Result<Rest, RouteError> {
        let pool = DescriptorPool::decode(batchmill_proto::FILE_DESCRIPTOR_SET)?;
        let routes = rules::load(&pool, services)?;
        let doc = openapi::document(&routes);
        let reference = Bytes::from(reference::page(&doc));
        Ok(Rest { routes, grpc, openapi: Bytes::from(doc.to_string()), reference })
    }

    /// The OpenAPI document (`GET /openapi.json`) or its reference page.
    pub fn docs(&self, path: &str) -> Option<Response> {
        let (kind, body) = match path {
            OPENAPI_PATH => ("application/json", self.openapi.clone()),
            REFERENCE_PATH => ("text/html; charset=utf-8", self.reference.clone()),
            _ => return None,
        };
        Some(([(http::header::CONTENT_TYPE, kind)], body).into_response())
    }
}

/// The axum handler for every REST request.
pub async fn handle(State(rest): State<Arc<Rest>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let (route, vars) = match find(&rest.routes, &parts.method, &path) {
        Ok(found) => found,
        Err((status, code)) => {
            return error::json_error(status, code, &format!("no route for {} {path}", parts.method), vec![]);
        }
    };
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return error::closing(error::json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                tonic::Code::ResourceExhausted,
                &format!("request body exceeds the {MAX_BODY_BYTES}-byte (10 MiB) limit"),
                vec![],
            ));
        }
    };
    let message = match build_request(route, &vars, parts.uri.query(), &body) {
        Ok(m) => m,
        Err(e) => {
            return error::json_error(StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument, &e.0, vec![]);
        }
    };
    // The RPC runs in this request's span, which continues the caller's trace.
    let mut grpc_request = batchmill_runtime::trace::request(message);
    for name in FORWARDED_HEADERS {
        if let Some(value) = parts.headers.get(*name)
            && let Ok(value) = tonic::metadata::MetadataValue::try_from(value.as_bytes())
        {
            grpc_request.metadata_mut().insert(*name, value);
        }
    }
    if let Some(caller) = parts.extensions.get::<batchmill_core::Caller>() {
        grpc_request.extensions_mut().insert(caller.clone());
    }
    call(rest.grpc.clone(), route, grpc_request).await
}

/// A path's variables as a route's template binds them: (name, value).
type PathVars = Vec<(String, String)>;

/// The route `method path` takes and its path variables, or the HTTP status
/// and gRPC code it is refused with: no such path, or not with that method.
fn find<'a>(
    routes: &'a [Route],
    method: &http::Method,
    path: &str,
) -> Result<(&'a Route, PathVars), (StatusCode, tonic::Code)> {
    let mut path_matched = false;
    let found = routes.iter().find_map(|route| {
        let vars = route.template.matches(path)?;
        path_matched = true;
        (route.verb == method).then_some((route, vars))
    });
    found.ok_or(if path_matched {
        (StatusCode::METHOD_NOT_ALLOWED, tonic::Code::Unimplemented)
    } else {
        (StatusCode::NOT_FOUND, tonic::Code::NotFound)
    })
}

/// The routes alone: a request matched and turned into its RPC's request
/// message, as the handler does, without sending it (the fuzz targets
/// drive the transcoder through it).
pub struct Transcoder {
    routes: Vec<Route>,
}

impl Transcoder {
    /// The routes of the annotated methods of `services`.
    pub fn new(services: &[&str]) -> Result<Transcoder, RouteError> {
        let pool = DescriptorPool::decode(batchmill_proto::FILE_DESCRIPTOR_SET)?;
        Ok(Transcoder { routes: rules::load(&pool, services)? })
    }

    /// The encoded request message that `method path?query` with `body`
    /// becomes, or the HTTP status it is refused with.
    pub fn transcode(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
        body: &Bytes,
    ) -> Result<Vec<u8>, StatusCode> {
        let (route, vars) = find(&self.routes, method, path).map_err(|(status, _)| status)?;
        let transcoded = build_request(route, &vars, query, body).map_err(|_| StatusCode::BAD_REQUEST)?;
        let mut encoded = prost::Message::encode_to_vec(&transcoded.message);
        encoded.extend_from_slice(&transcoded.tail);
        Ok(encoded)
    }
}

fn build_request(
    route: &Route,
    vars: &[(String, String)],
    query: Option<&str>,
    body: &Bytes,
) -> Result<Transcoded, BadRequest> {
    let input = route.method.input();
    let (mut message, tail) = match route.body.as_str() {
        "*" => from_body(input, body)?,
        "" => (DynamicMessage::new(input), Vec::new()),
        field => {
            let mut message = DynamicMessage::new(input.clone());
            let desc = input
                .get_field_by_name(field)
                .ok_or_else(|| BadRequest(format!("body field {field:?} does not exist")))?;
            let prost_reflect::Kind::Message(inner) = desc.kind() else {
                return Err(BadRequest(format!("body field {field:?} is not a message")));
            };
            let (inner, tail) = from_body(inner, body)?;
            message.set_field(&desc, Value::Message(inner));
            let mut wrapped = Vec::new();
            if !tail.is_empty() {
                bulk::put_field(desc.number(), &tail, &mut wrapped);
            }
            (message, wrapped)
        }
    };
    for (name, value) in vars {
        request::set_path(&mut message, name, value)?;
    }
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        if route.body == "*" {
            let message = "query parameters are not accepted here: put every field in the JSON body";
            return Err(BadRequest(message.into()));
        }
        for (key, value) in form_urlencoded(query) {
            request::set_path(&mut message, &key, &value)
                .map_err(|e| BadRequest(format!("query parameter {key:?}: {e}")))?;
        }
    }
    Ok(Transcoded { message, tail })
}

/// The JSON body as `desc`, and its bulk fields encoded apart (see
/// `bulk.rs`); an empty body is an empty message.
fn from_body(desc: prost_reflect::MessageDescriptor, body: &Bytes) -> Result<(DynamicMessage, Vec<u8>), BadRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((DynamicMessage::new(desc), Vec::new()));
    }
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return request::from_json(desc, body).map(|m| (m, Vec::new())); // it names what is wrong
    };
    let tail = bulk::take(&desc, &mut json);
    if tail.is_empty() {
        // Read from the text, so that an error says where it is.
        return request::from_json(desc, body).map(|m| (m, Vec::new()));
    }
    Ok((request::from_value(desc, json)?, tail))
}

/// Decodes `a=1&b=x%20y` pairs.
pub fn form_urlencoded(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compact JSON, except that a whole number held in a double (as every
/// number in a `google.protobuf.Value` is) is written as an integer, `12`
/// rather than `12.0`, as other proto3 JSON encoders write it.
pub struct ProtoJsonFormatter;

impl serde_json::ser::Formatter for ProtoJsonFormatter {
    fn write_f64<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, value: f64) -> std::io::Result<()> {
        // Integers up to 2^53 are exact in a double.
        if value.fract() == 0.0 && value.abs() <= 9_007_199_254_740_992.0 {
            write!(writer, "{}", value as i64)
        } else {
            serde_json::ser::CompactFormatter.write_f64(writer, value)
        }
    }
}

fn to_json(message: &DynamicMessage, response_body: &str) -> Result<Vec<u8>, serde_json::Error> {
    use serde::ser::Error as _;
    let options = SerializeOptions::new().skip_default_fields(false);
    let mut out = serde_json::Serializer::with_formatter(Vec::new(), ProtoJsonFormatter);
    if response_body.is_empty() {
        message.serialize_with_options(&mut out, &options)?;
    } else {
        match message.get_field_by_name(response_body).as_deref() {
            Some(Value::Message(inner)) => inner.serialize_with_options(&mut out, &options)?,
            _ => return Err(serde_json::Error::custom(format!("response field {response_body:?} is not a message"))),
        }
    }
    Ok(out.into_inner())
}

async fn call(grpc: Routes, route: &Route, request: tonic::Request<Transcoded>) -> Response {
    let method = &route.method;
    let path = match PathAndQuery::from_str(&format!("/{}/{}", method.parent_service().full_name(), method.name())) {
        Ok(p) => p,
        Err(e) => {
            return error::json_error(StatusCode::INTERNAL_SERVER_ERROR, tonic::Code::Internal, &e.to_string(), vec![]);
        }
    };
    let mut client = tonic::client::Grpc::new(grpc)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    if let Err(e) = client.ready().await {
        return error::json_error(StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable, &e.to_string(), vec![]);
    }
    let codec = DynamicCodec::new(method.output());
    if method.is_server_streaming() {
        let stream = match client.server_streaming(request, path, codec).await {
            Ok(r) => r.into_inner(),
            Err(status) => return status_response(&status),
        };
        // One JSON object a line: {"result": ...}, or {"error": ...} last.
        let response_body = route.response_body.clone();
        let lines = stream.map(move |item| {
            let mut line = match item {
                Ok(message) => match to_json(&message, &response_body) {
                    Ok(json) => [b"{\"result\":".as_slice(), &json, b"}"].concat(),
                    Err(e) => {
                        serde_json::json!({"error": {"code": 13, "message": e.to_string()}}).to_string().into_bytes()
                    }
                },
                Err(status) => serde_json::json!({"error": error::status_json(&status)}).to_string().into_bytes(),
            };
            line.push(b'\n');
            Ok::<_, std::convert::Infallible>(Bytes::from(line))
        });
        return (StatusCode::OK, [(http::header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines))
            .into_response();
    }
    match client.unary(request, path, codec).await {
        Ok(response) => match to_json(response.get_ref(), &route.response_body) {
            Ok(json) => (StatusCode::OK, [(http::header::CONTENT_TYPE, "application/json")], json).into_response(),
            Err(e) => {
                error::json_error(StatusCode::INTERNAL_SERVER_ERROR, tonic::Code::Internal, &e.to_string(), vec![])
            }
        },
        Err(status) => status_response(&status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_strings() {
        assert_eq!(
            form_urlencoded("pageSize=2&page_token=a%20b&x=1+2"),
            vec![("pageSize".into(), "2".into()), ("page_token".into(), "a b".into()), ("x".into(), "1 2".into())]
        );
    }

    #[test]
    fn whole_doubles_are_written_as_integers() {
        use serde::Serialize;
        let mut out = serde_json::Serializer::with_formatter(Vec::new(), ProtoJsonFormatter);
        [12.0, -3.0, 0.5, 1e300].serialize(&mut out).unwrap();
        assert_eq!(String::from_utf8(out.into_inner()).unwrap(), "[12,-3,0.5,1e+300]");
    }
}
