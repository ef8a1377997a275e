//! Building a request message from an HTTP request: the JSON body (canonical
//! proto3 JSON; unknown fields are refused), path variables and query
//! parameters, as grpc-gateway does.

use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};

/// Why a request could not be built; becomes a 400 naming the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Parses `body` as JSON of `desc`, naming what is wrong.
pub fn from_json(desc: MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, BadRequest> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let message = DynamicMessage::deserialize_with_options(desc, &mut de, &DeserializeOptions::new())
        .map_err(|e| BadRequest(format!("invalid JSON body: {e}")))?;
    de.end().map_err(|e| BadRequest(format!("invalid JSON body: {e}")))?;
    Ok(message)
}

/// `json` (already parsed) as `desc`, naming what is wrong.
pub fn from_value(desc: MessageDescriptor, json: serde_json::Value) -> Result<DynamicMessage, BadRequest> {
    DynamicMessage::deserialize_with_options(desc, json, &DeserializeOptions::new())
        .map_err(|e| BadRequest(format!("invalid JSON body: {e}")))
}

/// Sets the field at dotted `path` (proto or JSON names) from text.
pub fn set_path(message: &mut DynamicMessage, path: &str, text: &str) -> Result<(), BadRequest> {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let desc = message.descriptor();
    let field = desc
        .get_field_by_name(head)
        .or_else(|| desc.get_field_by_json_name(head))
        .ok_or_else(|| BadRequest(format!("unknown field {path:?} in {}", desc.full_name())))?;
    match rest {
        Some(rest) => {
            let Kind::Message(_) = field.kind() else {
                return Err(BadRequest(format!("field {head:?} is not a message, so {path:?} names nothing")));
            };
            let Value::Message(child) = message.get_field_mut(&field) else {
                return Err(BadRequest(format!("field {head:?} is not a message")));
            };
            set_path(child, rest, text)
        }
        None => set_scalar(message, &field, text),
    }
}

fn set_scalar(message: &mut DynamicMessage, field: &FieldDescriptor, text: &str) -> Result<(), BadRequest> {
    let name = field.name();
    let bad = |what: &str| BadRequest(format!("{name}: {text:?} is not {what}"));
    let value = match field.kind() {
        Kind::String => Value::String(text.to_owned()),
        Kind::Bool => Value::Bool(text.parse().map_err(|_| bad("true or false"))?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(text.parse().map_err(|_| bad("a 32-bit integer"))?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(text.parse().map_err(|_| bad("a 64-bit integer"))?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(text.parse().map_err(|_| bad("an unsigned 32-bit integer"))?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(text.parse().map_err(|_| bad("an unsigned 64-bit integer"))?),
        Kind::Float => Value::F32(text.parse().map_err(|_| bad("a number"))?),
        Kind::Double => Value::F64(text.parse().map_err(|_| bad("a number"))?),
        Kind::Enum(e) => {
            // By name, full (EVENT_LEVEL_ERROR) or short (ERROR), or by number.
            let prefix = e.values().next().map(|v| v.name().trim_end_matches("UNSPECIFIED").to_owned());
            let number = e
                .get_value_by_name(text)
                .or_else(|| prefix.and_then(|p| e.get_value_by_name(&format!("{p}{}", text.to_uppercase()))))
                .map(|v| v.number())
                .or_else(|| text.parse().ok().filter(|n| e.get_value(*n).is_some()))
                .ok_or_else(|| bad(&format!("a value of {}", e.full_name())))?;
            Value::EnumNumber(number)
        }
        // Well-known types have a JSON string form (a Duration is "90s", a
        // Timestamp RFC 3339), which a query parameter may carry.
        Kind::Message(m) if m.full_name().starts_with("google.protobuf.") => {
            let json = serde_json::Value::String(text.to_owned());
            let parsed = DynamicMessage::deserialize(m.clone(), json)
                .map_err(|e| bad(&format!("a {} in its JSON form: {e}", m.full_name())))?;
            Value::Message(parsed)
        }
        Kind::Bytes | Kind::Message(_) => {
            return Err(BadRequest(format!("{name} cannot be set from a path or query parameter")));
        }
    };
    if field.is_list() {
        if let Value::List(list) = message.get_field_mut(field) {
            list.push(value);
        }
    } else {
        message.try_set_field(field, value).map_err(|e| BadRequest(format!("{name}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::DescriptorPool;

    fn desc(name: &str) -> MessageDescriptor {
        DescriptorPool::decode(batchmill_proto::FILE_DESCRIPTOR_SET).unwrap().get_message_by_name(name).unwrap()
    }

    #[test]
    fn refuses_unknown_fields_and_malformed_json() {
        let d = desc("batchmill.jobs.v1.SubmitJobRequest");
        let err = from_json(d.clone(), br#"{"pipeline":"echo","bogus":1}"#).unwrap_err();
        assert!(err.0.contains("bogus"), "{err}");
        let err = from_json(d.clone(), br#"{"pipeline":"#).unwrap_err();
        assert!(err.0.starts_with("invalid JSON body"), "{err}");
        let ok = from_json(d, br#"{"pipeline":"echo","itemList":{"items":[1,"a"],"batchSize":2}}"#).unwrap();
        assert!(ok.has_field_by_name("item_list"));
    }

    #[test]
    fn sets_query_parameters_by_either_name() {
        let d = desc("batchmill.jobs.v1.ListJobsRequest");
        let mut m = DynamicMessage::new(d);
        set_path(&mut m, "pageSize", "7").unwrap();
        set_path(&mut m, "page_token", "abc").unwrap();
        assert_eq!(m.get_field_by_name("page_size").unwrap().as_i32(), Some(7));
        assert_eq!(m.get_field_by_name("page_token").unwrap().as_str(), Some("abc"));
        assert!(set_path(&mut m, "pageSize", "seven").unwrap_err().0.contains("page_size"));
        assert!(set_path(&mut m, "nope", "1").unwrap_err().0.contains("nope"));
    }

    #[test]
    fn takes_repeated_enums_by_full_or_short_name() {
        let mut m = DynamicMessage::new(desc("batchmill.jobs.v1.ListJobEventsRequest"));
        for level in ["EVENT_LEVEL_ERROR", "warn", "5"] {
            set_path(&mut m, "levels", level).unwrap();
        }
        let levels = m.get_field_by_name("levels").unwrap();
        let numbers: Vec<i32> = levels.as_list().unwrap().iter().filter_map(|v| v.as_enum_number()).collect();
        assert_eq!(numbers, [3, 2, 5]);
        let err = set_path(&mut m, "levels", "LOUD").unwrap_err().0;
        assert!(err.contains("levels") && err.contains("EventLevel"), "{err}");
    }
}
