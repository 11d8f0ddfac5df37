//! The Sinatra application of `configserver.rb`, route for route: the before filters
//! (OAuth on `/configs/*`, `/params/*`, `/files/*`, `/auth*`, then the API version check on
//! `/*/:version/*`), the routes in their order, and the exact statuses, bodies and content
//! types, quirks included.
//!
//! Where the reference is silent the emulator answers as Sinatra would: a path no route
//! matches gets 404 `<h1>Not Found</h1>` with `X-Cascade: pass`; an exception gets 500
//! `<h1>Internal Server Error</h1>` (production mode); HEAD is served as GET without body.
//! Rack::Protection's middleware (path normalisation, IP-spoofing and origin checks,
//! `X-Frame-Options`…) is not emulated. It holds no state of its own: everything is in `Store`.
use std::time::{SystemTime, UNIX_EPOCH};

use audrey_federation::oauth::Verdict;

use crate::auth;
use crate::formats::{parse_audrey_data, parse_instance_config, render_configs, render_provides};
use crate::model::Fault;
use crate::reports;
use crate::store::Store;
use crate::web::{
    decode_segment, preferred_type, ruby_to_i, with_charset, FormValue, Params, Req, Resp, HTML,
    TEXT,
};

pub const APP_VERSION: &str = "0.5.2";

pub struct App {
    pub store: Store,
    /// `--request-log`: where accepted changes are appended (see [`log_change`]).
    pub request_log: Option<std::fs::File>,
}

/// Serves one request; HEAD answers carry the GET headers (Content-Length included) and
/// no body.
pub fn handle(app: &App, req: &Req) -> Resp {
    let mut resp = dispatch(app, req);
    if let Some(file) = &app.request_log {
        log_change(file, req, resp.status);
    }
    let len = resp.body.len();
    resp.headers.push(("content-length", len.to_string()));
    if req.method == "HEAD" {
        resp.body.clear();
    }
    resp
}

/// One JSON line per accepted change (`--request-log`), written under the application lock so
/// the file's order is the order the changes were applied: `{"method", "path", "status",
/// "values"}` (`values`: the decoded `audrey_data` pairs of a PUT /params, else null). A
/// failed write is logged and otherwise ignored: the log is a test aid, never the answer.
fn log_change(mut file: &std::fs::File, req: &Req, status: u16) {
    use std::io::Write as _;
    let change = matches!(
        (req.method.as_str(), req.path.split('/').nth(1)),
        ("POST", Some("configs")) | ("PUT", Some("params")) | ("DELETE", Some("deployment"))
    );
    if !change || !(200..300).contains(&status) {
        return;
    }
    let values = match Params::parse(req).get("audrey_data") {
        Some(FormValue::Text(data)) if req.method == "PUT" => parse_audrey_data(&data),
        _ => None,
    };
    let line = serde_json::json!({
        "method": req.method,
        "path": req.path,
        "status": status,
        "values": values,
    });
    if let Err(e) = writeln!(file, "{line}") {
        tracing::warn!(error = %e, "cannot write the request log");
    }
}

fn dispatch(app: &App, req: &Req) -> Resp {
    let params = Params::parse(req);
    let path = req.path.as_str();
    let protected = ["/configs/", "/params/", "/files/", "/auth"]
        .iter()
        .any(|p| path.starts_with(p));
    if protected {
        match auth::authenticate(req, &params, &app.store) {
            Verdict::Ok => {}
            Verdict::BadSignature => return Resp::html(401, "Not Authorized\n"),
            Verdict::NoOAuth => return Resp::server_error(HTML),
        }
    }
    if let Some(version) = filter_version(path) {
        if !(1..=2).contains(&ruby_to_i(&decode_segment(version))) {
            return Resp::html(404, "");
        }
    }
    let method = if req.method == "HEAD" {
        "GET"
    } else {
        req.method.as_str()
    };
    let segs: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let cx = Cx {
        app,
        req,
        params: &params,
    };
    let result = match (method, segs.as_slice()) {
        ("GET", ["version"]) => Ok(version(&cx)),
        ("GET", ["auth"]) => Ok(Resp::html(200, "Authentication test successful")),
        ("GET", ["ip", v, uuid]) if ok(&[v, uuid]) => get_ip(&cx, uuid),
        ("GET", ["configs", v, uuid]) if ok(&[v, uuid]) => get_configs(&cx, uuid, None),
        ("GET", ["configs", v, uuid, ""]) if ok(&[v, uuid]) => get_configs(&cx, uuid, None),
        ("GET", ["configs", v, uuid, svc]) if ok(&[v, uuid, svc]) => {
            get_configs(&cx, uuid, Some(svc))
        }
        ("POST", ["configs", v, uuid]) if ok(&[v, uuid]) => post_configs(&cx, uuid),
        ("DELETE", ["deployment", v, dep]) if ok(&[v, dep]) => delete_deployment(&cx, dep),
        ("GET", ["files", v, uuid]) if ok(&[v, uuid]) => get_files(&cx, uuid),
        ("PUT", ["files", v, uuid]) if ok(&[v, uuid]) => put_files(&cx, uuid),
        ("GET", ["params", v, uuid]) if ok(&[v, uuid]) => get_params(&cx, v, uuid),
        ("PUT", ["params", v, uuid]) if ok(&[v, uuid]) => put_params(&cx, uuid),
        ("GET", ["reports", v, "deployment", dep]) if ok(&[v, dep]) => report_deployment(&cx, dep),
        ("GET", ["reports", v, "instance", uuid]) if ok(&[v, uuid]) => report_instance(&cx, uuid),
        _ => Ok(Resp::route_missing()),
    };
    result.unwrap_or_else(|(fault, content_type)| {
        tracing::warn!(%fault, path, "request raised");
        Resp::server_error(content_type)
    })
}

/// A route answer, or what would be raised with the content type chosen so far.
type Answer = Result<Resp, (Fault, &'static str)>;

struct Cx<'a> {
    app: &'a App,
    req: &'a Req,
    params: &'a Params,
}

impl Cx<'_> {
    fn store(&self) -> &Store {
        &self.app.store
    }

    fn accept(&self, types: &[&'static str]) -> Option<&'static str> {
        preferred_type(self.req.env("accept").as_deref(), types)
    }
}

/// A named route parameter: one non-empty segment (`[^/?#]+`).
fn ok(segs: &[&&str]) -> bool {
    segs.iter().all(|s| !s.is_empty())
}

fn raise(content_type: &'static str) -> impl Fn(Fault) -> (Fault, &'static str) {
    move |f| (f, content_type)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `:version` of Sinatra's `before '/*/:version/*'` (`^/(.*?)/([^/?#]+)/(.*?)$`): the
/// first non-empty segment that follows a `/` and is itself followed by a `/`.
fn filter_version(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    for (i, _) in rest.match_indices('/') {
        let after = &rest[i + 1..];
        if let Some(end) = after.find('/') {
            if end > 0 {
                return Some(&after[..end]);
            }
        }
    }
    None
}

fn version(cx: &Cx<'_>) -> Resp {
    let api = match cx.params.text("api_compat") {
        None => 2,
        Some(list) => {
            let mut versions: Vec<i64> = list.split('-').map(ruby_to_i).collect();
            versions.sort_unstable_by(|a, b| b.cmp(a));
            versions
                .into_iter()
                .find(|v| (1..=2).contains(v))
                .unwrap_or(0)
        }
    };
    match cx.accept(&["text/plain", "application/xml", "text/xml"]) {
        Some(t) => Resp::new(
            200,
            &with_charset(t),
            format!(
                "<config-server>\n  <application-version>{APP_VERSION}</application-version>\n  \
                 <api-version>{api}</api-version>\n</config-server>"
            ),
        ),
        None => Resp::html(
            200,
            format!(
                "<html><body>\n<li>Application Version: {APP_VERSION}</li>\n\
                 <li>API Version: {api}<li/>\n</body></html>"
            ),
        ),
    }
}

fn get_ip(cx: &Cx<'_>, uuid: &str) -> Answer {
    let ct = match cx.accept(&["text/plain", "text/html"]) {
        Some("text/plain") => TEXT,
        Some(_) => HTML,
        None => return Ok(Resp::route_missing()),
    };
    let uuid = decode_segment(uuid);
    match cx.store().load(&uuid).map_err(raise(ct))? {
        None => Ok(Resp::new(404, ct, "")),
        Some(_) => Ok(Resp::new(200, ct, cx.store().ip(&uuid).unwrap_or_default())),
    }
}

fn get_configs(cx: &Cx<'_>, uuid: &str, service: Option<&str>) -> Answer {
    let uuid = decode_segment(uuid);
    let service = service.map(decode_segment);
    let store = cx.store();
    let Some(mut inst) = store.load(&uuid).map_err(raise(HTML))? else {
        return Ok(Resp::html(404, ""));
    };
    inst.contacted(now());
    store.save(&inst).map_err(raise(HTML))?;
    let names: Vec<String> = match &service {
        None => inst.config.services.clone(),
        Some(s) if inst.config.services.contains(s) => vec![s.clone()],
        Some(s) => {
            return Err((
                Fault::Raised(format!("undefined method `params' for nil ({s})")),
                HTML,
            ))
        }
    };
    let mut answer = Vec::with_capacity(names.len());
    for name in names {
        let values = inst.resolve(store, &name).map_err(raise(HTML))?;
        answer.push((name, values));
    }
    let unresolved = answer
        .iter()
        .any(|(_, vs)| vs.iter().any(|(_, v)| v.is_none()));
    if let (Some(s), false) = (&service, unresolved) {
        if let Some(svc) = inst.state.services.get_mut(s) {
            svc.config_started = Some(now());
        }
        // Stores the resolved values too: from now on they are frozen for this service.
        store.save(&inst).map_err(raise(HTML))?;
    }
    Ok(Resp::html(
        if unresolved { 202 } else { 200 },
        render_configs(&answer),
    ))
}

fn post_configs(cx: &Cx<'_>, uuid: &str) -> Answer {
    let Some(FormValue::Text(data)) = cx.params.get("data") else {
        return Err((Fault::Raised("no instance-config in `data`".into()), HTML));
    };
    let Ok(config) = parse_instance_config(&data) else {
        return Ok(Resp::html(400, "Could not parse the given XML document.\n"));
    };
    cx.store()
        .register(&decode_segment(uuid), &data, &config)
        .map_err(raise(HTML))?;
    Ok(Resp::html(200, ""))
}

fn delete_deployment(cx: &Cx<'_>, dep: &str) -> Answer {
    let dep = decode_segment(dep);
    if !cx.store().deployment_exists(&dep) {
        return Ok(Resp::html(404, ""));
    }
    Ok(Resp::html(
        200,
        cx.store().delete_deployment(&dep).map_err(raise(HTML))?,
    ))
}

fn get_files(cx: &Cx<'_>, uuid: &str) -> Answer {
    let uuid = decode_segment(uuid);
    let store = cx.store();
    let Some(mut inst) = store.load(&uuid).map_err(raise(HTML))? else {
        return Ok(Resp::html(404, ""));
    };
    inst.contacted(now());
    store.save(&inst).map_err(raise(HTML))?;
    let Some((bytes, modified)) = store.tarball(&uuid) else {
        return Ok(Resp::html(404, ""));
    };
    let mut resp = Resp::new(200, "application/x-tar", bytes);
    let file = uuid.rsplit('/').next().unwrap_or(&uuid);
    resp.headers.push((
        "content-disposition",
        format!("attachment; filename=\"{file}.tgz\""),
    ));
    resp.headers
        .push(("last-modified", reports::http_date(modified)));
    Ok(resp)
}

fn put_files(cx: &Cx<'_>, uuid: &str) -> Answer {
    let uuid = decode_segment(uuid);
    if !cx.store().instance_exists(&uuid) {
        return Ok(Resp::html(404, ""));
    }
    match cx.params.get("file") {
        None => {}
        Some(FormValue::File { bytes, .. }) => cx
            .store()
            .save_tarball(&uuid, &bytes)
            .map_err(|e| (e.into(), HTML))?,
        Some(FormValue::Text(_)) => {
            return Err((Fault::Raised("`file` is not an upload".into()), HTML))
        }
    }
    Ok(Resp::html(200, ""))
}

fn get_params(cx: &Cx<'_>, v: &str, uuid: &str) -> Answer {
    if cx.accept(&["text/plain"]).is_none() {
        return Ok(Resp::route_missing());
    }
    let uuid = decode_segment(uuid);
    let store = cx.store();
    let Some(mut inst) = store.load(&uuid).map_err(raise(TEXT))? else {
        return Ok(Resp::new(404, TEXT, ""));
    };
    inst.contacted(now());
    store.save(&inst).map_err(raise(TEXT))?;
    let missing = inst.missing_provided();
    // The server compares the raw version string: only "1" gets the v1 answer.
    let body = if decode_segment(v) == "1" {
        render_provides(&missing, None)
    } else {
        render_provides(&missing, Some(&inst.config.services))
    };
    Ok(Resp::new(200, TEXT, body))
}

/// `PUT /params`: the address and contact time are stored before `audrey_data` is even
/// looked at, so they survive the 500 answers below.
fn put_params(cx: &Cx<'_>, uuid: &str) -> Answer {
    let uuid = decode_segment(uuid);
    let store = cx.store();
    let Some(mut inst) = store.load(&uuid).map_err(raise(HTML))? else {
        return Ok(Resp::html(404, ""));
    };
    store
        .set_ip(&uuid, &auth::client_ip(cx.req))
        .map_err(|e| (e.into(), HTML))?;
    inst.contacted(now());
    store.save(&inst).map_err(raise(HTML))?;
    let Some(FormValue::Text(data)) = cx.params.get("audrey_data") else {
        return Err((
            Fault::Raised("undefined method `start_with?' for nil".into()),
            HTML,
        ));
    };
    let parsed = parse_audrey_data(&data);
    if data.starts_with("||") {
        let Some(codes) = parsed else {
            return Err((
                Fault::Raised("undefined method `each' for nil".into()),
                HTML,
            ));
        };
        for (name, code) in codes {
            if !inst.config.services.contains(&name) {
                return Err((
                    Fault::Raised(format!("undefined method `return_code=' for nil ({name})")),
                    HTML,
                ));
            }
            let svc = inst.state.services.entry(name).or_default();
            svc.return_code = Some(code);
            svc.config_ended = Some(now());
            store.save(&inst).map_err(raise(HTML))?;
        }
    } else if let Some(values) = parsed {
        inst.set_provided(&values).map_err(raise(HTML))?;
        store.save(&inst).map_err(raise(HTML))?;
    }
    let body = render_provides(&inst.missing_provided(), None);
    Ok(Resp::html(if body == "||" { 200 } else { 202 }, body))
}

fn report_deployment(cx: &Cx<'_>, dep: &str) -> Answer {
    let dep = decode_segment(dep);
    if !cx.store().deployment_exists(&dep) {
        return Ok(Resp::html(404, ""));
    }
    Ok(Resp::html(
        200,
        reports::deployment(cx.store(), &dep).map_err(raise(HTML))?,
    ))
}

fn report_instance(cx: &Cx<'_>, uuid: &str) -> Answer {
    let Some(inst) = cx
        .store()
        .load(&decode_segment(uuid))
        .map_err(raise(HTML))?
    else {
        return Ok(Resp::html(404, ""));
    };
    Ok(Resp::html(
        200,
        reports::instance(cx.store(), inst).map_err(raise(HTML))?,
    ))
}
