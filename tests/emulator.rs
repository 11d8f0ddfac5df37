//! Integration tests of the Config Server emulator: each behaviour of
//! `/work/shared/reference/config-server.md`, against the real binary on a loopback port.
mod support;

use std::time::{Duration, Instant};

use support::client::{audrey_data, Client, Creds, InstanceXml, Placement, ServiceXml, Signed};
use support::emulator::{Emulator, EmulatorOptions};
use support::scenario::{i1, i2, own};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const HTML: &str = "text/html;charset=utf-8";
const TEXT: &str = "text/plain;charset=utf-8";

fn conductor() -> Creds {
    Creds::new("conductor", "c0nduct0r")
}

fn start() -> (Emulator, Client) {
    let emu = Emulator::start("conductor", "c0nduct0r");
    let client = Client::new(emu.addr());
    (emu, client)
}

async fn register(c: &Client, x: &InstanceXml) {
    let r = c
        .register(&conductor(), 1, &x.uuid, &x.to_xml())
        .await
        .expect("register");
    assert_eq!(
        (r.status, r.text()),
        (200, String::new()),
        "registering {}",
        x.uuid
    );
    assert_eq!(r.header("content-type").as_deref(), Some(HTML));
}

#[tokio::test]
async fn version_and_auth_test() {
    let (_emu, c) = start();
    let r = c.send("GET", "/version", &[], "").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some(TEXT));
    assert_eq!(
        r.text(),
        "<config-server>\n  <application-version>0.5.2</application-version>\n  <api-version>2</api-version>\n</config-server>"
    );
    let r = c
        .send(
            "GET",
            "/version?api_compat=1",
            &[("Accept", "application/xml")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/xml;charset=utf-8")
    );
    assert!(r.text().contains("<api-version>1</api-version>"));
    let r = c
        .send("GET", "/version?api_compat=3-4", &[], "")
        .await
        .unwrap();
    assert!(r.text().contains("<api-version>0</api-version>"));
    let r = c
        .send("GET", "/version", &[("Accept", "text/html")], "")
        .await
        .unwrap();
    assert_eq!(r.header("content-type").as_deref(), Some(HTML));
    assert!(r.text().starts_with("<html><body>"));
    let r = c.send("HEAD", "/version", &[], "").await.unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.header("content-length").as_deref(), Some("114"));

    let r = c
        .signed(Signed::new("GET", "/auth", &conductor()))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, "Authentication test successful".into())
    );
    let r = c
        .signed(Signed::new(
            "GET",
            "/auth",
            &Creds::new("conductor", "wrong"),
        ))
        .await
        .unwrap();
    assert_eq!((r.status, r.text()), (401, "Not Authorized\n".into()));
    assert_eq!(r.header("content-type").as_deref(), Some(HTML));
    let r = c.send("GET", "/auth", &[], "").await.unwrap();
    assert_eq!(r.status, 500, "no OAuth at all on a protected path");
    let r = c.send("GET", "/nowhere", &[], "").await.unwrap();
    assert_eq!((r.status, r.text()), (404, "<h1>Not Found</h1>".into()));
}

#[tokio::test]
async fn mutual_references_resolve_once_the_peer_reports() {
    let (_emu, c) = start();
    register(&c, &i1()).await;
    register(&c, &i2()).await;

    let r = c.get_configs(2, "I1", None, &own(&i1())).await.unwrap();
    assert_eq!(r.status, 202, "peer_ip unresolved");
    assert_eq!(r.header("content-type").as_deref(), Some(HTML));
    assert_eq!(
        r.text(),
        "|service|db_svc|parameters|port&MzMwNg==|peer_ip&|"
    );

    let r = c.get_params(1, "I1", &own(&i1())).await.unwrap();
    assert_eq!((r.status, r.text()), (200, "|ipaddress|".into()));
    assert_eq!(r.header("content-type").as_deref(), Some(TEXT));
    let r = c.get_params(2, "I1", &own(&i1())).await.unwrap();
    assert_eq!(r.text(), "|ipaddress|db_svc|");

    let r = c
        .put_params(
            2,
            "I2",
            "s3cret2",
            &audrey_data(&[("ipaddress", "10.0.0.6")]),
            Placement::Header,
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.text()), (200, "||".into()));
    assert_eq!(r.header("content-type").as_deref(), Some(HTML));
    let r = c.get_params(2, "I2", &own(&i2())).await.unwrap();
    assert_eq!(r.text(), "||web_svc|");

    let r = c.get_configs(2, "I1", None, &own(&i1())).await.unwrap();
    assert_eq!(
        (r.status, r.text()),
        (
            200,
            "|service|db_svc|parameters|port&MzMwNg==|peer_ip&MTAuMC4wLjY=|".into()
        )
    );
    let r = c.get_configs(2, "I2", None, &own(&i2())).await.unwrap();
    assert_eq!(r.status, 202, "I1 has not reported yet");
}

#[tokio::test]
async fn put_params_with_oauth_in_header_body_or_query() {
    let (_emu, c) = start();
    register(&c, &i1().provides("hostname")).await;
    let first = c
        .put_params(2, "I1", "s3cret1", "|&|", Placement::Body)
        .await
        .unwrap();
    assert_eq!(
        (first.status, first.text()),
        (202, "|ipaddress&hostname|".into())
    );
    let r = c
        .put_params(
            2,
            "I1",
            "s3cret1",
            &audrey_data(&[("ipaddress", "10.0.0.5"), ("bogus", "x")]),
            Placement::Query,
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.text()),
        (202, "|hostname|".into()),
        "unknown names ignored"
    );
    let r = c
        .put_params(
            2,
            "I1",
            "s3cret1",
            &audrey_data(&[("hostname", "db")]),
            Placement::Header,
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.text()), (200, "||".into()), "reports merge");

    // A legacy client signs without its body; a body other than the signed one is rejected.
    let mut legacy = Signed::new("PUT", "/params/2/I1", &own(&i1())).form("audrey_data", "|&|");
    legacy.unsigned_body = true;
    assert_eq!(c.signed(legacy).await.unwrap().status, 200);
    let other = oauth_over_body(&c, "|ipaddress&MQ==|", "|ipaddress&Mg==|").await;
    assert_eq!(
        (other.status, other.text()),
        (401, "Not Authorized\n".into())
    );

    let r = c
        .put_params(2, "I1", "wrong", "|&|", Placement::Body)
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    // An unknown key verifies with the empty secret, then the uuid is unknown.
    let r = c
        .put_params(2, "NOPE", "", "|&|", Placement::Header)
        .await
        .unwrap();
    assert_eq!((r.status, r.text()), (404, String::new()), "unknown uuid");
    let r = c
        .signed(Signed::new("PUT", "/params/2/I1", &own(&i1())))
        .await
        .unwrap();
    assert_eq!(r.status, 500, "audrey_data missing");
    let r = c
        .put_params(2, "I1", "s3cret1", "", Placement::Body)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, "||".into()),
        "empty audrey_data lists what is left"
    );
}

/// Signs a PUT over `signed` but sends `sent`.
async fn oauth_over_body(c: &Client, signed: &str, sent: &str) -> support::client::Response {
    let form = vec![("audrey_data".to_string(), signed.to_string())];
    let header = audrey_federation::oauth::authorization_header(
        "PUT",
        &c.url("/params/2/I1"),
        &form,
        "I1",
        "s3cret1",
    );
    let body = format!(
        "audrey_data={}",
        audrey_federation::oauth::percent_encode(sent)
    );
    c.send(
        "PUT",
        "/params/2/I1",
        &[
            ("Authorization", &header),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn ip_is_recorded_as_rack_request_ip() {
    let (_emu, c) = start();
    register(&c, &i1()).await;
    let r = c.get_ip(1, "I1").await.unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, String::new()),
        "empty before the first PUT"
    );
    assert_eq!(r.header("content-type").as_deref(), Some(TEXT));
    assert_eq!(c.get_ip(1, "NOPE").await.unwrap().status, 404);

    let cases = [
        (None, "127.0.0.1"),
        (Some("203.0.113.7"), "203.0.113.7"),
        (Some("198.51.100.1, 203.0.113.9, 10.0.0.1"), "203.0.113.9"),
        (Some("10.0.0.5, 192.168.0.1"), "10.0.0.5"),
    ];
    for (xff, expected) in cases {
        let mut req = Signed::new("PUT", "/params/2/I1", &own(&i1())).form("audrey_data", "|&|");
        if let Some(xff) = xff {
            req = req.header("X-Forwarded-For", xff);
        }
        assert_eq!(c.signed(req).await.unwrap().status, 202);
        assert_eq!(
            c.get_ip(2, "I1").await.unwrap().text(),
            expected,
            "X-Forwarded-For {xff:?}"
        );
    }
    // Missing audrey_data answers 500, but the address was stored first.
    let req =
        Signed::new("PUT", "/params/2/I1", &own(&i1())).header("X-Forwarded-For", "192.0.2.1");
    assert_eq!(c.signed(req).await.unwrap().status, 500);
    assert_eq!(c.get_ip(2, "I1").await.unwrap().text(), "192.0.2.1");
}

#[tokio::test]
async fn reposting_wipes_values_and_the_third_post_fails() {
    let (emu, c) = start();
    register(&c, &i1()).await;
    c.put_params(
        2,
        "I1",
        "s3cret1",
        &audrey_data(&[("ipaddress", "10.0.0.5")]),
        Placement::Header,
    )
    .await
    .unwrap();
    assert_eq!(
        c.get_params(1, "I1", &own(&i1())).await.unwrap().text(),
        "||"
    );
    register(&c, &i1()).await;
    assert_eq!(
        c.get_params(1, "I1", &own(&i1())).await.unwrap().text(),
        "|ipaddress|",
        "values wiped"
    );
    let third = c
        .register(&conductor(), 1, "I1", &i1().to_xml())
        .await
        .unwrap();
    assert_eq!(third.status, 500);
    assert_eq!(
        c.get_configs(2, "I1", None, &own(&i1()))
            .await
            .unwrap()
            .status,
        500,
        "peer I2 unknown"
    );
    let link = emu.storage_dir().join("deployables/D1/I1");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_to_string(emu.storage_dir().join("oauth/I1")).unwrap(),
        "s3cret1"
    );
}

#[tokio::test]
async fn per_service_answer_freezes_values() {
    let (_emu, c) = start();
    let i3 = InstanceXml::new("I3", "D1", "s3").service(ServiceXml::new("cache").reference(
        "peer_ip",
        "I2",
        "ipaddress",
    ));
    for x in [i1(), i2(), i3.clone()] {
        register(&c, &x).await;
    }
    let r = c
        .get_configs(2, "I1", Some("db_svc"), &own(&i1()))
        .await
        .unwrap();
    assert_eq!(r.status, 202);
    c.put_params(
        2,
        "I2",
        "s3cret2",
        &audrey_data(&[("ipaddress", "10.0.0.6")]),
        Placement::Header,
    )
    .await
    .unwrap();
    let r = c
        .get_configs(2, "I1", Some("db_svc"), &own(&i1()))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.text()),
        (
            200,
            "|service|db_svc|parameters|port&MzMwNg==|peer_ip&MTAuMC4wLjY=|".into()
        )
    );
    c.put_params(
        2,
        "I2",
        "s3cret2",
        &audrey_data(&[("ipaddress", "10.0.0.7")]),
        Placement::Header,
    )
    .await
    .unwrap();
    let frozen = c
        .get_configs(2, "I1", Some("db_svc"), &own(&i1()))
        .await
        .unwrap();
    assert!(
        frozen.text().ends_with("peer_ip&MTAuMC4wLjY=|"),
        "frozen: {}",
        frozen.text()
    );
    let live = c.get_configs(2, "I3", None, &own(&i3)).await.unwrap();
    assert_eq!(
        live.text(),
        "|service|cache|parameters|peer_ip&MTAuMC4wLjc=|",
        "not frozen elsewhere"
    );
    let r = c
        .get_configs(2, "I1", Some("no_such_svc"), &own(&i1()))
        .await
        .unwrap();
    assert_eq!(r.status, 500);
}

#[tokio::test]
async fn service_return_codes_resolve_service_references() {
    let (_emu, c) = start();
    let web = InstanceXml::new("W", "D1", "w")
        .service(ServiceXml::new("web").service_reference("db_rc", "I1", "db_svc"));
    register(&c, &i1()).await;
    register(&c, &i2()).await;
    register(&c, &web).await;
    assert_eq!(
        c.get_configs(2, "W", None, &own(&web))
            .await
            .unwrap()
            .status,
        202
    );
    let r = c
        .put_params(2, "I1", "s3cret1", "||db_svc&MA==|", Placement::Body)
        .await
        .unwrap();
    assert_eq!((r.status, r.text()), (202, "|ipaddress|".into()));
    let r = c.get_configs(2, "W", None, &own(&web)).await.unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, "|service|web|parameters|db_rc&MA==|".into())
    );
    let r = c
        .put_params(2, "I1", "s3cret1", "||nope&MA==|", Placement::Body)
        .await
        .unwrap();
    assert_eq!(r.status, 500, "unknown service");
    let report = c
        .send("GET", "/reports/1/instance/I1", &[], "")
        .await
        .unwrap();
    assert!(
        report
            .text()
            .contains("<completion-status>0</completion-status>"),
        "{}",
        report.text()
    );
    assert!(report.text().contains("status=\"success\""));
}

#[tokio::test]
async fn delete_deployment_is_open_and_removes_instances_and_consumers() {
    let (emu, c) = start();
    register(&c, &i1()).await;
    register(&c, &i2()).await;
    assert!(emu.storage_dir().join("deployables/D1/I2").exists());
    let r = c.delete_deployment(1, "D1").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.text().ends_with("/deployables/D1"),
        "body is a server path: {}",
        r.text()
    );
    assert!(!emu.storage_dir().join("oauth/I1").exists());
    assert!(!emu.storage_dir().join("instances/I1").exists());
    assert_eq!(
        c.get_configs(2, "I1", None, &conductor())
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(c.get_ip(1, "I1").await.unwrap().status, 404);
    // I1's consumer entry is gone: its real secret no longer verifies (empty secret does).
    assert_eq!(
        c.get_configs(2, "I1", None, &own(&i1()))
            .await
            .unwrap()
            .status,
        401
    );
    assert_eq!(c.delete_deployment(1, "D1").await.unwrap().status, 404);
    assert_eq!(c.delete_deployment(3, "D1").await.unwrap().status, 404);
}

#[tokio::test]
async fn error_answers() {
    let (_emu, c) = start();
    register(&c, &i1()).await;
    let r = c
        .register(&conductor(), 1, "X", "<instance-config>broken")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.text()),
        (400, "Could not parse the given XML document.\n".into())
    );
    let r = c
        .signed(Signed::new("POST", "/configs/1/X", &conductor()))
        .await
        .unwrap();
    assert_eq!(r.status, 500, "no data field");
    // The API version is checked after authentication.
    for v in [0, 3] {
        let r = c.get_configs(v, "I1", None, &conductor()).await.unwrap();
        assert_eq!((r.status, r.text()), (404, String::new()), "version {v}");
        assert_eq!(c.get_ip(v, "I1").await.unwrap().status, 404);
    }
    let r = c.send("GET", "/configs/3/I1", &[], "").await.unwrap();
    assert_eq!(r.status, 500, "no OAuth beats the version check");
    let r = c.get_configs(2, "NOPE", None, &conductor()).await.unwrap();
    assert_eq!((r.status, r.text()), (404, String::new()));
    assert_eq!(
        c.get_configs(2, "I1", None, &conductor())
            .await
            .unwrap()
            .status,
        500,
        "peer I2 not registered"
    );
    // An unknown consumer key verifies with the empty secret.
    let r = c
        .get_configs(1, "NOPE", None, &Creds::new("stranger", ""))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn signature_covers_the_rebuilt_url() {
    let (emu, _) = start();
    let direct = Client::new(emu.addr()).with_host("configserver.example:4567");
    register(&direct, &i1()).await;
    let proxied = Client::new(emu.addr())
        .with_host("localhost:4567")
        .with_header("X-Forwarded-Host", "configserver.example")
        .with_header("X_FORWARDED_PROTO", "https");
    let signed_for_https = proxied
        .clone()
        .with_host("configserver.example")
        .with_scheme("https");
    let r = signed_for_https
        .get_params(2, "I1", &own(&i1()))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "signed for https://configserver.example");
    // The same request signed for the Host actually sent fails: the server rebuilt another URL.
    let r = proxied.get_params(2, "I1", &own(&i1())).await.unwrap();
    assert_eq!(r.status, 401);
    let rewritten = Client::new(emu.addr()).with_host("127.0.0.1:9");
    let req = Signed::new("GET", "/auth", &conductor());
    let header = audrey_federation::oauth::authorization_header(
        "GET",
        &direct.url("/auth"),
        &[],
        "conductor",
        "c0nduct0r",
    );
    let r = rewritten
        .send("GET", "/auth", &[("Authorization", &header)], "")
        .await
        .unwrap();
    assert_eq!(r.status, 401, "a proxy rewriting Host breaks the signature");
    assert_eq!(direct.signed(req).await.unwrap().status, 200);
}

#[tokio::test]
async fn files_and_reports() {
    let (_emu, c) = start();
    register(&c, &i1()).await;
    register(&c, &i2()).await;
    let r = c
        .signed(Signed::new("GET", "/files/1/I1", &own(&i1())))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/x-tar")
    );
    assert_eq!(
        r.header("content-disposition").as_deref(),
        Some("attachment; filename=\"I1.tgz\"")
    );
    assert_eq!(&r.body[..2], &[0x1f, 0x8b], "gzip");

    let boundary = "XyZ";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.tgz\"\r\n\
         Content-Type: application/octet-stream\r\n\r\nTARBALL\r\n--{boundary}--\r\n"
    );
    let header = audrey_federation::oauth::authorization_header(
        "PUT",
        &c.url("/files/1/I1"),
        &[],
        "I1",
        "s3cret1",
    );
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = c
        .send(
            "PUT",
            "/files/1/I1",
            &[("Authorization", &header), ("Content-Type", &ct)],
            body,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = c
        .signed(Signed::new("GET", "/files/1/I1", &own(&i1())))
        .await
        .unwrap();
    assert_eq!(r.text(), "TARBALL");

    let report = c
        .send("GET", "/reports/1/instance/I1", &[], "")
        .await
        .unwrap();
    assert_eq!(report.status, 200);
    let text = report.text();
    assert!(
        text.contains("<instance uuid=\"I1\" assembly=\"assembly-I1\" status=\"incomplete\">"),
        "{text}"
    );
    assert!(
        text.contains("<first-contacted>"),
        "GET /files marks the instance contacted: {text}"
    );
    assert!(
        text.contains("<return-param-name name=\"ipaddress\"/>"),
        "{text}"
    );
    assert!(
        text.contains("<return-parameter name=\"ipaddress\"/>"),
        "{text}"
    );
    let dep = c
        .send("GET", "/reports/2/deployment/D1", &[], "")
        .await
        .unwrap();
    assert!(
        dep.text()
            .contains("<instance uuid=\"I1\" assembly=\"assembly-I1\" status=\"incomplete\"/>"),
        "{}",
        dep.text()
    );
    assert_eq!(
        c.send("GET", "/reports/3/deployment/D1", &[], "")
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        c.send("GET", "/reports/1/instance/NOPE", &[], "")
            .await
            .unwrap()
            .status,
        404
    );
    // Reports resolve references too: a peer this server does not know makes them raise.
    let lonely =
        InstanceXml::new("L", "D2", "l").service(ServiceXml::new("s").reference("p", "GONE", "ip"));
    register(&c, &lonely).await;
    assert_eq!(
        c.send("GET", "/reports/1/instance/L", &[], "")
            .await
            .unwrap()
            .status,
        500
    );
}

#[tokio::test]
async fn reads_mark_contact_but_ip_does_not() {
    let (_emu, c) = start();
    register(&c, &i1()).await;
    register(&c, &i2()).await;
    let report = || async {
        c.send("GET", "/reports/1/instance/I1", &[], "")
            .await
            .unwrap()
            .text()
    };
    assert!(!report().await.contains("last-contacted"));
    c.get_ip(1, "I1").await.unwrap();
    assert!(
        !report().await.contains("last-contacted"),
        "GET /ip changes nothing"
    );
    c.get_params(2, "I1", &own(&i1())).await.unwrap();
    assert!(report().await.contains("<last-contacted>"));
}

#[tokio::test]
async fn keep_alive_then_idle_timeout_closes() {
    let emu = Emulator::launch(EmulatorOptions {
        conductor: conductor(),
        idle_timeout_secs: Some(1),
        storage_dir: None,
    })
    .unwrap();
    let mut conn = tokio::net::TcpStream::connect(emu.addr()).await.unwrap();
    let request = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..2 {
        conn.write_all(request).await.unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&got).contains("</config-server>") {
            assert!(
                Instant::now() < deadline,
                "no answer on the kept-alive connection"
            );
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed too early");
            got.extend_from_slice(&buf[..n]);
        }
    }
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(15), conn.read(&mut buf))
        .await
        .expect("server closes the idle connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

/// The server gathers parameters with absolute XPath, so every service of an instance is
/// answered with the parameters of all its services.
#[tokio::test]
async fn every_service_gets_every_parameter() {
    let (_emu, c) = start();
    let two = InstanceXml::new("T", "D1", "t")
        .service(ServiceXml::new("a").value("pa", "1"))
        .service(ServiceXml::new("b").value("pb", "2"));
    register(&c, &two).await;
    let r = c.get_configs(2, "T", None, &own(&two)).await.unwrap();
    assert_eq!(
        (r.status, r.text()),
        (
            200,
            "|service|a|parameters|pa&MQ==|pb&Mg==|service|b|parameters|pa&MQ==|pb&Mg==|".into()
        )
    );
    let r = c.get_configs(2, "T", Some("b"), &own(&two)).await.unwrap();
    assert_eq!(r.text(), "|service|b|parameters|pa&MQ==|pb&Mg==|");
    let r = c.get_params(2, "T", &own(&two)).await.unwrap();
    assert_eq!(r.text(), "||a&b|");
}
