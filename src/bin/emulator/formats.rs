//! Wire formats of the Config Server: the instance-config XML Conductor posts (validated
//! against the server's RelaxNG schema, `configserver/schema/instance-config.rng`, by hand)
//! and the bar format (`|name&BASE64|…|`) of `audrey_data` and of configuration answers.
//!
//! Pure functions over strings; no storage, no HTTP.
use base64::Engine as _;
use roxmltree::{Document, Node};

/// Where a service parameter's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Source {
    Static(String),
    /// `<reference assembly='UUID' provided-parameter='name'/>`
    Provided {
        assembly: String,
        parameter: String,
    },
    /// `<reference assembly='UUID' service-parameter='svc'/>`: that service's return code.
    Service {
        assembly: String,
        service: String,
    },
}

/// The parts of an instance-config the server uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    /// `instance-config/@name`, the assembly name.
    pub name: String,
    pub secret: Option<String>,
    /// `deployable/@id`, the deployment uuid.
    pub deployable_id: String,
    /// `provided-parameter/@name`, document order.
    pub provided: Vec<String>,
    /// `service/@name`, document order.
    pub services: Vec<String>,
    /// Parameters of *every* service. The server collects them with absolute XPath
    /// (`svc / '//parameter/value/..'`), so each service gets the whole document's
    /// parameters: statics first, then provided references, then service references, in
    /// document order, a repeated name keeping its first position and its last source.
    pub params: Vec<(String, Source)>,
    /// Entries of the configuration tarball: (service, file name or `None` for a bare
    /// directory, contents).
    pub files: Vec<(String, Option<String>, String)>,
}

/// The document is not a valid instance-config (the server answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid instance-config: {0}")]
pub struct Invalid(pub String);

fn bad<T>(why: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(why.into()))
}

/// Parses and validates an instance-config document.
pub fn parse_instance_config(xml: &str) -> Result<InstanceConfig, Invalid> {
    let doc = Document::parse(xml).map_err(|e| Invalid(e.to_string()))?;
    let root = doc.root_element();
    validate_root(root)?;
    let mut cfg = InstanceConfig {
        name: root.attribute("name").unwrap_or("").to_string(),
        secret: root.attribute("secret").map(str::to_string),
        deployable_id: String::new(),
        provided: Vec::new(),
        services: Vec::new(),
        params: Vec::new(),
        files: Vec::new(),
    };
    let (mut statics, mut provided_refs, mut service_refs) = (Vec::new(), Vec::new(), Vec::new());
    for node in root.descendants().filter(Node::is_element) {
        match node.tag_name().name() {
            "deployable" if cfg.deployable_id.is_empty() => {
                cfg.deployable_id = node.attribute("id").unwrap_or("").to_string();
            }
            "provided-parameter" => cfg.provided.push(attr(node, "name")),
            "service" => cfg.services.push(attr(node, "name")),
            "parameter" => {
                let name = attr(node, "name");
                if let Some(value) = child(node, "value") {
                    statics.push((name.clone(), Source::Static(text(value))));
                }
                if let Some(r) = child(node, "reference") {
                    let assembly = attr(r, "assembly");
                    if let Some(p) = r.attribute("provided-parameter") {
                        let parameter = p.to_string();
                        provided_refs.push((
                            name.clone(),
                            Source::Provided {
                                assembly: assembly.clone(),
                                parameter,
                            },
                        ));
                    }
                    if let Some(s) = r.attribute("service-parameter") {
                        service_refs.push((
                            name,
                            Source::Service {
                                assembly,
                                service: s.to_string(),
                            },
                        ));
                    }
                }
            }
            "executable" => {
                let svc = node
                    .parent_element()
                    .map(|p| attr(p, "name"))
                    .unwrap_or_default();
                cfg.files.push((svc, None, String::new()));
            }
            "file" => {
                let svc = node
                    .parent_element()
                    .and_then(|p| p.parent_element())
                    .map(|p| attr(p, "name"))
                    .unwrap_or_default();
                // Files given by URL would be downloaded; the emulator has no network, like
                // a failed download on the real server it leaves only the directory.
                let entry = match child(node, "contents") {
                    Some(c) => (svc, c.attribute("filename").map(str::to_string), text(c)),
                    None => (svc, None, String::new()),
                };
                cfg.files.push(entry);
            }
            _ => {}
        }
    }
    for (name, source) in statics.into_iter().chain(provided_refs).chain(service_refs) {
        match cfg.params.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = source,
            None => cfg.params.push((name, source)),
        }
    }
    Ok(cfg)
}

fn attr(node: Node<'_, '_>, name: &str) -> String {
    node.attribute(name).unwrap_or("").to_string()
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

/// Text content (text and CDATA) of an element.
fn text(node: Node<'_, '_>) -> String {
    node.descendants()
        .filter(Node::is_text)
        .filter_map(|n| n.text())
        .collect()
}

// ---- validation: instance-config.rng, by hand ----

fn validate_root(root: Node<'_, '_>) -> Result<(), Invalid> {
    named(root, "instance-config")?;
    attrs(root, &["id", "name", "secret"], &["type"])?;
    let kids = elements(root)?;
    let mut it = kids.iter().peekable();
    let deployable = it.next().ok_or(Invalid("missing deployable".into()))?;
    named(*deployable, "deployable")?;
    attrs(*deployable, &["name", "id"], &[])?;
    empty(*deployable)?;
    if let Some(t) = it.next_if(|n| n.tag_name().name() == "template") {
        attrs(*t, &["name"], &[])?;
        empty(*t)?;
    }
    if let Some(pp) = it.next_if(|n| n.tag_name().name() == "provided-parameters") {
        attrs(*pp, &[], &[])?;
        for p in elements(*pp)? {
            named(p, "provided-parameter")?;
            attrs(p, &["name"], &[])?;
            empty(p)?;
        }
    }
    if let Some(services) = it.next_if(|n| n.tag_name().name() == "services") {
        attrs(*services, &[], &[])?;
        for s in elements(*services)? {
            validate_service(s)?;
        }
    }
    match it.next() {
        Some(extra) => bad(format!("unexpected element {}", extra.tag_name().name())),
        None => Ok(()),
    }
}

fn validate_service(s: Node<'_, '_>) -> Result<(), Invalid> {
    named(s, "service")?;
    attrs(s, &["name"], &[])?;
    let kids = elements(s)?;
    let mut it = kids.iter().peekable();
    let exe = it.next().ok_or(Invalid("missing executable".into()))?;
    named(*exe, "executable")?;
    url_or_contents(*exe, &[])?;
    if let Some(files) = it.next_if(|n| n.tag_name().name() == "files") {
        attrs(*files, &[], &[])?;
        let list = elements(*files)?;
        if list.is_empty() {
            return bad("files needs a file");
        }
        for f in list {
            named(f, "file")?;
            url_or_contents(f, &["filename"])?;
        }
    }
    if let Some(params) = it.next_if(|n| n.tag_name().name() == "parameters") {
        attrs(*params, &[], &[])?;
        let list = elements(*params)?;
        if list.is_empty() {
            return bad("parameters needs a parameter");
        }
        for p in list {
            validate_parameter(p)?;
        }
    }
    match it.next() {
        Some(extra) => bad(format!("unexpected element {}", extra.tag_name().name())),
        None => Ok(()),
    }
}

fn validate_parameter(p: Node<'_, '_>) -> Result<(), Invalid> {
    named(p, "parameter")?;
    attrs(p, &["name"], &[])?;
    let kids = elements(p)?;
    let [only] = kids.as_slice() else {
        return bad("parameter needs one value or reference");
    };
    match only.tag_name().name() {
        "value" => {
            attrs(*only, &[], &[])?;
            text_only(*only)
        }
        "reference" => {
            let provided = only.attribute("provided-parameter").is_some();
            let service = only.attribute("service-parameter").is_some();
            match (provided, service) {
                (true, false) => attrs(*only, &["assembly", "provided-parameter"], &[])?,
                (false, true) => attrs(*only, &["assembly", "service-parameter"], &[])?,
                _ => return bad("reference needs one of provided-parameter, service-parameter"),
            }
            empty(*only)
        }
        other => bad(format!("unexpected element {other}")),
    }
}

/// `<choice><attribute name="url"/><element name="contents">…</element></choice>`.
fn url_or_contents(node: Node<'_, '_>, contents_attrs: &[&str]) -> Result<(), Invalid> {
    if node.attribute("url").is_some() {
        attrs(node, &["url"], &[])?;
        return empty(node);
    }
    attrs(node, &[], &[])?;
    let kids = elements(node)?;
    let [contents] = kids.as_slice() else {
        return bad("needs url or one contents");
    };
    named(*contents, "contents")?;
    attrs(*contents, contents_attrs, &[])?;
    text_only(*contents)
}

fn named(node: Node<'_, '_>, name: &str) -> Result<(), Invalid> {
    let tag = node.tag_name();
    if tag.name() == name && tag.namespace().is_none() {
        Ok(())
    } else {
        bad(format!("expected {name}, found {}", tag.name()))
    }
}

fn attrs(node: Node<'_, '_>, required: &[&str], optional: &[&str]) -> Result<(), Invalid> {
    for a in node.attributes() {
        if a.namespace().is_some()
            || !(required.contains(&a.name()) || optional.contains(&a.name()))
        {
            return bad(format!("unexpected attribute {}", a.name()));
        }
    }
    match required.iter().find(|r| node.attribute(**r).is_none()) {
        Some(missing) => bad(format!("missing attribute {missing}")),
        None => Ok(()),
    }
}

/// Element children; text other than whitespace is not allowed between them.
fn elements<'a, 'i>(node: Node<'a, 'i>) -> Result<Vec<Node<'a, 'i>>, Invalid> {
    let mut out = Vec::new();
    for c in node.children() {
        if c.is_element() {
            out.push(c);
        } else if c.is_text() && !c.text().unwrap_or("").trim().is_empty() {
            return bad(format!("text not allowed in {}", node.tag_name().name()));
        }
    }
    Ok(out)
}

fn empty(node: Node<'_, '_>) -> Result<(), Invalid> {
    match elements(node)?.first() {
        Some(c) => bad(format!("unexpected element {}", c.tag_name().name())),
        None => Ok(()),
    }
}

fn text_only(node: Node<'_, '_>) -> Result<(), Invalid> {
    match node.children().find(Node::is_element) {
        Some(c) => bad(format!("unexpected element {}", c.tag_name().name())),
        None => Ok(()),
    }
}

// ---- bar format ----

/// Ruby's `parse_audrey_data`: `None` where Ruby yields `nil` (nothing parsed: `[].inject`);
/// `|&|` is an explicit empty report. Pieces split on `|`, each on `&` (Ruby drops trailing
/// empty fields, so `name&` has no value and is skipped), values lenient-Base64 decoded, a
/// repeated name keeping its first position and last value.
pub fn parse_audrey_data(data: &str) -> Option<Vec<(String, String)>> {
    if data == "|&|" {
        return Some(Vec::new());
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for piece in data.split('|').filter(|p| !p.is_empty()) {
        let mut fields: Vec<&str> = piece.split('&').collect();
        while fields.last() == Some(&"") {
            fields.pop();
        }
        let (Some(k), Some(v)) = (fields.first(), fields.get(1)) else {
            continue;
        };
        let value =
            String::from_utf8_lossy(&audrey_federation::oauth::ruby_decode64(v)).into_owned();
        match out.iter_mut().find(|(n, _)| n == k) {
            Some(slot) => slot.1 = value,
            None => out.push((k.to_string(), value)),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A parameter name and its value, `None` while unresolved.
pub type Values = Vec<(String, Option<String>)>;

/// `|service|NAME[|parameters|p&B64|q&B64]|service|…|`; `None` values are sent empty.
pub fn render_configs(services: &[(String, Values)]) -> String {
    let parts: Vec<String> = services
        .iter()
        .map(|(name, params)| {
            let mut s = format!("service|{name}");
            if !params.is_empty() {
                let ps: Vec<String> = params
                    .iter()
                    .map(|(p, v)| format!("{p}&{}", b64(v.as_deref().unwrap_or(""))))
                    .collect();
                s.push_str("|parameters|");
                s.push_str(&ps.join("|"));
            }
            s
        })
        .collect();
    format!("|{}|", parts.join("|"))
}

/// `|a&b|`, and with `services` (API v2 `GET /params`) `|a&b|svc1&svc2|`.
pub fn render_provides(missing: &[String], services: Option<&[String]>) -> String {
    let mut s = format!("|{}|", missing.join("&"));
    if let Some(svcs) = services {
        s.push_str(&svcs.join("&"));
        s.push('|');
    }
    s
}

pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

#[cfg(test)]
#[path = "formats_tests.rs"]
mod tests;
