//! Image reference normalisation never panics, and what it returns normalises to itself
//! (kubelet compares the names ferrio reports with the ones it asked for).
#![no_main]

use ferrio::image::reference::normalize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = normalize(s) {
        let again = normalize(&r.to_string())
            .unwrap_or_else(|e| panic!("{s:?} normalised to {r}, which does not parse: {e}"));
        assert_eq!(again, r, "normalising {s:?} twice differs");
        assert!(!r.name().is_empty());
    }
});
