//! The daemon's one wall-clock time stamp: nanoseconds since the Unix epoch, as CRI carries
//! `created_at`, `started_at`, `finished_at` and every `timestamp`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the Unix epoch; 0 for a clock set before 1970.
pub fn now_ns() -> i64 {
    unix_ns(SystemTime::now())
}

/// `t` in nanoseconds since the Unix epoch; 0 before it, `i64::MAX` past year 2262.
pub fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn time_stamps_are_unix_nanoseconds() {
        assert_eq!(unix_ns(UNIX_EPOCH + Duration::new(2, 5)), 2_000_000_005);
        assert_eq!(unix_ns(UNIX_EPOCH - Duration::from_secs(1)), 0);
        let before = now_ns();
        assert!(before > 1_600_000_000_000_000_000, "{before}");
        assert!(now_ns() >= before);
    }
}
