//! Run-time dispatch of plain Rust kernels to AVX-512 or AVX2 code.
//!
//! A kernel is written once as an `#[inline(always)]` function over slices; the
//! [`simd_dispatch!`] macro compiles it again inside functions with those target
//! features enabled and picks the best one the CPU has (the check is cached by
//! the standard library). Sums are written with [`LANES`] independent
//! accumulators so that they vectorise without reassociation flags.

/// Independent accumulators in a vectorisable sum (one AVX-512 register).
pub(crate) const LANES: usize = 16;

/// Defines `fn $name(args) -> ret` that runs `$kernel(args)` compiled for the
/// best SIMD level of the CPU.
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $kernel:path) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn v4($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked at run time).
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
                    return unsafe { v3($($arg),*) };
                }
            }
            $kernel($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

/// Σ x, with [`LANES`] accumulators.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    chunks.remainder().iter().sum::<f32>() + acc.iter().sum::<f32>()
}
