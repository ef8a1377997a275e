//! Named input items, as Modzy's jobs have them: each item carries a name
//! its results are keyed by. A predictor gets such an item as
//! `{"name": <name>, "inputs": {<input name>: <value>, ...}}`, and the
//! result line of the item names it too:
//! `{"index": <i>, "name": <name>, "result": <result>}`.
//!
//! In the queue an item may also hold `"objects": {<input name>:
//! "s3://bucket/key"}`: inputs the worker reads from S3 (with the job's own
//! access) into `inputs` before the predictor sees the item.

use serde_json::{Map, Value, json};

/// Most characters of an item's name.
pub const MAX_NAME: usize = 256;

/// The item of named input `name`, with `objects` still to be read.
pub fn item(name: &str, inputs: Map<String, Value>, objects: Map<String, Value>) -> Value {
    if objects.is_empty() {
        json!({"name": name, "inputs": inputs})
    } else {
        json!({"name": name, "inputs": inputs, "objects": objects})
    }
}

/// The name of a named input item: an object with a string `name`, an
/// object `inputs` and perhaps an object `objects`, and nothing else.
pub fn name_of(item: &Value) -> Option<&str> {
    let object = item.as_object()?;
    let objects = usize::from(object.get("objects").is_some_and(Value::is_object));
    if object.len() != 2 + objects || !object.get("inputs").is_some_and(Value::is_object) {
        return None;
    }
    object.get("name")?.as_str()
}

/// The objects of a named item still to be read: (input name, s3:// URI).
pub fn objects_of(item: &Value) -> Vec<(&str, &str)> {
    if name_of(item).is_none() {
        return Vec::new();
    }
    let Some(objects) = item.get("objects").and_then(Value::as_object) else { return Vec::new() };
    objects.iter().filter_map(|(k, v)| Some((k.as_str(), v.as_str()?))).collect()
}

/// The inputs of a named input item.
pub fn inputs_of(item: &Value) -> Option<&Map<String, Value>> {
    name_of(item)?;
    item.get("inputs")?.as_object()
}

/// An input read from bytes (an S3 object, embedded data): its text when
/// it is UTF-8, else a `data:<media type>;base64,...` URI.
pub fn content(bytes: Vec<u8>, media_type: &str) -> Value {
    match String::from_utf8(bytes) {
        Ok(text) => Value::String(text),
        Err(e) => {
            use base64::Engine;
            let data = base64::engine::general_purpose::STANDARD.encode(e.as_bytes());
            Value::String(format!("data:{media_type};base64,{data}"))
        }
    }
}

/// The result line of item `index`, naming it if it is a named input.
pub fn result_line(index: u64, item: &Value, result: Value) -> Value {
    match name_of(item) {
        Some(name) => json!({"index": index, "name": name, "result": result}),
        None => json!({"index": index, "result": result}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_item_names_its_result_line_and_others_do_not() {
        let inputs = json!({"input.txt": "hello"}).as_object().cloned().unwrap_or_default();
        let named = item("item-1", inputs, Map::new());
        assert_eq!(name_of(&named), Some("item-1"));
        assert_eq!(inputs_of(&named).and_then(|i| i.get("input.txt")), Some(&json!("hello")));
        assert_eq!(result_line(3, &named, json!(1)), json!({"index": 3, "name": "item-1", "result": 1}));
        let with_objects =
            item("f/a.txt", Map::new(), json!({"doc": "s3://b/a.txt"}).as_object().cloned().unwrap_or_default());
        assert_eq!(name_of(&with_objects), Some("f/a.txt"));
        assert_eq!(objects_of(&with_objects), [("doc", "s3://b/a.txt")]);
        for plain in [
            json!("text"),
            json!({"name": "x"}),
            json!({"name": "x", "inputs": 1}),
            json!({"name": "x", "inputs": {}, "more": 1}),
        ] {
            assert_eq!(name_of(&plain), None, "{plain}");
            assert_eq!(result_line(0, &plain, json!(2)), json!({"index": 0, "result": 2}));
        }
    }
}
