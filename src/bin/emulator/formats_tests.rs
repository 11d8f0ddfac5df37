//! Unit tests of the instance-config validator and the bar format.
use super::*;

const I1: &str = "<instance-config id='I1' name='db' secret='S3cr3t'>
  <deployable name='wordpress' id='D1'/>
  <provided-parameters><provided-parameter name='ipaddress'/></provided-parameters>
  <services><service name='db_svc'>
    <executable><contents><![CDATA[#!/bin/sh]]></contents></executable>
    <files><file><contents filename='my.cnf'>port=1</contents></file></files>
    <parameters>
      <parameter name='port'><value><![CDATA[3306]]></value></parameter>
      <parameter name='peer_ip'><reference assembly='I2' provided-parameter='ipaddress'/></parameter>
    </parameters></service>
    <service name='web_svc'>
      <executable url='http://example.invalid/x'/>
      <parameters><parameter name='rc'><reference assembly='I2' service-parameter='db_svc'/></parameter></parameters>
    </service></services>
</instance-config>";

#[test]
fn parses_the_reference_example() {
    let cfg = parse_instance_config(I1).expect("valid");
    assert_eq!(cfg.name, "db");
    assert_eq!(cfg.secret.as_deref(), Some("S3cr3t"));
    assert_eq!(cfg.deployable_id, "D1");
    assert_eq!(cfg.provided, vec!["ipaddress"]);
    assert_eq!(cfg.services, vec!["db_svc", "web_svc"]);
    let names: Vec<&str> = cfg.params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["port", "peer_ip", "rc"]);
    assert_eq!(cfg.params[0].1, Source::Static("3306".into()));
    assert_eq!(
        cfg.params[1].1,
        Source::Provided {
            assembly: "I2".into(),
            parameter: "ipaddress".into()
        }
    );
    assert!(cfg
        .files
        .contains(&("db_svc".into(), Some("my.cnf".into()), "port=1".into())));
}

#[test]
fn rejects_what_the_schema_rejects() {
    for bad in [
        "",
        "not xml",
        "<instance-config id='a' name='b' secret='c'/>",
        "<other id='a' name='b' secret='c'><deployable name='n' id='d'/></other>",
        "<instance-config id='a' name='b'><deployable name='n' id='d'/></instance-config>",
        "<instance-config id='a' name='b' secret='c' x='1'><deployable name='n' id='d'/></instance-config>",
        "<instance-config id='a' name='b' secret='c'><deployable name='n' id='d'/>text</instance-config>",
        "<instance-config id='a' name='b' secret='c'><services/><deployable name='n' id='d'/></instance-config>",
        "<instance-config id='a' name='b' secret='c'><deployable name='n' id='d'/><services><service name='s'/></services></instance-config>",
    ] {
        assert!(parse_instance_config(bad).is_err(), "accepted: {bad}");
    }
    let minimal = "<instance-config id='a' name='b' secret='c' type='t'>\n <deployable name='n' id='d'/>\n</instance-config>";
    assert!(parse_instance_config(minimal).is_ok());
}

#[test]
fn audrey_data_like_ruby() {
    assert_eq!(
        parse_audrey_data("|ipaddress&MTAuMC4wLjU=|"),
        Some(vec![("ipaddress".into(), "10.0.0.5".into())])
    );
    assert_eq!(parse_audrey_data("|&|"), Some(vec![]));
    assert_eq!(parse_audrey_data(""), None);
    assert_eq!(parse_audrey_data("||"), None);
    assert_eq!(parse_audrey_data("|ipaddress&|"), None);
    assert_eq!(
        parse_audrey_data("||db_svc&MA==|"),
        Some(vec![("db_svc".into(), "0".into())])
    );
    assert_eq!(
        parse_audrey_data("|a&MQ==|b&Mg==|a&Mw==|"),
        Some(vec![("a".into(), "3".into()), ("b".into(), "2".into())])
    );
}

#[test]
fn bar_answers() {
    let svcs = vec![(
        "web_svc".to_string(),
        vec![
            ("port".to_string(), Some("8080".to_string())),
            ("peer_ip".to_string(), None),
        ],
    )];
    assert_eq!(
        render_configs(&svcs),
        "|service|web_svc|parameters|port&ODA4MA==|peer_ip&|"
    );
    assert_eq!(render_configs(&[]), "||");
    assert_eq!(render_configs(&[("s".into(), vec![])]), "|service|s|");
    assert_eq!(render_provides(&["ipaddress".into()], None), "|ipaddress|");
    assert_eq!(render_provides(&[], None), "||");
    assert_eq!(
        render_provides(&["ipaddress".into()], Some(&["db_svc".into()])),
        "|ipaddress|db_svc|"
    );
}
