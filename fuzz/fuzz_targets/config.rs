//! Any text given to the JSON config parser: an error or a valid config, never
//! a crash; a parsed config survives a JSON round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = flowlab::train::TrainConfig::from_json(text) {
        let again = flowlab::train::TrainConfig::from_json(&cfg.to_json());
        assert_eq!(again.ok(), Some(cfg));
    }
});
