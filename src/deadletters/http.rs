//! The admin routes under `/dead-letters` and their query-string form, shared with the
//! client in `remote.rs`. Owns status codes and JSON answers; it must not touch the store
//! except through the operations in `mod.rs`.

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde::Serialize;

use super::{drop, list, retry, DeadLetterError, Direction, Selector, DEFAULT_LIMIT};
use crate::body::{full, ProxyBody};
use crate::store::Store;

/// The admin routes under `/dead-letters`. Query parameters: `direction`, `id`, `all=true`,
/// `limit`. Answers JSON, or a one-line text reason with 400/404/405/503.
pub async fn handle<B>(store: &Store, req: Request<B>) -> Response<ProxyBody> {
    let query = req.uri().query().unwrap_or("");
    let (sel, limit) = match parse_query(query) {
        Ok(v) => v,
        Err(why) => return text(StatusCode::BAD_REQUEST, why),
    };
    let result = match (req.method(), req.uri().path()) {
        (&Method::GET, "/dead-letters") => list(store, sel.direction, limit)
            .map(|l| json(&l))
            .map_err(DeadLetterError::from),
        (&Method::POST, "/dead-letters/retry") => retry(store, &sel).await.map(|r| json(&r)),
        (&Method::POST, "/dead-letters/drop") => drop(store, &sel).await.map(|r| json(&r)),
        (_, "/dead-letters" | "/dead-letters/retry" | "/dead-letters/drop") => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET /dead-letters; POST /dead-letters/retry or /dead-letters/drop".into(),
            )
        }
        _ => return text(StatusCode::NOT_FOUND, "not found: try /dead-letters".into()),
    };
    match result {
        Ok(resp) => resp,
        Err(e @ DeadLetterError::Usage(_)) => text(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ DeadLetterError::NotFound { .. }) => text(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

pub(super) fn parse_query(query: &str) -> Result<(Selector, usize), String> {
    let mut sel = Selector {
        direction: None,
        id: None,
        all: false,
    };
    let mut limit = DEFAULT_LIMIT;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "direction" => {
                sel.direction = Some(
                    Direction::parse(&v)
                        .ok_or(format!("direction must be outbound or inbound, not {v:?}"))?,
                )
            }
            "id" => {
                sel.id = Some(
                    v.parse()
                        .map_err(|_| format!("id must be a number, not {v:?}"))?,
                )
            }
            "all" => sel.all = v == "true" || v == "1",
            "limit" => {
                limit = v
                    .parse()
                    .map_err(|_| format!("limit must be a number, not {v:?}"))?
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    Ok((sel, limit))
}

/// The query string for `sel` and `limit` (the CLI's side of [`parse_query`]).
pub(super) fn to_query(sel: &Selector, limit: Option<usize>) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    if let Some(d) = sel.direction {
        q.append_pair("direction", d.as_str());
    }
    if let Some(id) = sel.id {
        q.append_pair("id", &id.to_string());
    }
    if sel.all {
        q.append_pair("all", "true");
    }
    if let Some(l) = limit {
        q.append_pair("limit", &l.to_string());
    }
    q.finish()
}

fn json<T: Serialize>(value: &T) -> Response<ProxyBody> {
    match serde_json::to_vec_pretty(value) {
        Ok(bytes) => {
            let mut resp = Response::new(full(bytes));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body + "\n"));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_rules() {
        let s = |direction, id, all| Selector { direction, id, all };
        assert!(s(None, None, true).validate().is_ok());
        assert!(s(Some(Direction::Inbound), Some(3), false)
            .validate()
            .is_ok());
        assert!(s(None, Some(3), false).validate().is_err());
        assert!(s(None, None, false).validate().is_err());
        assert!(s(Some(Direction::Inbound), Some(3), true)
            .validate()
            .is_err());
        let q = to_query(&s(Some(Direction::Outbound), Some(7), false), None);
        assert_eq!(
            parse_query(&q).unwrap().0,
            s(Some(Direction::Outbound), Some(7), false)
        );
    }
}
