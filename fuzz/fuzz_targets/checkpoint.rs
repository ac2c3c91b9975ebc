//! Any bytes given to the checkpoint loader: an error or a checkpoint, never a
//! crash, and a loaded checkpoint rebuilds its model or says why not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.safetensors");
    let dev = candle_core::Device::Cpu;
    if let Ok(ck) = flowlab::checkpoint::Checkpoint::from_bytes(data, path, &dev) {
        let _ = ck.history(path);
        let _ = ck.model(&dev, true, path);
    }
});
