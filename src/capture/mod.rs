//! Change capture, the pure part: from a request the proxy forwarded to a [`Capture`].
//!
//! Owns route classification ([`route`]), form-field lookup ([`form`]), the `audrey_data` bar
//! format ([`audrey_data`]), the instance-config XML ([`instance_config`]) and
//! [`capture_from`], which turns a capturing route and its request body into a [`Capture`] or
//! says, as a [`NotCaptured`], why it could not. No I/O here: the proxy reads the body, decides
//! from the upstream's status whether the change happened, and hands the capture to the store.
//!
//! `instance-config/@id` is not compared with the path uuid: the real server ignores it (it
//! stores the instance, its OAuth key and its deployment link under the path uuid), so a
//! mismatched registration is a real change there, and replaying the same request elsewhere
//! reproduces it faithfully. The path uuid is the instance.

pub mod audrey_data;
pub mod form;
pub mod instance_config;
pub mod route;

pub use route::{classify, route_class, Route, RouteClass};

use crate::change::{Capture, Event};
use instance_config::InstanceConfigError;

/// Why a capturing request produced no change. [`NotCaptured::as_str`] is a stable metric
/// label; `Display` names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotCaptured {
    #[error("not a capturing route")]
    NotCapturing,
    #[error("PUT /params body has no audrey_data form field")]
    MissingAudreyData,
    #[error("POST /configs body has no data form field")]
    MissingData,
    #[error("POST /configs data form field is not valid UTF-8")]
    DataNotUtf8,
    #[error("POST /configs data: {0}")]
    BadInstanceConfig(InstanceConfigError),
}

impl NotCaptured {
    /// Stable label value for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            NotCaptured::NotCapturing => "not_capturing",
            NotCaptured::MissingAudreyData => "missing_audrey_data",
            NotCaptured::MissingData => "missing_data",
            NotCaptured::DataNotUtf8 => "data_not_utf8",
            NotCaptured::BadInstanceConfig(e) if e.is_missing_deployment() => {
                "xml_missing_deployment"
            }
            NotCaptured::BadInstanceConfig(_) => "bad_xml",
        }
    }
}

/// Builds the change a capturing request makes, from its form body.
///
/// - `PutParams`: the `audrey_data` field (raw text kept verbatim for replay, pairs decoded);
///   the deployment is left `None` for the store to fill in.
/// - `PostConfigs`: the `data` field, an instance-config: its deployment and secret.
/// - `DeleteDeployment`: the body is ignored.
///
/// `client_addr` is the guest's address as the server records it; `now_ms` the capture time.
///
/// `audrey_data` is read lossily as UTF-8: an invalid byte becomes U+FFFD, which the server's
/// base64 decoder skips just as it skips the byte, and a name with an invalid byte matches no
/// parameter either way, so a verbatim replay has the same effect. The instance-config must be
/// UTF-8 ([`NotCaptured::DataNotUtf8`]): it is replayed verbatim and a lossy copy would differ.
/// Only the body is read: a field the server also honours from the query string or from a
/// multipart body is not seen here.
pub fn capture_from(
    route: &Route,
    body: &[u8],
    client_addr: Option<String>,
    now_ms: u64,
) -> Result<Capture, NotCaptured> {
    let (api_version, instance, deployment, event) = match route {
        Route::PutParams { version, instance } => {
            let raw = form::field(body, "audrey_data").ok_or(NotCaptured::MissingAudreyData)?;
            let parsed = audrey_data::parse(&raw);
            let event = Event::Params {
                audrey_data: raw,
                values: parsed.values,
                return_codes: parsed.return_codes,
            };
            (*version, Some(instance.clone()), None, event)
        }
        Route::PostConfigs { version, instance } => {
            let raw = form::field_bytes(body, "data").ok_or(NotCaptured::MissingData)?;
            let xml = String::from_utf8(raw).map_err(|_| NotCaptured::DataNotUtf8)?;
            let config = instance_config::parse(&xml).map_err(NotCaptured::BadInstanceConfig)?;
            let event = Event::Registration {
                instance_config: xml,
                secret: config.secret,
            };
            (
                *version,
                Some(instance.clone()),
                Some(config.deployment),
                event,
            )
        }
        Route::DeleteDeployment {
            version,
            deployment,
        } => (*version, None, Some(deployment.clone()), Event::Deletion),
        Route::Other => return Err(NotCaptured::NotCapturing),
    };
    Ok(Capture {
        api_version,
        instance,
        deployment,
        client_addr,
        captured_at_ms: now_ms,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<instance-config id='I1' name='db' secret='S3cr3t'>\
                       <deployable name='wp' id='D1'/></instance-config>";

    fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
            .into_bytes()
    }
    fn put(id: &str) -> Route {
        Route::PutParams {
            version: 2,
            instance: id.into(),
        }
    }
    fn post(id: &str) -> Route {
        Route::PostConfigs {
            version: 1,
            instance: id.into(),
        }
    }

    #[test]
    fn captures_each_route() {
        let addr = Some("10.0.0.5".to_string());
        let body = b"audrey_data=%7Cipaddress%26MTAuMC4wLjU%3D%7C&oauth_nonce=1";
        let got = capture_from(&put("I1"), body, addr.clone(), 7).expect("params captured");
        assert_eq!(
            got,
            Capture {
                api_version: 2,
                instance: Some("I1".into()),
                deployment: None,
                client_addr: addr.clone(),
                captured_at_ms: 7,
                event: Event::Params {
                    audrey_data: "|ipaddress&MTAuMC4wLjU=|".into(),
                    values: vec![("ipaddress".into(), "10.0.0.5".into())],
                    return_codes: false,
                },
            }
        );

        let body = form(&[("data", XML)]);
        let got = capture_from(&post("I1"), &body, None, 8).expect("registration captured");
        assert_eq!(
            got,
            Capture {
                api_version: 1,
                instance: Some("I1".into()),
                deployment: Some("D1".into()),
                client_addr: None,
                captured_at_ms: 8,
                event: Event::Registration {
                    instance_config: XML.into(),
                    secret: "S3cr3t".into()
                },
            }
        );

        let del = Route::DeleteDeployment {
            version: 1,
            deployment: "D1".into(),
        };
        for body in [&b""[..], b"anything=at&all", b"\xff\x00"] {
            let got = capture_from(&del, body, None, 9).expect("deletion captured");
            assert_eq!(
                got,
                Capture {
                    api_version: 1,
                    instance: None,
                    deployment: Some("D1".into()),
                    client_addr: None,
                    captured_at_ms: 9,
                    event: Event::Deletion,
                }
            );
        }
    }

    #[test]
    fn params_variants() {
        let cases: Vec<(Vec<u8>, &str, bool, usize)> = vec![
            (b"audrey_data=".to_vec(), "", false, 0),
            (form(&[("audrey_data", "|&|")]), "|&|", false, 0),
            (
                form(&[("audrey_data", "||db_svc&MA==|")]),
                "||db_svc&MA==|",
                true,
                1,
            ),
            (
                b"audrey_data=%7Ca%26%FFMA%3D%3D%7C".to_vec(),
                "|a&\u{FFFD}MA==|",
                false,
                1,
            ),
        ];
        for (body, raw, codes, n) in cases {
            match capture_from(&put("U"), &body, None, 0)
                .expect("captured")
                .event
            {
                Event::Params {
                    audrey_data,
                    values,
                    return_codes,
                } => {
                    assert_eq!(
                        (audrey_data.as_str(), return_codes, values.len()),
                        (raw, codes, n)
                    );
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
    }

    #[test]
    fn mismatched_instance_config_id_is_captured_under_the_path_uuid() {
        let body = form(&[("data", XML)]);
        let got = capture_from(&post("OTHER"), &body, None, 0).expect("captured");
        assert_eq!(got.instance.as_deref(), Some("OTHER"));
    }

    #[test]
    fn refusals_have_labels_and_messages() {
        let cases: Vec<(Route, Vec<u8>, &str, &str)> = vec![
            (Route::Other, vec![], "not_capturing", "not a capturing route"),
            (put("U"), vec![], "missing_audrey_data", "no audrey_data form field"),
            (put("U"), b"audrey_data".to_vec(), "missing_audrey_data", "no audrey_data"),
            (put("U"), b"data=%7C%26%7C".to_vec(), "missing_audrey_data", "no audrey_data"),
            (post("I"), vec![], "missing_data", "no data form field"),
            (post("I"), b"data=%FF".to_vec(), "data_not_utf8", "not valid UTF-8"),
            (post("I"), form(&[("data", "<instance-config")]), "bad_xml", "not well-formed XML"),
            (post("I"), form(&[("data", "")]), "bad_xml", "not well-formed XML"),
            (post("I"), form(&[("data", "<instance-config id='I' name='n'/>")]), "bad_xml", "no @secret"),
            (
                post("I"),
                form(&[("data", "<instance-config id='I' name='n' secret='s'/>")]),
                "xml_missing_deployment",
                "instance-config has no deployable",
            ),
            (
                post("I"),
                form(&[("data", "<instance-config id='I' name='n' secret='s'><deployable name='d'/></instance-config>")]),
                "xml_missing_deployment",
                "no deployable/@id",
            ),
        ];
        for (route, body, label, message) in cases {
            let err = capture_from(&route, &body, None, 0).expect_err(label);
            assert_eq!(err.as_str(), label, "{err}");
            assert!(err.to_string().contains(message), "{label}: {err}");
        }
    }

    #[test]
    fn hostile_bodies_never_panic() {
        let mut bodies: Vec<Vec<u8>> = vec![
            vec![0xFF; 10_000],
            b"%".repeat(10_000),
            b"&".repeat(100_000),
            b"=".repeat(100_000),
            b"audrey_data=%7C".repeat(10_000),
            b"data=%3C".repeat(10_000),
            "audrey_data=|\u{1F600}&\u{1F600}|".as_bytes().to_vec(),
        ];
        bodies.push([b"audrey_data=|".as_slice(), &b"a&b|".repeat(200_000)].concat());
        for route in [put("U"), post("I")] {
            for body in &bodies {
                let _ = capture_from(&route, body, None, 0);
            }
        }
    }
}
