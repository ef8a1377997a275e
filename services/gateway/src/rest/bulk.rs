//! Bulk JSON in a request: a `repeated google.protobuf.Value` field (a
//! job's inline items) may hold hundreds of thousands of values. Built as
//! reflective messages, each value costs a tree of allocations, and
//! encoding it measures every nested length once per level above it; the
//! gateway then spent most of a large submission there. Such fields are
//! taken out of the JSON body and encoded with the generated types instead,
//! as bytes that follow the rest of the message: protobuf merges a message
//! field that occurs twice and appends repeated fields, so the service
//! decodes the same request either way.

use bytes::BufMut;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use prost_reflect::{Kind, MessageDescriptor};
use serde_json::Value;

const VALUE: &str = "google.protobuf.Value";

/// Takes the bulk fields out of `body` (JSON of `desc`), at any depth of
/// singular message fields, and returns them encoded: the bytes to append
/// to the encoding of what is left. Empty when there are none.
pub fn take(desc: &MessageDescriptor, body: &mut Value) -> Vec<u8> {
    let mut out = Vec::new();
    let Value::Object(fields) = body else { return out };
    for (name, value) in fields.iter_mut() {
        let Some(field) = desc.get_field_by_json_name(name).or_else(|| desc.get_field_by_name(name)) else {
            continue; // refused as unknown when the rest is read
        };
        let Kind::Message(inner) = field.kind() else { continue };
        if field.is_list() && inner.full_name() == VALUE {
            let Value::Array(values) = value else { continue };
            for value in std::mem::take(values) {
                put_field(field.number(), &batchmill_core::json::json_to_value(&value).encode_to_vec(), &mut out);
            }
        } else if !field.is_list() && !field.is_map() && !inner.full_name().starts_with("google.protobuf.") {
            let nested = take(&inner, value);
            if !nested.is_empty() {
                put_field(field.number(), &nested, &mut out);
            }
        }
    }
    out
}

/// Appends `bytes` (an encoded message) as the message field `number`.
pub fn put_field(number: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.put_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchmill_proto::jobs::v1 as pb;
    use prost_reflect::{DescriptorPool, DynamicMessage};
    use serde_json::json;

    fn submit() -> MessageDescriptor {
        let pool = DescriptorPool::decode(batchmill_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
        pool.get_message_by_name("batchmill.jobs.v1.SubmitJobRequest").expect("SubmitJobRequest")
    }

    /// The typed request a service decodes from the transcoded bytes.
    fn transcoded(body: Value, splice: bool) -> pb::SubmitJobRequest {
        let mut body = body;
        let tail = if splice { take(&submit(), &mut body) } else { Vec::new() };
        let message = DynamicMessage::deserialize(submit(), body).expect("the rest of the body");
        let mut bytes = message.encode_to_vec();
        bytes.extend_from_slice(&tail);
        pb::SubmitJobRequest::decode(bytes.as_slice()).expect("decodes")
    }

    #[test]
    fn items_taken_out_decode_as_the_same_request() {
        let items = json!([{"n": 1, "tags": ["a", null], "deep": {"x": [1.5, {"y": true}]}}, "text", 3, null, []]);
        let body = json!({"pipeline": "echo", "workers": 2, "itemList": {"batchSize": 7, "items": items}});
        let fast = transcoded(body.clone(), true);
        assert_eq!(fast, transcoded(body, false));
        let Some(pb::submit_job_request::Source::ItemList(list)) = &fast.source else { panic!("{fast:?}") };
        assert_eq!((list.batch_size, list.items.len()), (7, 5));
        assert_eq!(batchmill_core::json::value_to_json(&list.items[0])["deep"]["x"][1]["y"], json!(true));
    }

    #[test]
    fn proto_names_work_and_a_body_without_items_is_left_alone() {
        let body = json!({"pipeline": "echo", "item_list": {"items": ["a", "b"]}});
        assert_eq!(transcoded(body.clone(), true), transcoded(body, false));
        let mut plain = json!({"pipeline": "echo", "config": {"items": [1]}});
        assert!(take(&submit(), &mut plain).is_empty(), "a Struct's contents are not a field");
        assert_eq!(plain["config"]["items"], json!([1]));
    }
}
