//! The federation issue's scenario: instances I1 (db) and I2 (web) of deployment D1, each
//! referencing the other's `ipaddress`. Used by the emulator, conformance and federation
//! tests and by the demo.

use super::client::{Creds, InstanceXml, ServiceXml};

pub fn i1() -> InstanceXml {
    InstanceXml::new("I1", "D1", "s3cret1")
        .provides("ipaddress")
        .service(ServiceXml::new("db_svc").value("port", "3306").reference(
            "peer_ip",
            "I2",
            "ipaddress",
        ))
}

pub fn i2() -> InstanceXml {
    InstanceXml::new("I2", "D1", "s3cret2")
        .provides("ipaddress")
        .service(ServiceXml::new("web_svc").value("port", "8080").reference(
            "peer_ip",
            "I1",
            "ipaddress",
        ))
}

/// An instance's own OAuth credentials (key = uuid, secret from its instance-config).
pub fn own(x: &InstanceXml) -> Creds {
    Creds::new(&x.uuid, &x.secret)
}
