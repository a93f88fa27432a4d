//! Random and mutated inputs never make `MrcFile::open` or any reader panic:
//! every outcome is `Ok` or an `Err`. Failing inputs found here are kept as
//! named regression tests at the end of the file.

/// In a module so every test path contains "mrc" (`cargo test -p cryoforge-io mrc`).
mod mrc_fuzz {

    use cryoforge_io::mrc::{write_volume, MrcFile};
    use proptest::prelude::*;
    use std::path::Path;

    /// Open the file both ways and call every reader; panics are the only failure.
    fn exercise(path: &Path) {
        for opened in [MrcFile::open(path), MrcFile::open_unmapped(path)] {
            let f = match opened {
                Ok(f) => f,
                Err(e) => {
                    // Errors must name the file.
                    assert!(e.to_string().contains("case.mrc"), "{e}");
                    continue;
                }
            };
            let h = f.header();
            let _ = (h.voxel_size(), h.voxel_size_opt(), h.stats_set(), h.to_bytes());
            let _ = (f.voxel_size(), f.origin(), f.n_images(), f.mode());
            let _ = f.read_volume();
            let _ = f.read_volume_unchecked();
            let mut img = vec![0.0; f.image_len()];
            for i in 0..f.n_images().min(4) {
                let _ = f.read_image(i, &mut img);
                let _ = f.read_image_unchecked(i, &mut img);
                let _ = f.read_complex_section(i);
            }
            let _ = f.read_image(f.n_images(), &mut img);
            let mut two = vec![0.0; 2 * f.image_len()];
            let _ = f.read_images(f.n_images().saturating_sub(1), &mut two);
        }
    }

    fn run_case(bytes: &[u8]) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("case.mrc");
        std::fs::write(&p, bytes).unwrap();
        exercise(&p);
    }

    /// A valid little-endian float32 4×3×2 volume, the seed of the mutations.
    fn valid_file() -> Vec<u8> {
        static SEED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        SEED.get_or_init(|| {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("seed.mrc");
            let data: Vec<f32> = (0..24).map(|k| k as f32 - 7.5).collect();
            write_volume(&p, &data, [4, 3, 2], 1.2, [1.0, 2.0, 3.0]).unwrap();
            std::fs::read(p).unwrap()
        })
        .clone()
    }

    fn set_word(b: &mut [u8], word: usize, v: i32, big: bool) {
        let bytes = if big { v.to_be_bytes() } else { v.to_le_bytes() };
        b[word * 4..word * 4 + 4].copy_from_slice(&bytes);
    }

    /// Values that sit on the edges the validation has to get right.
    fn interesting_i32() -> impl Strategy<Value = i32> {
        prop_oneof![
            any::<i32>(),
            -3..20i32,
            Just(i32::MAX),
            Just(i32::MIN),
            Just(1 << 20),
            Just(1 << 30),
            Just(0x4444_0000u32 as i32),
            Just(cryoforge_io::mrc::IMOD_STAMP),
        ]
    }

    /// Word indices (0-based), weighted towards the ones that drive the layout.
    fn word_index() -> impl Strategy<Value = usize> {
        prop_oneof![0usize..4, 23usize..24, 0usize..56, 0usize..256]
    }

    fn config() -> ProptestConfig {
        // No persistence file: regressions are kept as the named tests below.
        // The case count is proptest's default (256), or PROPTEST_CASES for long runs.
        ProptestConfig { failure_persistence: None, ..ProptestConfig::default() }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
            run_case(&bytes);
        }

        #[test]
        fn mutated_headers_never_panic(
            words in prop::collection::vec((word_index(), interesting_i32()), 0..6),
            flips in prop::collection::vec((0usize..1120, any::<u8>()), 0..6),
            big in any::<bool>(),
            resize in prop_oneof![Just(None), (0usize..1200).prop_map(Some)],
        ) {
            let mut b = valid_file();
            if big {
                // Re-encode the numeric header words big-endian (not the byte
                // strings exttyp, "MAP ", stamp) and stamp the file big-endian.
                for w in (0..56).filter(|w| ![26, 52, 53].contains(w)) {
                    let v = i32::from_le_bytes([b[w * 4], b[w * 4 + 1], b[w * 4 + 2], b[w * 4 + 3]]);
                    set_word(&mut b, w, v, true);
                }
                b[212..216].copy_from_slice(&[0x11, 0x11, 0, 0]);
            }
            for (w, v) in words {
                set_word(&mut b, w, v, big);
            }
            for (at, v) in flips {
                if at < b.len() {
                    b[at] = v;
                }
            }
            if let Some(len) = resize {
                b.resize(len.max(1024).min(b.len() + 200), 0x5a);
            }
            run_case(&b);
        }

        /// Plausible headers (small dims, a known mode, any extension) over data of
        /// nearly the right length, so the readers themselves run on random bytes.
        #[test]
        fn plausible_headers_with_random_data_never_panic(
            dims in (1i32..9, 1i32..9, 1i32..5),
            mode in prop_oneof![Just(0), Just(1), Just(2), Just(4), Just(6), Just(12)],
            nsymbt in 0i32..100,
            big in any::<bool>(),
            imod in any::<bool>(),
            slack in -2i64..3,
            seed in prop::collection::vec(any::<u8>(), 1..64),
        ) {
            let mut b = vec![0u8; 1024];
            for (w, v) in [(0, dims.0), (1, dims.1), (2, dims.2), (3, mode), (23, nsymbt)] {
                set_word(&mut b, w, v, big);
            }
            if imod {
                set_word(&mut b, 38, cryoforge_io::mrc::IMOD_STAMP, big);
            }
            b[212] = if big { 0x11 } else { 0x44 };
            let bpv: i64 = match mode { 0 => 1, 1 | 6 | 12 => 2, 2 => 4, _ => 8 };
            let len = nsymbt as i64 + dims.0 as i64 * dims.1 as i64 * dims.2 as i64 * bpv + slack;
            // Data bytes cycle through the seed, which often spells NaN or Inf.
            b.extend((0..len.max(0) as usize).map(|k| seed[k % seed.len()]));
            run_case(&b);
        }
    }

    // ---------------------------------------------------------------------------
    // Named regressions (hand-picked corner cases; add any proptest failure here)
    // ---------------------------------------------------------------------------

    #[test]
    fn regression_all_ones_header() {
        run_case(&[0xff; 1024]);
    }

    #[test]
    fn regression_all_zero_header() {
        run_case(&[0; 1024]);
    }

    #[test]
    fn regression_nsymbt_max_with_valid_dims() {
        let mut b = valid_file();
        set_word(&mut b, 23, i32::MAX, false);
        run_case(&b);
    }

    #[test]
    fn regression_dims_product_overflows_u64() {
        let mut b = valid_file();
        for w in 0..3 {
            set_word(&mut b, w, i32::MAX, false);
        }
        set_word(&mut b, 3, 4, false);
        run_case(&b);
    }

    #[test]
    fn regression_nlabl_out_of_range() {
        let mut b = valid_file();
        set_word(&mut b, 55, i32::MIN, false);
        run_case(&b);
        set_word(&mut b, 55, 1000, false);
        run_case(&b);
    }
}
