//! The instance-config XML that Conductor POSTs to `/configs/:v/:uuid` (form field `data`).
//!
//! Owns reading the few facts federation needs from it: the deployment (`deployable/@id`,
//! found nowhere else), the OAuth secret, and the instance's provided parameters, services and
//! references to other instances. Pure: no I/O, no validation beyond what those facts need.
//!
//! The server validates the document against its RelaxNG schema (`instance-config.rng`),
//! which requires `instance-config/@id`, `@name`, `@secret` and `deployable` with `@id` and
//! `@name` (any text, even empty). Those are required here too, with errors naming what is
//! missing, so nothing the server accepts is refused, with one exception: an empty
//! `deployable/@id` is an error, because a change needs a deployment to be routed.
//! Elements are matched by local name without a namespace (the schema has none), and lists
//! are read the way the server reads them (`//provided-parameter`, `//service`, ...).
//! DTDs are refused (roxmltree's default): Conductor never sends one, and refusing them rules
//! out entity-expansion attacks.

use roxmltree::{Document, Node};

/// What federation needs from an instance-config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    /// `instance-config/@id`. The server ignores it and keys the instance by the path uuid.
    pub id: String,
    /// `instance-config/@name` (the assembly name).
    pub name: String,
    /// `instance-config/@secret`: the instance's OAuth consumer secret.
    pub secret: String,
    /// `deployable/@id`: the deployment the instance belongs to (never empty).
    pub deployment: String,
    /// `deployable/@name`.
    pub deployable_name: String,
    /// `provided-parameter/@name`, in document order.
    pub provided: Vec<String>,
    /// `service/@name`, in document order.
    pub services: Vec<String>,
    /// `(reference/@assembly, reference/@provided-parameter)` of every parameter reference.
    pub references: Vec<(String, String)>,
    /// `(reference/@assembly, reference/@service-parameter)` of service references.
    pub service_references: Vec<(String, String)>,
}

/// Why an instance-config could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceConfigError {
    #[error("instance-config is not well-formed XML: {0}")]
    NotXml(String),
    #[error("document root is <{0}>, expected <instance-config>")]
    WrongRoot(String),
    /// A required element or attribute, named by its path (`deployable/@id`).
    #[error("instance-config has no {0}")]
    Missing(&'static str),
    #[error("instance-config has an empty deployable/@id")]
    EmptyDeployment,
}

impl InstanceConfigError {
    /// True when the deployment is what is missing (a distinct metric label upstream).
    pub fn is_missing_deployment(&self) -> bool {
        matches!(
            self,
            InstanceConfigError::Missing("deployable")
                | InstanceConfigError::Missing("deployable/@id")
                | InstanceConfigError::EmptyDeployment
        )
    }
}

/// Reads an instance-config document.
pub fn parse(xml: &str) -> Result<InstanceConfig, InstanceConfigError> {
    let doc = Document::parse(xml).map_err(|e| InstanceConfigError::NotXml(e.to_string()))?;
    let root = doc.root_element();
    if !is(root, "instance-config") {
        let tag = root.tag_name();
        let shown = match tag.namespace() {
            Some(ns) => format!("{} xmlns={ns:?}", tag.name()),
            None => tag.name().to_owned(),
        };
        return Err(InstanceConfigError::WrongRoot(shown));
    }
    let id = attr(root, "id", "@id")?;
    let name = attr(root, "name", "@name")?;
    let secret = attr(root, "secret", "@secret")?;
    let deployable = elements(root, "deployable")
        .next()
        .ok_or(InstanceConfigError::Missing("deployable"))?;
    let deployment = attr(deployable, "id", "deployable/@id")?;
    if deployment.is_empty() {
        return Err(InstanceConfigError::EmptyDeployment);
    }
    let deployable_name = attr(deployable, "name", "deployable/@name")?;
    let names = |tag: &'static str| -> Vec<String> {
        elements(root, tag)
            .filter_map(|n| n.attribute("name"))
            .map(str::to_owned)
            .collect()
    };
    let refs = |kind: &'static str| -> Vec<(String, String)> {
        elements(root, "reference")
            .filter_map(|r| {
                Some((
                    r.attribute("assembly")?.to_owned(),
                    r.attribute(kind)?.to_owned(),
                ))
            })
            .collect()
    };
    Ok(InstanceConfig {
        id,
        name,
        secret,
        deployment,
        deployable_name,
        provided: names("provided-parameter"),
        services: names("service"),
        references: refs("provided-parameter"),
        service_references: refs("service-parameter"),
    })
}

fn is(node: Node, tag: &str) -> bool {
    node.is_element() && node.tag_name().name() == tag && node.tag_name().namespace().is_none()
}

fn elements<'a, 'i>(root: Node<'a, 'i>, tag: &'static str) -> impl Iterator<Item = Node<'a, 'i>> {
    root.descendants().filter(move |n| is(*n, tag))
}

fn attr(node: Node, name: &str, path: &'static str) -> Result<String, InstanceConfigError> {
    node.attribute(name)
        .map(str::to_owned)
        .ok_or(InstanceConfigError::Missing(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SAMPLE: &str = r#"<?xml version="1.0"?>
<instance-config id='I1' name='db' secret='S3cr3t'>
  <deployable name='wordpress' id='DEPLOYMENT-UUID'/>
  <provided-parameters><provided-parameter name='ipaddress'/><provided-parameter name='hostname'/></provided-parameters>
  <services><service name='db_svc'>
    <executable><contents><![CDATA[#!/bin/sh
echo "<service name='fake'/>"]]></contents></executable>
    <parameters>
      <parameter name='port'><value><![CDATA[3306]]></value></parameter>
      <parameter name='peer_ip'><reference assembly='I2' provided-parameter='ipaddress'/></parameter>
      <parameter name='peer_svc'><reference assembly='I3' service-parameter='web_svc'/></parameter>
    </parameters></service>
    <service name='backup'><executable url='http://x/y'/></service></services>
</instance-config>"#;

    #[test]
    fn reads_the_sample() {
        let c = parse(SAMPLE).expect("sample parses");
        assert_eq!(
            c,
            InstanceConfig {
                id: "I1".into(),
                name: "db".into(),
                secret: "S3cr3t".into(),
                deployment: "DEPLOYMENT-UUID".into(),
                deployable_name: "wordpress".into(),
                provided: vec!["ipaddress".into(), "hostname".into()],
                services: vec!["db_svc".into(), "backup".into()],
                references: vec![("I2".into(), "ipaddress".into())],
                service_references: vec![("I3".into(), "web_svc".into())],
            }
        );
    }

    #[test]
    fn minimal_and_unicode_documents() {
        let c = parse("<instance-config id='' name='n' secret=''><deployable name='' id='D'/></instance-config>")
            .expect("minimal parses");
        assert_eq!(
            (c.id.as_str(), c.secret.as_str(), c.deployment.as_str()),
            ("", "", "D")
        );
        assert!(c.provided.is_empty() && c.services.is_empty() && c.references.is_empty());

        let c = parse("<instance-config id='é' name='ü' secret='&amp;&#x1F600;'><deployable name='x' id='Δ'/></instance-config>")
            .expect("unicode parses");
        assert_eq!(
            (c.id.as_str(), c.secret.as_str(), c.deployment.as_str()),
            ("é", "&\u{1F600}", "Δ")
        );
    }

    #[test]
    fn errors_name_what_is_missing() {
        let deep = format!("{}{}", "<a>".repeat(5000), "</a>".repeat(5000));
        let cases: Vec<(String, &str, bool)> = vec![
            ("".into(), "not well-formed XML", false),
            ("<instance-config".into(), "not well-formed XML", false),
            ("not xml at all".into(), "not well-formed XML", false),
            (SAMPLE[..SAMPLE.len() / 2].into(), "not well-formed XML", false),
            (deep, "", false),
            ("<!DOCTYPE x [<!ENTITY a 'aaaa'>]><instance-config/>".into(), "not well-formed XML", false),
            ("<config id='I'/>".into(), "root is <config>, expected <instance-config>", false),
            ("<instance-config xmlns='urn:x' id='I' name='n' secret='s'><deployable name='d' id='D'/></instance-config>"
                .into(), "root is <instance-config xmlns=\"urn:x\">", false),
            ("<instance-config name='n' secret='s'/>".into(), "instance-config has no @id", false),
            ("<instance-config id='I' secret='s'/>".into(), "instance-config has no @name", false),
            ("<instance-config id='I' name='n'/>".into(), "instance-config has no @secret", false),
            ("<instance-config id='I' name='n' secret='s'/>".into(), "instance-config has no deployable", true),
            ("<instance-config id='I' name='n' secret='s'><deployable name='d'/></instance-config>".into(),
                "instance-config has no deployable/@id", true),
            ("<instance-config id='I' name='n' secret='s'><deployable name='d' id=''/></instance-config>".into(),
                "empty deployable/@id", true),
            ("<instance-config id='I' name='n' secret='s'><deployable id='D'/></instance-config>".into(),
                "instance-config has no deployable/@name", false),
        ];
        for (xml, want, missing_deployment) in cases {
            let err = parse(&xml).expect_err(&xml);
            let msg = err.to_string();
            assert!(msg.contains(want), "{xml:.60}: {msg}");
            assert_eq!(err.is_missing_deployment(), missing_deployment, "{xml:.60}");
        }
    }

    #[test]
    fn huge_document_parses() {
        let many: String = (0..20_000)
            .map(|i| format!("<provided-parameter name='p{i}'/>"))
            .collect();
        let xml = format!(
            "<instance-config id='I' name='n' secret='s'><deployable name='d' id='D'/>\
             <provided-parameters>{many}</provided-parameters></instance-config>"
        );
        assert_eq!(parse(&xml).expect("parses").provided.len(), 20_000);
    }
}
