//! Headers for scheduler-made messages, without the per-message cost of chrono's
//! formatter: one `task_destination` per task is on the hot path.
//!
//! The scheduler owns its `Session`, so after taking the session's identity once it
//! numbers its messages itself, in the same `{session}_{pid}_{n}` form Python uses.

use ippx_protocol::header::Header;
use ippx_protocol::Session;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) struct Stamp {
    prefix: String,
    counter: u64,
    username: String,
    session: String,
    version: String,
}

impl Stamp {
    /// Takes the session's identity from one header it makes (which uses up its own
    /// counter value 0, so numbering here starts at 1 and never collides).
    pub fn new(session: &mut Session) -> Stamp {
        let probe = session.new_header("probe");
        let prefix = match probe.msg_id.rfind('_') {
            Some(i) => probe.msg_id[..=i].to_owned(),
            None => format!("{}_{}_", probe.session, std::process::id()),
        };
        Stamp { prefix, counter: 1, username: probe.username, session: probe.session, version: probe.version }
    }

    pub fn header(&mut self, msg_type: &str) -> Header {
        let mut msg_id = String::with_capacity(self.prefix.len() + 8);
        msg_id.push_str(&self.prefix);
        let _ = write!(msg_id, "{}", self.counter);
        self.counter += 1;
        Header {
            msg_id,
            msg_type: msg_type.to_owned(),
            username: self.username.clone(),
            session: self.session.clone(),
            date: iso_now(),
            version: self.version.clone(),
        }
    }
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub(crate) fn iso_now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    iso_from_unix(d.as_secs(), d.subsec_micros())
}

/// Formats a Unix time (seconds + microseconds) like `datetime::format_iso`.
pub(crate) fn iso_from_unix(secs: u64, micros: u32) -> String {
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut b = [0u8; 27];
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (0..width).rev() {
            b[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, sod / 3600);
    put(14, 2, sod / 60 % 60);
    put(17, 2, sod % 60);
    put(20, 6, u64::from(micros.min(999_999)));
    b[4] = b'-';
    b[7] = b'-';
    b[10] = b'T';
    b[13] = b':';
    b[16] = b':';
    b[19] = b'.';
    b[26] = b'Z';
    b.iter().map(|&c| c as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ippx_protocol::{datetime, Packer, SessionConfig};

    #[test]
    fn matches_the_protocol_formatter() {
        for (s, us) in
            [(0u64, 0u32), (951_782_400, 1), (1_709_164_800, 999_999), (1_795_500_752, 605_000), (4_102_444_799, 123_456), (1_234_567_890, 42)]
        {
            let ours = iso_from_unix(s, us);
            let t = datetime::parse_iso(&ours).expect("parses");
            assert_eq!((t.timestamp() as u64, t.timestamp_subsec_micros()), (s, us), "{ours}");
            assert_eq!(datetime::format_iso(&t), ours);
        }
        let now = iso_now();
        assert!(datetime::looks_like_iso(&now), "{now}");
    }

    #[test]
    fn ids_are_python_shaped_and_unique() {
        let mut s = Session::new(SessionConfig::new(b"k".to_vec(), Packer::Json)).expect("session");
        let mut st = Stamp::new(&mut s);
        let a = st.header("x");
        let b = st.header("x");
        assert_ne!(a.msg_id, b.msg_id);
        assert_eq!(a.msg_id, format!("{}_{}_1", s.session_id(), std::process::id()));
        assert_eq!(a.session, s.session_id());
        assert_eq!(a.version, "5.4");
        assert!(datetime::looks_like_iso(&a.date));
    }
}
