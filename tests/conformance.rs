//! Conformance: one scripted session of Conductor and guest calls (every route and every
//! error case of the reference) run against the emulator directly and through the
//! sidecar, each on a fresh server. Every step must give the same status, the same body
//! bytes and the same end-to-end headers.

mod support;

use support::client::{
    audrey_data, Client, Creds, InstanceXml, Placement, Response, ServiceXml, Signed,
};
use support::emulator::Emulator;
use support::scenario::{self, i1, own};
use support::sidecar::{config, Sidecar};

const HOST: &str = "configserver.example";

fn conductor() -> Creds {
    Creds::new("conductor", "c0nduct0r")
}

/// I2 of the scenario, also providing `hostname` (so one report leaves something missing).
fn i2() -> InstanceXml {
    scenario::i2().provides("hostname")
}

fn i3_dangling() -> InstanceXml {
    InstanceXml::new("I3", "D2", "s3cret3").service(ServiceXml::new("svc").reference(
        "peer_ip",
        "I9",
        "ipaddress",
    ))
}

/// The scripted session; returns every step's label and answer.
async fn session(c: &Client) -> Vec<(String, Response)> {
    let mut out: Vec<(String, Response)> = Vec::new();
    macro_rules! step {
        ($label:expr, $fut:expr) => {
            out.push(($label.to_string(), $fut.await.expect($label)))
        };
    }
    let (x1, x2, x3) = (i1(), i2(), i3_dangling());
    step!("version", c.send("GET", "/version", &[], ""));
    step!(
        "version xml",
        c.send(
            "GET",
            "/version?api_compat=1-2",
            &[("Accept", "application/xml")],
            ""
        )
    );
    step!(
        "auth ok",
        c.signed(Signed::new("GET", "/auth", &conductor()))
    );
    step!(
        "auth bad secret",
        c.signed(Signed::new(
            "GET",
            "/auth",
            &Creds::new("conductor", "wrong")
        ))
    );
    step!("auth no oauth", c.send("GET", "/auth", &[], ""));
    step!(
        "register I1",
        c.register(&conductor(), 1, "I1", &x1.to_xml())
    );
    step!(
        "register I2",
        c.register(&conductor(), 1, "I2", &x2.to_xml())
    );
    step!(
        "register I3",
        c.register(&conductor(), 1, "I3", &x3.to_xml())
    );
    step!(
        "register bad xml",
        c.register(&conductor(), 1, "I4", "<instance-config")
    );
    step!("params v2 I1", c.get_params(2, "I1", &own(&x1)));
    step!("params v1 I1", c.get_params(1, "I1", &own(&x1)));
    step!(
        "configs I1 unresolved",
        c.get_configs(2, "I1", None, &own(&x1))
    );
    step!(
        "first empty report",
        c.put_params(2, "I2", &x2.secret, "|&|", Placement::Header)
    );
    step!(
        "I1 reports",
        c.put_params(
            2,
            "I1",
            &x1.secret,
            &audrey_data(&[("ipaddress", "10.0.0.5")]),
            Placement::Header
        )
    );
    step!(
        "I2 reports part",
        c.put_params(
            2,
            "I2",
            &x2.secret,
            &audrey_data(&[("ipaddress", "10.1.0.7")]),
            Placement::Body
        )
    );
    step!(
        "I2 reports rest",
        c.put_params(
            2,
            "I2",
            &x2.secret,
            &audrey_data(&[("hostname", "web")]),
            Placement::Body
        )
    );
    step!(
        "return codes",
        c.put_params(2, "I1", &x1.secret, "||db_svc&MA==|", Placement::Query)
    );
    step!(
        "configs I1 resolved",
        c.get_configs(2, "I1", None, &own(&x1))
    );
    step!(
        "configs I2 resolved",
        c.get_configs(2, "I2", None, &own(&x2))
    );
    step!(
        "configs I2 service",
        c.get_configs(2, "I2", Some("web_svc"), &own(&x2))
    );
    step!(
        "configs I3 dangling peer",
        c.get_configs(2, "I3", None, &own(&x3))
    );
    step!(
        "configs unknown",
        c.get_configs(2, "I9", None, &conductor())
    );
    step!("configs v3", c.get_configs(3, "I1", None, &own(&x1)));
    step!(
        "params unknown uuid",
        c.put_params(2, "I9", "x", "|&|", Placement::Header)
    );
    step!(
        "params v0",
        c.put_params(0, "I1", &x1.secret, "|&|", Placement::Header)
    );
    step!(
        "params bad signature",
        c.put_params(2, "I1", "wrong", "|&|", Placement::Header)
    );
    step!(
        "params missing audrey_data",
        c.signed(Signed::new("PUT", "/params/2/I1", &own(&x1)).form("other", "1"))
    );
    step!(
        "params no oauth",
        c.send(
            "PUT",
            "/params/2/I1",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            "audrey_data=%7C%26%7C"
        )
    );
    step!("ip I1", c.get_ip(2, "I1"));
    step!("ip unknown", c.get_ip(2, "I9"));
    step!(
        "files get",
        c.signed(Signed::new("GET", "/files/2/I1", &own(&x1)).placement(Placement::Query))
    );
    step!(
        "files put",
        c.send(
            "PUT",
            "/files/2/I1",
            &[("Content-Type", "multipart/form-data; boundary=XyZ")],
            "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.tgz\"\r\n\r\nabc\r\n--XyZ--\r\n"
        )
    );
    step!(
        "report deployment",
        c.send("GET", "/reports/1/deployment/D1", &[], "")
    );
    step!(
        "report instance",
        c.send("GET", "/reports/1/instance/I2", &[], "")
    );
    step!(
        "re-register I1 wipes",
        c.register(&conductor(), 1, "I1", &x1.to_xml())
    );
    step!(
        "configs I2 after wipe",
        c.get_configs(2, "I2", None, &own(&x2))
    );
    step!(
        "third register fails",
        c.register(&conductor(), 1, "I1", &x1.to_xml())
    );
    step!("delete deployment", c.delete_deployment(1, "D1"));
    step!("delete again", c.delete_deployment(1, "D1"));
    step!("unknown route", c.send("GET", "/nope", &[], ""));
    out
}

/// Headers that legitimately differ between two runs or two hops.
fn end_to_end(r: &Response) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "connection" | "keep-alive"))
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            // The file's write time on each server (a second apart at worst): compare its shape.
            let v = if k == "last-modified" {
                v.chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect()
            } else {
                v
            };
            (k.to_string(), v)
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn direct_and_through_the_sidecar_answer_identically() {
    // Both servers stamp the tarballs they build with this time, not the second of the
    // registration, so `GET /files` can be compared byte for byte.
    std::env::set_var("SOURCE_DATE_EPOCH", "1700000000");
    let direct = Emulator::start("conductor", "c0nduct0r");
    let behind = Emulator::start("conductor", "c0nduct0r");
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(
        dir.path(),
        &config(
            "a",
            &format!("http://{}", behind.addr()),
            dir.path(),
            "",
            "",
        ),
    );

    let a = session(&Client::new(direct.addr()).with_host(HOST)).await;
    let b = session(&Client::new(sc.proxy).with_host(HOST)).await;
    assert_eq!(a.len(), b.len());
    let mut statuses = std::collections::BTreeSet::new();
    // DELETE answers with a server path: the two emulators' storage folders differ.
    let da_dir = direct.storage_dir().display().to_string();
    let db_dir = behind.storage_dir().display().to_string();
    for ((label, da), (_, db)) in a.iter().zip(&b) {
        assert_eq!(da.status, db.status, "{label}: status");
        let (ta, tb) = (
            da.text().replace(&da_dir, "STORAGE"),
            db.text().replace(&db_dir, "STORAGE"),
        );
        if label.starts_with("report") {
            // Reports carry wall-clock times of two different runs: compare their shape.
            let shape = |t: &str| {
                t.chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect::<String>()
            };
            assert_eq!(shape(&ta), shape(&tb), "{label}: body");
        } else {
            assert_eq!(ta, tb, "{label}: body");
        }
        assert_eq!(end_to_end(da), end_to_end(db), "{label}: headers");
        statuses.insert(da.status);
    }
    // The script really exercised the server's whole range of answers.
    for s in [200, 202, 400, 401, 404, 500] {
        assert!(statuses.contains(&s), "no step answered {s}: {statuses:?}");
    }
    // The server behind the sidecar recorded the same guest address.
    let ip_direct = Client::new(direct.addr()).get_ip(2, "I2").await.unwrap();
    let ip_behind = Client::new(behind.addr()).get_ip(2, "I2").await.unwrap();
    assert_eq!(ip_direct.text(), ip_behind.text());
}
