//! Any bytes given to the IDX reader (raw or gzipped): an error or images, never a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(idx) = flowlab::data::idx::parse_idx(data, std::path::Path::new("fuzz.idx")) {
        let _ = idx.dims.iter().product::<usize>();
    }
});
