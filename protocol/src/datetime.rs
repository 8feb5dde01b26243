//! ISO-8601 timestamps as ipyparallel writes and reads them.
//!
//! Emit `YYYY-MM-DDTHH:MM:SS.ffffffZ` always; accept every form Python's
//! `jupyter_client.jsonutil` regex accepts: 1–6 fractional digits or none, and `Z`,
//! `±HH:MM`, `±HHMM` or no offset (read as UTC).

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

pub type Timestamp = DateTime<Utc>;

pub fn now() -> Timestamp {
    Utc::now()
}

/// Renders with exactly six fractional digits and `Z`, so that a value read back and
/// queried for equality matches to the microsecond.
pub fn format_iso(t: &Timestamp) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses a timestamp in any form Python sends; `None` for anything else.
pub fn parse_iso(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    // Shape check mirrors Python's ISO8601 regex before handing pieces to chrono.
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let date = NaiveDate::from_ymd_opt(digits(0..4)? as i32, digits(5..7)?, digits(8..10)?)?;
    let (h, m, sec) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let mut rest = &s[19..];
    let mut micros = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 6 {
            return None;
        }
        let padded = format!("{:0<6}", &frac[..n]);
        micros = padded.parse().ok()?;
        rest = &frac[n..];
    }
    let naive = NaiveDateTime::new(date, NaiveTime::from_hms_micro_opt(h, m, sec, micros)?);
    let offset_secs = match rest {
        "" | "Z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let body = rest[1..].replace(':', "");
            if body.len() != 4 || !body.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let hh: i32 = body[..2].parse().ok()?;
            let mm: i32 = body[2..].parse().ok()?;
            sign * (hh * 3600 + mm * 60)
        }
    };
    let off = FixedOffset::east_opt(offset_secs)?;
    let local = off.from_local_datetime(&naive).single()?;
    Some(local.with_timezone(&Utc))
}

/// True when `s` has the shape of a timestamp Python would turn into a datetime.
pub fn looks_like_iso(s: &str) -> bool {
    parse_iso(s).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_python_form_parses_to_the_same_instant() {
        let want = parse_iso("2026-11-25T07:32:32.605000Z");
        assert!(want.is_some());
        for s in [
            "2026-11-25T07:32:32.605Z",
            "2026-11-25T07:32:32.605000+00:00",
            "2026-11-25T07:32:32.605+0000",
            "2026-11-25T07:32:32.605000",
            "2026-11-25T08:32:32.605000+01:00",
        ] {
            assert_eq!(parse_iso(s), want, "{s}");
        }
        assert_eq!(parse_iso("2026-11-25T07:32:32Z").map(|t| format_iso(&t)), Some("2026-11-25T07:32:32.000000Z".to_owned()));
    }

    #[test]
    fn rejects_non_dates() {
        for s in ["", "hello", "2026-11-25", "2026-11-25T07:32:32.1234567Z", "2026-13-25T07:32:32Z", "2026-11-25T07:32:32.Z", "2026-11-25T07:32:32+1"]
        {
            assert!(parse_iso(s).is_none(), "{s}");
        }
    }

    #[test]
    fn format_round_trips_microseconds() {
        let s = "2026-01-02T03:04:05.000006Z";
        assert_eq!(parse_iso(s).map(|t| format_iso(&t)).as_deref(), Some(s));
    }
}
