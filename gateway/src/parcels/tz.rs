//! Time zones of sites: validating an IANA name and showing an instant in it (the expiry in a
//! recipient's notice is in the site's local time).

use chrono::TimeZone;
use locker_schemas::Millis;

/// Whether `name` is an IANA time zone the gateway knows.
pub fn valid(name: &str) -> bool {
    name.parse::<chrono_tz::Tz>().is_ok()
}

/// `at` in the time zone `name` as `2026-12-03 18:00 CET`; `None` for an unknown zone.
pub fn local_time(at: Millis, name: &str) -> Option<String> {
    let tz: chrono_tz::Tz = name.parse().ok()?;
    let t = tz.timestamp_millis_opt(i64::try_from(at).ok()?).single()?;
    Some(t.format("%Y-%m-%d %H:%M %Z").to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_times_in_the_sites_zone() {
        assert!(super::valid("Europe/Berlin"));
        assert!(!super::valid("Mars/Olympus"));
        // 2026-12-03T17:00:00Z
        let t = 1_796_317_200_000;
        assert_eq!(
            super::local_time(t, "Europe/Berlin").as_deref(),
            Some("2026-12-03 18:00 CET")
        );
        assert_eq!(
            super::local_time(t, "UTC").as_deref(),
            Some("2026-12-03 17:00 UTC")
        );
    }
}
