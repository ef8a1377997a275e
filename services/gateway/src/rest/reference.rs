//! The API reference page at `/docs`: the OpenAPI document ([`super::openapi`])
//! written out as one HTML page, on the server, with no script and nothing
//! fetched from elsewhere. Each operation shows its method and path, what it
//! does, its parameters, body and response; each schema its fields.

use std::fmt::Write;

use serde_json::Value;

/// An operation on the page: its verb, its path and its object.
type Op<'a> = (String, String, &'a Value);

/// The page for `doc`.
pub fn page(doc: &Value) -> String {
    let mut html = String::from(HEAD);
    let title = doc["info"]["title"].as_str().unwrap_or("API");
    let version = doc["info"]["version"].as_str().unwrap_or("");
    let _ = write!(html, "<h1>{} REST API <small>{}</small></h1>", esc(title), esc(version));
    html.push_str(&paragraphs(doc["info"]["description"].as_str().unwrap_or("")));
    html.push_str("<p>The same document as OpenAPI 3: <a href=\"/openapi.json\">/openapi.json</a>.</p>");

    // Operations by tag, in path order.
    let mut by_tag: Vec<(String, Vec<Op<'_>>)> = Vec::new();
    if let Some(tags) = doc["tags"].as_array() {
        for tag in tags {
            by_tag.push((tag["name"].as_str().unwrap_or("").to_owned(), Vec::new()));
        }
    }
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (verb, op) in item.as_object().into_iter().flatten() {
            let tag = op["tags"][0].as_str().unwrap_or("");
            if let Some((_, ops)) = by_tag.iter_mut().find(|(t, _)| t == tag) {
                ops.push((verb.to_uppercase(), path.clone(), op));
            }
        }
    }
    html.push_str("<nav><ul>");
    for (tag, ops) in &by_tag {
        let _ = write!(html, "<li><a href=\"#{0}\">{0}</a><ul>", esc(tag));
        for (verb, path, op) in ops {
            let id = op["operationId"].as_str().unwrap_or("");
            let _ = write!(html, "<li><a href=\"#{}\"><code>{} {}</code></a></li>", esc(id), verb, esc(path));
        }
        html.push_str("</ul></li>");
    }
    html.push_str("<li><a href=\"#schemas\">Schemas</a></li></ul></nav><main>");
    for (tag, ops) in &by_tag {
        let description = doc["tags"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["name"] == tag.as_str()))
            .and_then(|t| t["description"].as_str())
            .unwrap_or("");
        let _ = write!(html, "<h2 id=\"{0}\">{0}</h2>{1}", esc(tag), paragraphs(description));
        for (verb, path, op) in ops {
            operation(&mut html, verb, path, op);
        }
    }
    html.push_str("<h2 id=\"schemas\">Schemas</h2>");
    for (name, schema) in doc["components"]["schemas"].as_object().into_iter().flatten() {
        schema_section(&mut html, name, schema);
    }
    html.push_str("</main></body></html>\n");
    html
}

fn operation(html: &mut String, verb: &str, path: &str, op: &Value) {
    let id = op["operationId"].as_str().unwrap_or("");
    let _ = write!(
        html,
        "<section class=\"op\" id=\"{}\"><h3><span class=\"verb {}\">{verb}</span> <code>{}</code></h3>",
        esc(id),
        verb.to_lowercase(),
        esc(path)
    );
    html.push_str(&paragraphs(op["description"].as_str().unwrap_or("")));
    if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
        html.push_str("<table><tr><th>parameter</th><th>in</th><th>type</th><th>description</th></tr>");
        for p in params {
            let required = if p["required"].as_bool() == Some(true) { " <em>required</em>" } else { "" };
            let _ = write!(
                html,
                "<tr><td><code>{}</code>{required}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(p["name"].as_str().unwrap_or("")),
                esc(p["in"].as_str().unwrap_or("")),
                type_of(&p["schema"]),
                esc(p["description"].as_str().unwrap_or(""))
            );
        }
        html.push_str("</table>");
    }
    if let Some((kind, body)) = op["requestBody"]["content"].as_object().and_then(|c| c.iter().next()) {
        let _ = write!(html, "<p>Body ({}): {}</p>", esc(kind), type_of(&body["schema"]));
        if body["schema"]["properties"].is_object() {
            properties(html, &body["schema"]);
        }
    }
    if let Some((kind, ok)) = op["responses"]["200"]["content"].as_object().and_then(|c| c.iter().next()) {
        let _ = write!(html, "<p>Response ({}): {}</p>", esc(kind), type_of(&ok["schema"]));
    }
    html.push_str("</section>");
}

fn schema_section(html: &mut String, name: &str, schema: &Value) {
    let _ = write!(html, "<section class=\"schema\" id=\"{0}\"><h3><code>{0}</code></h3>", esc(name));
    html.push_str(&paragraphs(schema["description"].as_str().unwrap_or("")));
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> =
            values.iter().map(|v| format!("<code>{}</code>", esc(v.as_str().unwrap_or("")))).collect();
        let _ = write!(html, "<p>One of {}.</p>", values.join(", "));
    }
    properties(html, schema);
    html.push_str("</section>");
}

fn properties(html: &mut String, schema: &Value) {
    let Some(props) = schema["properties"].as_object().filter(|p| !p.is_empty()) else {
        return;
    };
    html.push_str("<table><tr><th>field</th><th>type</th><th>description</th></tr>");
    for (name, p) in props {
        let _ = write!(
            html,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            esc(name),
            type_of(p),
            esc(p["description"].as_str().unwrap_or(""))
        );
    }
    html.push_str("</table>");
}

/// A schema's type in a few words, a link where it names another schema.
fn type_of(schema: &Value) -> String {
    if let Some(target) = schema["$ref"].as_str() {
        let name = target.rsplit('/').next().unwrap_or(target);
        let short = name.rsplit('.').next().unwrap_or(name);
        return format!("<a href=\"#{}\">{}</a>", esc(name), esc(short));
    }
    if let Some(inner) = schema["allOf"].get(0) {
        return type_of(inner);
    }
    match schema["type"].as_str() {
        Some("array") => format!("array of {}", type_of(&schema["items"])),
        Some("object") if schema["additionalProperties"].is_object() => {
            format!("map of string to {}", type_of(&schema["additionalProperties"]))
        }
        Some(t) => match schema["format"].as_str() {
            Some(f) => format!("{} ({})", esc(t), esc(f)),
            None => esc(t),
        },
        None => "any JSON".into(),
    }
}

/// Text as paragraphs, one per blank line.
fn paragraphs(text: &str) -> String {
    text.split("\n\n").filter(|p| !p.trim().is_empty()).map(|p| format!("<p>{}</p>", esc(p.trim()))).collect()
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const HEAD: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>batchmill REST API</title><style>\
body{font:15px/1.5 system-ui,sans-serif;margin:0;display:flex;color:#1b1f24}\
nav{width:19rem;flex:none;height:100vh;overflow:auto;position:sticky;top:0;background:#f5f6f8;padding:1rem;\
box-sizing:border-box;font-size:13px}nav ul{list-style:none;padding-left:.8rem}\
main{padding:1rem 2rem;max-width:62rem}h1 small{font-weight:normal;color:#667}\
section{border-top:1px solid #dde;padding:.4rem 0}table{border-collapse:collapse;margin:.4rem 0}\
td,th{border:1px solid #dde;padding:.2rem .5rem;text-align:left;vertical-align:top}\
.verb{font:bold 12px monospace;padding:.1rem .4rem;border-radius:3px;color:#fff;background:#555}\
.get{background:#2b7a3d}.post{background:#1f5fbf}.delete{background:#b3261e}.patch,.put{background:#8a5a00}\
code{font-size:13px}</style></head><body>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_it_writes() {
        assert_eq!(esc("<a href=\"x\">&</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;");
        assert_eq!(paragraphs("one\ntwo\n\nthree <b>"), "<p>one\ntwo</p><p>three &lt;b&gt;</p>");
    }
}
