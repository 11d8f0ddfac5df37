//! Dead letters made operable: list them, put them back (retry), or drop them, on a stopped
//! sidecar's store directly or on a running one through its admin listener
//! (`GET /dead-letters`, `POST /dead-letters/retry`, `POST /dead-letters/drop`).
//!
//! Owns the operator's redacted view of a dead letter ([`Letter`]: never an instance secret,
//! never instance-config XML, never a raw body), the selection rules ([`Selector`]), the
//! admin handlers, the small HTTP client the CLI uses against a running sidecar, and the
//! table rendering. It must not decide what a requeue means in storage (`store/dead.rs`)
//! and must not publish or replay anything itself.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use serde::{Deserialize, Serialize};

use crate::body::{full, ProxyBody};
use crate::change::{Change, Event};
use crate::store::{InboundDeadLetter, OutboundDeadLetter, Requeue, Store, StoreError};

/// Most dead letters listed at once.
pub const DEFAULT_LIMIT: usize = 10_000;
const REDACTED: &str = "<redacted>";

/// Which way a dead letter was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Captured here; the publisher gave up. Its id is its `origin_seq`.
    Outbound,
    /// From another site; replay gave up. Its id is a local counter.
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }

    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "outbound" => Some(Direction::Outbound),
            "inbound" => Some(Direction::Inbound),
            _ => None,
        }
    }
}

/// A dead letter as an operator sees it. Built only from redacted fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Letter {
    pub direction: Direction,
    /// `origin_seq` (outbound) or the local dead-letter id (inbound).
    pub id: u64,
    pub dead_at_ms: u64,
    /// Why it was dead-lettered, with the change's secret and XML cut out.
    pub reason: String,
    /// Whether the stored change decodes (the fields below are empty when not).
    pub decodes: bool,
    pub kind: Option<String>,
    pub message_id: Option<String>,
    pub instance: Option<String>,
    pub deployment: Option<String>,
}

impl Letter {
    fn new(
        direction: Direction,
        id: u64,
        dead_at_ms: u64,
        reason: &str,
        change: Option<Change>,
    ) -> Letter {
        let mut reason = reason.to_owned();
        if let Some(Event::Registration {
            instance_config,
            secret,
        }) = change.as_ref().map(|c| &c.event)
        {
            for hidden in [instance_config, secret] {
                if !hidden.is_empty() {
                    reason = reason.replace(hidden.as_str(), REDACTED);
                }
            }
        }
        Letter {
            direction,
            id,
            dead_at_ms,
            reason,
            decodes: change.is_some(),
            kind: change.as_ref().map(|c| c.event.kind().to_owned()),
            message_id: change.as_ref().map(Change::message_id),
            instance: change.as_ref().and_then(|c| c.instance.clone()),
            deployment: change.and_then(|c| c.deployment),
        }
    }

    fn outbound(l: &OutboundDeadLetter) -> Letter {
        Letter::new(
            Direction::Outbound,
            l.origin_seq,
            l.dead_at_ms,
            &l.reason,
            l.change(),
        )
    }

    fn inbound(l: &InboundDeadLetter) -> Letter {
        let change = serde_json::from_slice(&l.raw).ok();
        Letter::new(Direction::Inbound, l.id, l.dead_at_ms, &l.reason, change)
    }
}

/// Which dead letters a retry or drop acts on: one (`id`, with its direction) or all (of
/// one direction, or of both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selector {
    pub direction: Option<Direction>,
    pub id: Option<u64>,
    pub all: bool,
}

impl Selector {
    /// Exactly one of `--id` and `--all`; an id needs its direction (the id spaces overlap).
    pub fn validate(&self) -> Result<(), String> {
        match (self.id, self.all, self.direction) {
            (Some(_), true, _) => Err("give either an id or all, not both".into()),
            (None, false, _) => Err("give an id (with its direction) or all".into()),
            (Some(_), false, None) => {
                Err("an id needs a direction (outbound or inbound): the id spaces overlap".into())
            }
            _ => Ok(()),
        }
    }

    fn includes(&self, d: Direction) -> bool {
        self.direction.is_none_or(|x| x == d)
    }
}

/// What a retry or drop did to each selected dead letter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub letter: Letter,
    /// `requeued`, `reparked`, `dropped`, `refused` or `gone` (removed meanwhile).
    pub outcome: String,
    /// For `refused`: why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Report {
    /// True when every selected letter was acted on.
    pub fn all_done(&self) -> bool {
        self.items
            .iter()
            .all(|i| i.outcome != "refused" && i.outcome != "gone")
    }
}

/// Why an operation could not run.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("{0}")]
    Usage(String),
    #[error("no {direction} dead letter with id {id}")]
    NotFound { direction: &'static str, id: u64 },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("admin endpoint {addr}: {reason}")]
    Remote { addr: SocketAddr, reason: String },
}

/// Dead letters of `direction` (both when `None`), outbound first, oldest first.
pub fn list(
    store: &Store,
    direction: Option<Direction>,
    limit: usize,
) -> Result<Vec<Letter>, StoreError> {
    let mut out = Vec::new();
    if direction.is_none_or(|d| d == Direction::Outbound) {
        out.extend(
            store
                .dead_letters_outbound(limit)?
                .iter()
                .map(Letter::outbound),
        );
    }
    if direction.is_none_or(|d| d == Direction::Inbound) {
        out.extend(
            store
                .dead_letters_inbound(limit)?
                .iter()
                .map(Letter::inbound),
        );
    }
    out.truncate(limit);
    Ok(out)
}

/// The selected letters (or `NotFound` for a missing id).
fn select(store: &Store, sel: &Selector) -> Result<Vec<Letter>, DeadLetterError> {
    sel.validate().map_err(DeadLetterError::Usage)?;
    let mut letters = Vec::new();
    for d in [Direction::Outbound, Direction::Inbound] {
        if sel.includes(d) {
            letters.extend(list(store, Some(d), usize::MAX)?);
        }
    }
    if let (Some(id), Some(direction)) = (sel.id, sel.direction) {
        letters.retain(|l| l.id == id);
        if letters.is_empty() {
            return Err(DeadLetterError::NotFound {
                direction: direction.as_str(),
                id,
            });
        }
    }
    Ok(letters)
}

/// Put the selected letters back: outbound into the outbox (same `origin_seq`), inbound
/// re-parked for the parked-retry timer.
pub async fn retry(store: &Store, sel: &Selector) -> Result<Report, DeadLetterError> {
    let mut report = Report::default();
    for letter in select(store, sel)? {
        let (done, requeue) = match letter.direction {
            Direction::Outbound => ("requeued", store.requeue_outbound(letter.id).await?),
            Direction::Inbound => ("reparked", store.requeue_inbound(letter.id).await?),
        };
        let (outcome, detail) = match requeue {
            Requeue::Done => (done, String::new()),
            Requeue::Missing => ("gone", String::new()),
            Requeue::Refused(why) => ("refused", why),
        };
        report.items.push(Item {
            letter,
            outcome: outcome.into(),
            detail,
        });
    }
    Ok(report)
}

/// Remove the selected letters for good.
pub async fn drop(store: &Store, sel: &Selector) -> Result<Report, DeadLetterError> {
    let mut report = Report::default();
    for letter in select(store, sel)? {
        let removed = match letter.direction {
            Direction::Outbound => store.drop_dead_outbound(letter.id).await?,
            Direction::Inbound => store.drop_dead_inbound(letter.id).await?,
        };
        let outcome = if removed { "dropped" } else { "gone" };
        report.items.push(Item {
            letter,
            outcome: outcome.into(),
            detail: String::new(),
        });
    }
    Ok(report)
}

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

fn parse_query(query: &str) -> Result<(Selector, usize), String> {
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
fn to_query(sel: &Selector, limit: Option<usize>) -> String {
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

/// Client side: the same operations on a running sidecar's admin listener.
pub mod remote {
    use super::*;

    /// `GET /dead-letters`.
    pub async fn list(
        admin: SocketAddr,
        direction: Option<Direction>,
        limit: usize,
    ) -> Result<Vec<Letter>, DeadLetterError> {
        let sel = Selector {
            direction,
            id: None,
            all: false,
        };
        call(
            admin,
            Method::GET,
            "/dead-letters",
            &to_query(&sel, Some(limit)),
        )
        .await
    }

    /// `POST /dead-letters/retry`.
    pub async fn retry(admin: SocketAddr, sel: &Selector) -> Result<Report, DeadLetterError> {
        call(
            admin,
            Method::POST,
            "/dead-letters/retry",
            &to_query(sel, None),
        )
        .await
    }

    /// `POST /dead-letters/drop`.
    pub async fn drop(admin: SocketAddr, sel: &Selector) -> Result<Report, DeadLetterError> {
        call(
            admin,
            Method::POST,
            "/dead-letters/drop",
            &to_query(sel, None),
        )
        .await
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        admin: SocketAddr,
        method: Method,
        path: &str,
        query: &str,
    ) -> Result<T, DeadLetterError> {
        let fail = |reason: String| DeadLetterError::Remote {
            addr: admin,
            reason,
        };
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(admin)
                .await
                .map_err(|e| fail(format!("cannot connect: {e}")))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| fail(e.to_string()))?;
            tokio::spawn(conn);
            let uri = if query.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{query}")
            };
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .header(http::header::HOST, admin.to_string())
                .body(Empty::<Bytes>::new())
                .map_err(|e| fail(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| fail(e.to_string()))?
                .to_bytes();
            Ok::<_, DeadLetterError>((status, body))
        };
        let (status, body) = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .map_err(|_| fail("no answer within 30s".into()))??;
        let text = String::from_utf8_lossy(&body).trim().to_owned();
        match status {
            StatusCode::OK => {
                serde_json::from_slice(&body).map_err(|e| fail(format!("unexpected answer: {e}")))
            }
            StatusCode::BAD_REQUEST => Err(DeadLetterError::Usage(text)),
            StatusCode::NOT_FOUND if text.starts_with("no ") => Err(fail(text)),
            other => Err(fail(format!("{other}: {text}"))),
        }
    }
}

/// A table, one dead letter a line, times in UTC.
pub fn render_table(letters: &[Letter], outcomes: Option<&[Item]>) -> String {
    let mut rows = vec![vec![
        "DIRECTION".to_owned(),
        "ID".into(),
        "DEAD AT (UTC)".into(),
        "KIND".into(),
        "MESSAGE-ID".into(),
        "INSTANCE".into(),
        "DEPLOYMENT".into(),
        "REASON".into(),
    ]];
    if outcomes.is_some() {
        rows[0].insert(0, "OUTCOME".into());
    }
    for (i, l) in letters.iter().enumerate() {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let mut row = vec![
            l.direction.as_str().to_owned(),
            l.id.to_string(),
            utc(l.dead_at_ms),
            l.kind.clone().unwrap_or_else(|| "(undecodable)".into()),
            dash(&l.message_id),
            dash(&l.instance),
            dash(&l.deployment),
            l.reason.replace('\n', " "),
        ];
        if let Some(item) = outcomes.and_then(|o| o.get(i)) {
            let mut outcome = item.outcome.clone();
            if !item.detail.is_empty() {
                outcome = format!("{outcome} ({})", item.detail);
            }
            row.insert(0, outcome);
        }
        rows.push(row);
    }
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SSZ` from milliseconds since the epoch (civil-from-days, no time zones).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_709_210_096_000), "2024-02-29T12:34:56Z");
    }

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
