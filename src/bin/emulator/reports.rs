//! The status reports of `GET /reports/:v/{deployment,instance}/:uuid`, shaped like the
//! server's Nokogiri builders (`lib/report_server.rb`), with Ruby's timestamp formats:
//! `Time#to_s` for registration times, `DateTime#to_s` for contact and configuration times.
//!
//! Read-only: references are resolved in memory and never stored from here.
use crate::model::{Fault, Instance};
use crate::store::Store;

/// `<deployment uuid status><registered/><completed/>?<instances><instance …/></instances>`.
pub fn deployment(store: &Store, deployment: &str) -> Result<String, Fault> {
    let mut instances = Vec::new();
    for uuid in store.deployment_members(deployment)? {
        match store.load(&uuid)? {
            Some(inst) => instances.push(inst),
            None => return Err(Fault::Raised(format!("dangling instance link {uuid}"))),
        }
    }
    let statuses: Vec<Option<&str>> = instances.iter().map(Instance::status).collect();
    // Ruby's `min` compares nil with a String and raises when both kinds are present.
    if statuses.iter().any(Option::is_some) && statuses.iter().any(Option::is_none) {
        return Err(Fault::Raised(
            "comparison of NilClass with String failed".into(),
        ));
    }
    let status = statuses.iter().flatten().min().copied().unwrap_or("");
    let ends: Option<Vec<u64>> = instances.iter().map(Instance::completed).collect();
    let mut x = String::from("<?xml version=\"1.0\"?>\n");
    x += &format!(
        "<deployment uuid=\"{}\" status=\"{}\">\n",
        esc(deployment),
        status
    );
    x += &format!(
        "  <registered>{}</registered>\n",
        time_to_s(store.deployment_registered(deployment)?)
    );
    if let Some(done) = ends.and_then(|e| e.into_iter().max()) {
        x += &format!("  <completed>{}</completed>\n", datetime_to_s(done));
    }
    if !instances.is_empty() {
        x += "  <instances>\n";
        for (inst, st) in instances.iter().zip(&statuses) {
            x += &format!(
                "    <instance uuid=\"{}\" assembly=\"{}\" status=\"{}\"/>\n",
                esc(&inst.uuid),
                esc(&inst.config.name),
                st.unwrap_or("")
            );
        }
        x += "  </instances>\n";
    }
    x += "</deployment>\n";
    Ok(x)
}

/// `<instance uuid assembly status>` with timestamps, per-service state, unresolved
/// references and pending return parameters.
pub fn instance(store: &Store, mut inst: Instance) -> Result<String, Fault> {
    let mut x = String::from("<?xml version=\"1.0\"?>\n");
    x += &format!(
        "<instance uuid=\"{}\" assembly=\"{}\" status=\"{}\">\n",
        esc(&inst.uuid),
        esc(&inst.config.name),
        inst.status().unwrap_or("")
    );
    x += &format!(
        "  <registered>{}</registered>\n",
        time_to_s(inst.state.registered)
    );
    if let Some(t) = inst.state.first_contacted {
        x += &format!(
            "  <first-contacted>{}</first-contacted>\n",
            datetime_to_s(t)
        );
    }
    if let Some(t) = inst.state.last_contacted {
        x += &format!("  <last-contacted>{}</last-contacted>\n", datetime_to_s(t));
    }
    if let Some(t) = inst.completed() {
        x += &format!("  <completed>{}</completed>\n", datetime_to_s(t));
    }
    let services = inst.config.services.clone();
    if !services.is_empty() {
        x += "  <services>\n";
        for name in &services {
            let values = inst.resolve(store, name)?;
            let svc = inst.service(name).cloned().unwrap_or_default();
            let mut body = String::new();
            if let Some(t) = svc.config_started {
                body += &format!(
                    "      <configuration-started>{}</configuration-started>\n",
                    datetime_to_s(t)
                );
            }
            if let Some(t) = svc.config_ended {
                body += &format!(
                    "      <configuration-ended>{}</configuration-ended>\n",
                    datetime_to_s(t)
                );
            }
            if let Some(rc) = &svc.return_code {
                body += &format!("      <completion-status>{}</completion-status>\n", esc(rc));
            }
            let unresolved: Vec<String> = svc
                .params
                .iter()
                .zip(&values)
                .filter(|(_, (_, v))| v.is_none())
                .filter_map(|(p, (pname, _))| match &p.source {
                    crate::formats::Source::Provided { assembly, parameter } => Some(format!(
                        "        <service-parameter name=\"{}\">\n          <source-assembly uuid=\"{}\"/>\n          <return-param-name name=\"{}\"/>\n        </service-parameter>\n",
                        esc(pname), esc(assembly), esc(parameter)
                    )),
                    crate::formats::Source::Service { assembly, service } => Some(format!(
                        "        <service-parameter name=\"{}\">\n          <source-assembly uuid=\"{}\"/>\n          <service-name name=\"{}\"/>\n        </service-parameter>\n",
                        esc(pname), esc(assembly), esc(service)
                    )),
                    crate::formats::Source::Static(_) => None,
                })
                .collect();
            if !unresolved.is_empty() {
                body += "      <unresolved-service-parameters>\n";
                body += &unresolved.concat();
                body += "      </unresolved-service-parameters>\n";
            }
            let status = inst.service_status(name);
            if body.is_empty() {
                x += &format!(
                    "    <service name=\"{}\" status=\"{status}\"/>\n",
                    esc(name)
                );
            } else {
                x += &format!(
                    "    <service name=\"{}\" status=\"{status}\">\n{body}    </service>\n",
                    esc(name)
                );
            }
        }
        x += "  </services>\n";
        let pending = inst.missing_provided();
        if !pending.is_empty() {
            x += "  <pending-return-parameters>\n";
            for p in pending {
                x += &format!("    <return-parameter name=\"{}\"/>\n", esc(&p));
            }
            x += "  </pending-return-parameters>\n";
        }
    }
    x += "</instance>\n";
    Ok(x)
}

/// XML escaping for text and double-quoted attributes.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Ruby `Time#to_s` in UTC: `2012-03-05 14:22:01 +0000`.
pub fn time_to_s(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} +0000")
}

/// Ruby `DateTime#to_s` in UTC: `2012-03-05T14:22:01+00:00`.
pub fn datetime_to_s(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}+00:00")
}

/// RFC 7231 IMF-fixdate, as Rack::File sends `Last-Modified`.
pub fn http_date(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d, h, mi, s) = civil(secs);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][((secs / 86_400) % 7) as usize];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(mo as usize).saturating_sub(1).min(11)];
    format!("{weekday}, {d:02} {month} {y:04} {h:02}:{mi:02}:{s:02} GMT")
}

/// Seconds since the epoch to (year, month, day, hour, minute, second), proleptic Gregorian.
fn civil(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruby_timestamp_formats() {
        assert_eq!(time_to_s(0), "1970-01-01 00:00:00 +0000");
        assert_eq!(datetime_to_s(1_330_957_321), "2012-03-05T14:22:01+00:00");
        assert_eq!(time_to_s(951_782_400), "2000-02-29 00:00:00 +0000");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    }
}
