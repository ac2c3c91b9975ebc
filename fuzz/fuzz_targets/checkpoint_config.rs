//! A real, correctly checksummed checkpoint whose stored configuration (and
//! sample shape) is replaced by fuzzed JSON: loading it and rebuilding its
//! model must give an error or a model, never a crash or a huge allocation.
//! (The plain checkpoint target rarely gets past the CRC32 check.)
#![no_main]

use libfuzzer_sys::fuzz_target;

const SEED: &[u8] = include_bytes!("../seeds/checkpoint/tiny.safetensors");

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("fuzz.safetensors");
    let dev = candle_core::Device::Cpu;
    let Ok(mut ck) = flowlab::checkpoint::Checkpoint::from_bytes(SEED, path, &dev) else {
        return;
    };
    // "config JSON | sample shape": the shape as comma-separated sizes.
    let (config, shape) = text.split_once('|').unwrap_or((text, "2"));
    let Ok(cfg) = flowlab::train::TrainConfig::from_json(config) else {
        return;
    };
    let shape: Vec<usize> = shape
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .take(4)
        .collect();
    if shape.is_empty() {
        return;
    }
    ck.meta.config = cfg;
    ck.meta.sample_shape = shape;
    let Ok(bytes) = ck.to_bytes() else {
        return;
    };
    if let Ok(again) = flowlab::checkpoint::Checkpoint::from_bytes(&bytes, path, &dev) {
        let _ = again.model(&dev, true, path);
    }
});
