//! The human table of dead letters (the CLI's default output), times in UTC. Only the
//! redacted [`Letter`] fields are shown.

use super::{Item, Letter};

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
}
