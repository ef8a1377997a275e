//! Named input items, as Modzy's jobs have them: each item carries a name
//! its results are keyed by. A predictor gets such an item as
//! `{"name": <name>, "inputs": {<input name>: <value>, ...}}`, and the
//! result line of the item names it too:
//! `{"index": <i>, "name": <name>, "result": <result>}`.

use serde_json::{Map, Value, json};

/// Most characters of an item's name.
pub const MAX_NAME: usize = 256;

/// The item a predictor gets for named input `name`.
pub fn item(name: &str, inputs: Map<String, Value>) -> Value {
    json!({"name": name, "inputs": inputs})
}

/// The name of a named input item: an object with a string `name` and an
/// object `inputs`, and nothing else.
pub fn name_of(item: &Value) -> Option<&str> {
    let object = item.as_object()?;
    if object.len() != 2 || !object.get("inputs").is_some_and(Value::is_object) {
        return None;
    }
    object.get("name")?.as_str()
}

/// The inputs of a named input item.
pub fn inputs_of(item: &Value) -> Option<&Map<String, Value>> {
    name_of(item)?;
    item.get("inputs")?.as_object()
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
        let named = item("item-1", inputs);
        assert_eq!(name_of(&named), Some("item-1"));
        assert_eq!(inputs_of(&named).and_then(|i| i.get("input.txt")), Some(&json!("hello")));
        assert_eq!(result_line(3, &named, json!(1)), json!({"index": 3, "name": "item-1", "result": 1}));
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
