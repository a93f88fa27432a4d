//! MRC2014 reading and writing: round trips, every mode in both byte orders,
//! tolerated quirks of real files, and every bad input with its error message.
//! Files are crafted byte by byte here, independently of the library's writer.

/// In a module so every test path contains "mrc" (`cargo test -p cryoforge-io mrc`).
mod mrc_io {

    use cryoforge_io::mrc::{
        write_stack, write_volume, ByteOrder, MrcFile, MrcHeader, MrcMode, MrcStackWriter, IMOD_STAMP,
    };
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::path::{Path, PathBuf};

    // ---------------------------------------------------------------------------
    // Crafting files by hand
    // ---------------------------------------------------------------------------

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum O {
        L,
        B,
    }

    fn u32b(o: O, v: u32) -> [u8; 4] {
        match o {
            O::L => v.to_le_bytes(),
            O::B => v.to_be_bytes(),
        }
    }

    /// A raw 1024-byte header written word by word (1-based words, as in the spec).
    struct Hdr {
        b: [u8; 1024],
        o: O,
    }

    impl Hdr {
        /// A complete MRC2014 header: dims, mode, m = n, cell = n Å, angles 90,
        /// axes 1,2,3, "MAP ", the machine stamp of `o`, nversion 20140.
        fn new(o: O, nx: i32, ny: i32, nz: i32, mode: i32) -> Hdr {
            let mut h = Hdr { b: [0; 1024], o };
            h.i(1, nx).i(2, ny).i(3, nz).i(4, mode).i(8, nx).i(9, ny).i(10, nz);
            h.f(11, nx as f32).f(12, ny as f32).f(13, nz as f32).f(14, 90.0).f(15, 90.0).f(16, 90.0);
            h.i(17, 1).i(18, 2).i(19, 3).i(28, 20140);
            h.raw(208, b"MAP ");
            h.raw(212, if o == O::L { &[0x44, 0x44, 0, 0] } else { &[0x11, 0x11, 0, 0] });
            h
        }
        fn i(&mut self, word: usize, v: i32) -> &mut Hdr {
            let o = self.o;
            self.raw((word - 1) * 4, &u32b(o, v as u32))
        }
        fn f(&mut self, word: usize, v: f32) -> &mut Hdr {
            let o = self.o;
            self.raw((word - 1) * 4, &u32b(o, v.to_bits()))
        }
        fn raw(&mut self, at: usize, bytes: &[u8]) -> &mut Hdr {
            self.b[at..at + bytes.len()].copy_from_slice(bytes);
            self
        }
    }

    fn write_file(dir: &Path, name: &str, h: &Hdr, ext: &[u8], data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        let mut all = h.b.to_vec();
        all.extend_from_slice(ext);
        all.extend_from_slice(data);
        std::fs::write(&p, all).unwrap();
        p
    }

    /// The error's message, asserting it names the file and every `needle`.
    fn err_with<T: std::fmt::Debug>(r: cryoforge_io::Result<T>, path: &Path, needles: &[&str]) -> String {
        let msg = r.expect_err("expected an error").to_string();
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(msg.contains(&*name), "error does not name the file {name}: {msg}");
        for n in needles {
            assert!(msg.contains(n), "error does not mention {n:?}: {msg}");
        }
        msg
    }

    fn random_vec(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.gen_range(-1000.0f32..1000.0) * rng.gen::<f32>().powi(3)).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn stats64(v: &[f32]) -> (f64, f64, f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let min = v.iter().fold(f64::INFINITY, |a, &x| a.min(x as f64));
        let max = v.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
        (min, max, mean, var.sqrt())
    }

    fn close(a: f32, b: f64, rel: f64) -> bool {
        (a as f64 - b).abs() <= rel * b.abs().max(1e-3)
    }

    // ---------------------------------------------------------------------------
    // Round trips
    // ---------------------------------------------------------------------------

    #[test]
    fn volume_round_trip_is_bit_exact_with_header_fields() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vol.mrc");
        let (nx, ny, nz) = (17, 13, 11);
        let data = random_vec(1, nx * ny * nz);
        write_volume(&p, &data, [nx, ny, nz], 1.37, [-10.5, 3.0, 7.25]).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1024 + 4 * data.len() as u64);

        let f = MrcFile::open(&p).unwrap();
        assert_eq!((f.nx(), f.ny(), f.nz(), f.n_images()), (nx, ny, nz, nz));
        assert_eq!(f.mode(), MrcMode::Float32);
        assert_eq!(f.byte_order(), ByteOrder::Little);
        assert_eq!(bits(&f.read_volume().unwrap()), bits(&data));
        assert_eq!(f.voxel_size(), [1.37; 3]);
        assert_eq!(f.origin(), [-10.5, 3.0, 7.25]);

        let h = f.header();
        assert_eq!((h.ispg, h.mode, h.nsymbt, h.nversion), (1, 2, 0, 20140));
        assert_eq!((h.mx, h.my, h.mz), (17, 13, 11));
        assert_eq!((h.mapc, h.mapr, h.maps), (1, 2, 3));
        assert_eq!(h.cellb, [90.0; 3]);
        assert_eq!(&h.map, b"MAP ");
        assert_eq!(h.machst, [0x44, 0x44, 0, 0]);
        assert_eq!(h.nlabl, 1);
        assert!(h.labels[0].starts_with("cryoforge"), "{:?}", h.labels);
        assert!(h.stats_set() && !h.is_stack());
        let (min, max, mean, rms) = stats64(&data);
        assert_eq!((h.dmin as f64, h.dmax as f64), (min, max));
        assert!(close(h.dmean, mean, 1e-5) && close(h.rms, rms, 1e-5), "{h:?} vs {mean} {rms}");
    }

    #[test]
    fn stack_round_trip_is_bit_exact_mapped_and_unmapped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("stack.mrcs");
        let (nx, ny, n) = (32, 24, 10);
        let data = random_vec(2, nx * ny * n);
        write_stack(&p, &data, nx, ny, n, 0.83).unwrap();

        for f in [MrcFile::open(&p).unwrap(), MrcFile::open_unmapped(&p).unwrap()] {
            assert_eq!((f.nx(), f.ny(), f.n_images(), f.image_len()), (nx, ny, n, nx * ny));
            assert_eq!(f.header().ispg, 0);
            assert!(f.header().is_stack());
            // 0.83·10 has no f32 cell that divides back to exactly 0.83: one ulp off is the best.
            assert!(
                f.voxel_size().iter().all(|&v| (v - 0.83).abs() <= 0.83 * f32::EPSILON),
                "{:?}",
                f.voxel_size()
            );
            assert_eq!(f.origin(), [0.0; 3]);
            let mut img = vec![0.0; nx * ny];
            for i in 0..n {
                f.read_image(i, &mut img).unwrap();
                assert_eq!(bits(&img), bits(&data[i * nx * ny..(i + 1) * nx * ny]), "image {i}");
            }
            let mut batch = vec![0.0; 4 * nx * ny];
            f.read_images(3, &mut batch).unwrap();
            assert_eq!(bits(&batch), bits(&data[3 * nx * ny..7 * nx * ny]));
            assert_eq!(bits(&f.read_volume().unwrap()), bits(&data));
        }
    }

    #[test]
    fn header_bytes_round_trip_in_both_orders() {
        let mut h = Hdr::new(O::B, 7, 5, 3, 1);
        h.f(50, 1.5).f(51, -2.0).f(52, 3.25).i(23, 1).f(20, -4.0).f(21, 9.0).f(22, 0.5).f(55, 2.5);
        h.raw(104, b"SERI").i(56, 2).raw(224, b"first label").raw(304, b"second label");
        let parsed = MrcHeader::from_bytes(&h.b);
        assert_eq!(parsed.byte_order, ByteOrder::Big);
        assert_eq!((parsed.nx, parsed.ny, parsed.nz, parsed.mode), (7, 5, 3, 1));
        assert_eq!(parsed.origin, [1.5, -2.0, 3.25]);
        assert_eq!((parsed.dmin, parsed.dmax, parsed.dmean, parsed.rms), (-4.0, 9.0, 0.5, 2.5));
        assert_eq!(&parsed.exttyp, b"SERI");
        assert_eq!(parsed.labels, vec!["first label".to_string(), "second label".to_string()]);
        assert_eq!(parsed.to_bytes()[..], h.b[..], "big-endian header re-encodes byte for byte");

        let mut little = parsed.clone();
        little.byte_order = ByteOrder::Little;
        let again = MrcHeader::from_bytes(&little.to_bytes());
        assert_eq!(again.byte_order, ByteOrder::Little);
        assert_eq!(MrcHeader { machst: parsed.machst, byte_order: ByteOrder::Big, ..again }, parsed);
    }

    // ---------------------------------------------------------------------------
    // Streaming writer
    // ---------------------------------------------------------------------------

    #[test]
    fn stack_writer_matches_write_stack() {
        let d = tempfile::tempdir().unwrap();
        let (nx, ny, n) = (20, 16, 9);
        let data = random_vec(3, nx * ny * n);
        let a = d.path().join("a.mrcs");
        let b = d.path().join("b.mrcs");
        write_stack(&a, &data, nx, ny, n, 2.5).unwrap();

        let mut w = MrcStackWriter::create(&b, nx, ny, 2.5).unwrap();
        assert!(w.is_empty());
        w.push(&data[..nx * ny]).unwrap();
        w.push_batch(&data[nx * ny..5 * nx * ny]).unwrap();
        for img in data[5 * nx * ny..].chunks(nx * ny) {
            w.push(img).unwrap();
        }
        assert_eq!(w.len(), n);
        assert!(!b.exists(), "target must not appear before finish");
        w.finish().unwrap();

        let (ra, rb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(ra[1024..], rb[1024..], "voxel data identical");
        let (ha, hb) = (MrcFile::open(&a).unwrap(), MrcFile::open(&b).unwrap());
        let (ha, hb) = (ha.header(), hb.header());
        assert_eq!((hb.nz, hb.mz, hb.ispg), (n as i32, n as i32, 0));
        assert_eq!(hb.voxel_size(), [2.5; 3]);
        assert_eq!((ha.dmin, ha.dmax), (hb.dmin, hb.dmax));
        assert!(close(hb.dmean, ha.dmean as f64, 1e-5) && close(hb.rms, ha.rms as f64, 1e-5));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2, "no temporary file left");
    }

    #[test]
    fn stack_writer_dropped_without_finish_leaves_target_untouched() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keep.mrcs");
        std::fs::write(&p, b"previous content").unwrap();
        {
            let mut w = MrcStackWriter::create(&p, 4, 4, 1.0).unwrap();
            w.push(&[1.0; 16]).unwrap();
        }
        assert_eq!(std::fs::read(&p).unwrap(), b"previous content");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "temporary file removed");
    }

    #[test]
    fn stack_writer_refuses_empty_stack_and_bad_images() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("empty.mrcs");
        let w = MrcStackWriter::create(&p, 4, 3, 1.0).unwrap();
        err_with(w.finish(), &p, &["nz", "no images"]);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);

        let p = d.path().join("bad.mrcs");
        let mut w = MrcStackWriter::create(&p, 4, 3, 1.0).unwrap();
        w.push(&[0.5; 12]).unwrap();
        w.push(&[1.5; 12]).unwrap();
        let mut bad = vec![2.0; 24];
        bad[12 + 4 + 3] = f32::NAN; // second image of the batch: stack image 3, x=3, y=1
        err_with(w.push_batch(&bad), &p, &["index 3", "x=3, y=1", "NaN"]);
        err_with(w.push(&[1.0; 11]), &p, &["index 2", "11"]);
        err_with(w.push_batch(&[1.0; 13]), &p, &["index 2", "13"]);
        w.finish().unwrap();
        let f = MrcFile::open(&p).unwrap();
        assert_eq!(f.n_images(), 2, "the rejected batch was not written");
        assert_eq!(f.read_volume().unwrap(), [[0.5; 12], [1.5; 12]].concat());

        err_with(
            MrcStackWriter::create(d.path().join("z.mrcs"), 0, 3, 1.0),
            &d.path().join("z.mrcs"),
            &["nx"],
        );
        let q = d.path().join("apix.mrcs");
        err_with(MrcStackWriter::create(&q, 3, 3, f32::NAN), &q, &["voxel_size"]);
    }

    #[test]
    fn writers_refuse_bad_data_and_leave_no_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.mrc");
        let mut data = vec![1.0f32; 4 * 3 * 2];
        err_with(write_volume(&p, &data[..23], [4, 3, 2], 1.0, [0.0; 3]), &p, &["data", "23"]);
        err_with(write_volume(&p, &data, [4, 3, 2], 0.0, [0.0; 3]), &p, &["voxel_size"]);
        err_with(write_volume(&p, &data, [4, 3, 2], 1.0, [f32::NAN, 0.0, 0.0]), &p, &["origin"]);
        err_with(write_volume(&p, &[], [0, 3, 2], 1.0, [0.0; 3]), &p, &["nx"]);
        data[12 + 2 * 4 + 1] = f32::INFINITY; // section 1, x=1, y=2
        err_with(write_volume(&p, &data, [4, 3, 2], 1.0, [0.0; 3]), &p, &["index 1", "x=1, y=2", "inf"]);
        err_with(write_stack(&p, &data[..12], 4, 3, 0, 1.0), &p, &["nz"]);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "nothing written");
    }

    // ---------------------------------------------------------------------------
    // Modes and byte orders
    // ---------------------------------------------------------------------------

    const NX: i32 = 5;
    const NY: i32 = 3;
    const NZ: i32 = 2;
    const N: usize = (NX * NY * NZ) as usize;

    /// File bytes and the f32 values they must read as, for a real mode.
    fn mode_data(mode: i32, o: O) -> (Vec<u8>, Vec<f32>) {
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        for k in 0..N as i64 {
            match mode {
                0 => {
                    let v = ((k * 37 + 100) % 256) as u8; // covers both signs as int8
                    bytes.push(v);
                    want.push(v as i8 as f32);
                }
                1 => {
                    let v = (k * 2731 - 40000) as i16;
                    bytes.extend_from_slice(&if o == O::L { v.to_le_bytes() } else { v.to_be_bytes() });
                    want.push(v as f32);
                }
                6 => {
                    let v = (k * 2231 + 1) as u16;
                    bytes.extend_from_slice(&if o == O::L { v.to_le_bytes() } else { v.to_be_bytes() });
                    want.push(v as f32);
                }
                12 => {
                    let v = half::f16::from_f32(k as f32 * 0.37 - 3.0);
                    bytes.extend_from_slice(&if o == O::L { v.to_le_bytes() } else { v.to_be_bytes() });
                    want.push(v.to_f32());
                }
                2 => {
                    let v = k as f32 * 1.1 - 5.0;
                    bytes.extend_from_slice(&u32b(o, v.to_bits()));
                    want.push(v);
                }
                _ => unreachable!(),
            }
        }
        (bytes, want)
    }

    fn check_real_mode(dir: &Path, mode: i32, o: O, h: &Hdr, want_mode: MrcMode, want: &[f32], bytes: &[u8]) {
        let p = write_file(dir, &format!("m{mode}_{o:?}_{want_mode:?}.mrc"), h, &[], bytes);
        let f = MrcFile::open(&p).unwrap();
        assert_eq!(f.mode(), want_mode);
        assert_eq!(f.byte_order(), if o == O::L { ByteOrder::Little } else { ByteOrder::Big });
        assert_eq!(f.read_volume().unwrap(), want, "mode {mode} {o:?}");
        let mut img = vec![0.0; (NX * NY) as usize];
        f.read_image(1, &mut img).unwrap();
        assert_eq!(img, want[img.len()..], "mode {mode} {o:?} image 1");
        let g = MrcFile::open_unmapped(&p).unwrap();
        assert_eq!(g.read_volume().unwrap(), want, "mode {mode} {o:?} unmapped");
    }

    #[test]
    fn every_real_mode_reads_in_both_byte_orders() {
        let d = tempfile::tempdir().unwrap();
        for o in [O::L, O::B] {
            for (mode, kind) in [
                (0, MrcMode::Int8),
                (1, MrcMode::Int16),
                (2, MrcMode::Float32),
                (6, MrcMode::Uint16),
                (12, MrcMode::Float16),
            ] {
                let (bytes, want) = mode_data(mode, o);
                check_real_mode(d.path(), mode, o, &Hdr::new(o, NX, NY, NZ, mode), kind, &want, &bytes);
            }
        }
    }

    #[test]
    fn mode0_is_unsigned_only_when_imod_says_so() {
        let d = tempfile::tempdir().unwrap();
        for o in [O::L, O::B] {
            let (bytes, signed) = mode_data(0, o);
            let unsigned: Vec<f32> = bytes.iter().map(|&b| b as f32).collect();
            let mut h = Hdr::new(o, NX, NY, NZ, 0);
            h.i(39, IMOD_STAMP).i(40, 0); // IMOD, bit 0 clear: unsigned
            check_real_mode(d.path(), 0, o, &h, MrcMode::Uint8, &unsigned, &bytes);
            h.i(40, 1); // IMOD, bit 0 set: signed
            check_real_mode(d.path(), 0, o, &h, MrcMode::Int8, &signed, &bytes);
            h.i(39, 12345).i(40, 0); // flags without the stamp mean nothing
            check_real_mode(d.path(), 0, o, &h, MrcMode::Int8, &signed, &bytes);
        }
    }

    #[test]
    fn complex_mode_reads_pairs_in_both_byte_orders() {
        let d = tempfile::tempdir().unwrap();
        for o in [O::L, O::B] {
            let mut bytes = Vec::new();
            let mut want = Vec::new();
            for k in 0..N {
                let (re, im) = (k as f32 * 0.5 - 2.0, -(k as f32) * 1.25);
                bytes.extend_from_slice(&u32b(o, re.to_bits()));
                bytes.extend_from_slice(&u32b(o, im.to_bits()));
                want.push((re, im));
            }
            let p = write_file(d.path(), &format!("c_{o:?}.mrc"), &Hdr::new(o, NX, NY, NZ, 4), &[], &bytes);
            let f = MrcFile::open(&p).unwrap();
            assert_eq!(f.mode(), MrcMode::Complex64);
            let half = (NX * NY) as usize;
            assert_eq!(f.read_complex_section(0).unwrap(), want[..half]);
            assert_eq!(f.read_complex_section(1).unwrap(), want[half..]);
            err_with(f.read_complex_section(2), &p, &["index 2", "out of range"]);
            let mut img = vec![0.0; half];
            err_with(f.read_image(0, &mut img), &p, &["field mode", "complex"]);
            err_with(f.read_volume(), &p, &["field mode", "complex"]);

            let mut bad = bytes.clone();
            bad[(half + 7) * 8 + 4..(half + 7) * 8 + 8].copy_from_slice(&u32b(o, f32::NAN.to_bits()));
            let p = write_file(d.path(), &format!("cnan_{o:?}.mrc"), &Hdr::new(o, NX, NY, NZ, 4), &[], &bad);
            let f = MrcFile::open(&p).unwrap();
            err_with(f.read_complex_section(1), &p, &["index 1", "x=2, y=1", "NaN"]);
        }
        let p = write_file(d.path(), "real.mrc", &Hdr::new(O::L, 1, 1, 1, 2), &[], &[0; 4]);
        err_with(MrcFile::open(&p).unwrap().read_complex_section(0), &p, &["field mode", "not complex"]);
    }

    // ---------------------------------------------------------------------------
    // Tolerated quirks
    // ---------------------------------------------------------------------------

    #[test]
    fn extended_header_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let (bytes, want) = mode_data(2, O::L);
        let mut h = Hdr::new(O::L, NX, NY, NZ, 2);
        h.i(24, 240).raw(104, b"FEI1");
        let ext: Vec<u8> = (0..240).map(|k| (k * 7) as u8).collect();
        let p = write_file(d.path(), "ext.mrc", &h, &ext, &bytes);
        let f = MrcFile::open(&p).unwrap();
        assert_eq!(f.data_offset(), 1264);
        assert_eq!(&f.header().exttyp, b"FEI1");
        assert_eq!(f.read_volume().unwrap(), want);
    }

    #[test]
    fn old_style_headers_are_tolerated() {
        let d = tempfile::tempdir().unwrap();
        for o in [O::L, O::B] {
            let (bytes, want) = mode_data(2, o);
            let mut h = Hdr::new(o, NX, NY, NZ, 2);
            // nversion 0, no "MAP ", no machine stamp, unset stats and rms, mx = 0,
            // an odd exttyp and axis words of 0.
            h.i(28, 0).raw(208, &[0; 4]).raw(212, &[0; 4]).f(20, -1.0).f(21, -2.0).f(22, -3.0);
            h.f(55, -1.0).i(8, 0).raw(104, b"\xff\x00ab").i(17, 0).i(18, 0).i(19, 0);
            let p = write_file(d.path(), &format!("old_{o:?}.mrc"), &h, &[], &bytes);
            let f = MrcFile::open(&p).unwrap();
            assert_eq!(f.byte_order(), if o == O::L { ByteOrder::Little } else { ByteOrder::Big });
            let hd = f.header();
            assert!(!hd.stats_set() && !hd.has_map_stamp());
            assert_eq!(hd.nversion, 0);
            assert_eq!(f.voxel_size(), [1.0, 1.0, 1.0], "mx = 0 falls back to 1 Å");
            assert_eq!(hd.voxel_size_opt(), None);
            assert_eq!(f.read_volume().unwrap(), want);
        }
    }

    #[test]
    fn voxel_size_is_cell_over_m_per_axis() {
        let d = tempfile::tempdir().unwrap();
        let mut h = Hdr::new(O::L, 4, 2, 1, 2);
        h.i(8, 4).i(9, 2).i(10, 1).f(11, 6.0).f(12, 3.5).f(13, 0.0);
        let p = write_file(d.path(), "vs.mrc", &h, &[], &[0; 32]);
        let f = MrcFile::open(&p).unwrap();
        assert_eq!(f.voxel_size(), [1.5, 1.75, 1.0], "zero cell on z falls back to 1");
        assert_eq!(f.header().voxel_size_opt(), None);
    }

    /// Unstamped big-endian mode 0 with 256-multiple sides reads plausibly in
    /// both orders (256 swaps to 65536); the file size decides.
    #[test]
    fn unstamped_big_endian_mode0_is_told_apart_by_file_size() {
        let d = tempfile::tempdir().unwrap();
        let mut h = Hdr::new(O::B, 256, 256, 2, 0);
        h.raw(212, &[0; 4]);
        let data: Vec<u8> = (0..256 * 256 * 2).map(|k| (k % 251) as u8).collect();
        let p = write_file(d.path(), "be0.mrc", &h, &[], &data);
        let f = MrcFile::open(&p).unwrap();
        assert_eq!(f.byte_order(), ByteOrder::Big);
        assert_eq!((f.nx(), f.ny(), f.nz()), (256, 256, 2));
        let want: Vec<f32> = data.iter().map(|&b| b as i8 as f32).collect();
        assert_eq!(f.read_volume().unwrap(), want);
        // Without the file size, the tie goes to little-endian.
        assert_eq!(MrcHeader::from_bytes(&h.b).byte_order, ByteOrder::Little);
    }

    #[test]
    fn contradicted_machine_stamp_loses_to_the_header() {
        let d = tempfile::tempdir().unwrap();
        let (bytes, want) = mode_data(1, O::B);
        let mut h = Hdr::new(O::B, NX, NY, NZ, 1);
        h.raw(212, &[0x44, 0x41, 0, 0]); // says little-endian, but the words are big-endian
        let p = write_file(d.path(), "liar.mrc", &h, &[], &bytes);
        let f = MrcFile::open(&p).unwrap();
        assert_eq!(f.byte_order(), ByteOrder::Big);
        assert_eq!(f.read_volume().unwrap(), want);
    }

    // ---------------------------------------------------------------------------
    // Bad input: every error names the file and the field, index or numbers
    // ---------------------------------------------------------------------------

    #[test]
    fn missing_and_tiny_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nowhere.mrc");
        err_with(MrcFile::open(&p), &p, &["cannot open"]);
        let p = d.path().join("tiny.mrc");
        std::fs::write(&p, [0u8; 1000]).unwrap();
        err_with(MrcFile::open(&p), &p, &["1000 bytes", "1024"]);
        std::fs::write(&p, []).unwrap();
        err_with(MrcFile::open(&p), &p, &["0 bytes", "1024"]);
    }

    #[test]
    fn truncated_and_oversized_files() {
        let d = tempfile::tempdir().unwrap();
        let (bytes, _) = mode_data(2, O::L);
        let h = Hdr::new(O::L, NX, NY, NZ, 2);
        let p = write_file(d.path(), "short.mrc", &h, &[], &bytes[..bytes.len() - 4]);
        err_with(
            MrcFile::open(&p),
            &p,
            &["truncated", "header says 120 bytes of data", "file has 116", "5×3×2"],
        );
        let p = write_file(d.path(), "long.mrc", &h, &[], &[&bytes[..], &[0]].concat());
        err_with(
            MrcFile::open(&p),
            &p,
            &["oversized", "header says 120 bytes", "file has 121", "1 unexpected"],
        );
        let p = write_file(d.path(), "noimg.mrc", &h, &[], &[]);
        err_with(MrcFile::open(&p), &p, &["truncated", "file has 0"]);
        // Truncated data behind an extended header: the count excludes the extension.
        let mut hx = Hdr::new(O::L, NX, NY, NZ, 2);
        hx.i(24, 80);
        let p = write_file(d.path(), "shortext.mrc", &hx, &[0; 80], &bytes[..100]);
        err_with(MrcFile::open(&p), &p, &["truncated", "file has 100", "after 1104 header bytes"]);
    }

    #[test]
    fn unsupported_modes() {
        let d = tempfile::tempdir().unwrap();
        for mode in [3, 101, -1, 5, 13] {
            let p = write_file(
                d.path(),
                &format!("mode{mode}.mrc"),
                &Hdr::new(O::L, 2, 2, 1, mode),
                &[],
                &[0; 16],
            );
            err_with(MrcFile::open(&p), &p, &["field mode", &format!("unsupported mode {mode} ")]);
        }
    }

    #[test]
    fn absurd_dimensions() {
        let d = tempfile::tempdir().unwrap();
        let cases: [(&str, [i32; 3], &[&str]); 6] = [
            ("nx0.mrc", [0, 4, 4], &["field nx", "nx = 0"]),
            ("nyneg.mrc", [4, -5, 4], &["field ny", "ny = -5"]),
            ("nzneg.mrc", [4, 4, i32::MIN], &["field nz", "-2147483648"]),
            (
                "huge.mrc",
                [100_000, 100_000, 100_000],
                &["field nx, ny, nz", "absurd", "100000×100000×100000"],
            ),
            ("overflow.mrc", [i32::MAX; 3], &["field nx, ny, nz", "absurd"]),
            ("big.mrc", [16384, 16384, 1000], &["truncated", "header says 1073741824000 bytes"]),
        ];
        for (name, [nx, ny, nz], needles) in cases {
            let p = write_file(d.path(), name, &Hdr::new(O::L, nx, ny, nz, 2), &[], &[0; 64]);
            err_with(MrcFile::open(&p), &p, needles);
        }
        // Big-endian headers report the same values, decoded.
        let p = write_file(d.path(), "be_neg.mrc", &Hdr::new(O::B, 4, -7, 4, 2), &[], &[0; 64]);
        err_with(MrcFile::open(&p), &p, &["field ny", "ny = -7"]);
    }

    #[test]
    fn bad_extended_header_length() {
        let d = tempfile::tempdir().unwrap();
        let mut h = Hdr::new(O::L, 2, 2, 1, 2);
        h.i(24, -80);
        let p = write_file(d.path(), "negext.mrc", &h, &[], &[0; 16]);
        err_with(MrcFile::open(&p), &p, &["field nsymbt", "-80"]);
        h.i(24, 1 << 30);
        let p = write_file(d.path(), "longext.mrc", &h, &[], &[0; 16]);
        err_with(MrcFile::open(&p), &p, &["field nsymbt", "1073741824", "past the end"]);
    }

    #[test]
    fn non_finite_pixels_name_image_and_pixel() {
        let d = tempfile::tempdir().unwrap();
        let (nx, ny, n) = (6usize, 4usize, 5usize);
        let mut vals: Vec<f32> = (0..nx * ny * n).map(|k| k as f32).collect();
        vals[2 * nx * ny + 3 * nx + 5] = f32::NAN; // image 2, x=5, y=3
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let h = Hdr::new(O::L, nx as i32, ny as i32, n as i32, 2);
        let p = write_file(d.path(), "nan.mrcs", &h, &[], &bytes);
        let f = MrcFile::open(&p).unwrap();
        let mut img = vec![0.0; nx * ny];
        f.read_image(1, &mut img).unwrap();
        err_with(f.read_image(2, &mut img), &p, &["index 2", "x=5, y=3", "NaN"]);
        f.read_image_unchecked(2, &mut img).unwrap();
        assert!(img[3 * nx + 5].is_nan());
        let mut all = vec![0.0; nx * ny * n];
        err_with(f.read_images(0, &mut all), &p, &["index 2", "x=5, y=3"]);
        f.read_images_unchecked(0, &mut all).unwrap();
        err_with(f.read_volume(), &p, &["index 2", "x=5, y=3"]);
        assert!(f.read_volume_unchecked().unwrap()[2 * nx * ny + 3 * nx + 5].is_nan());

        // -Inf in a big-endian float16 stack.
        let mut hb = Vec::new();
        for k in 0..nx * ny * n {
            let v = if k == 4 * nx * ny + nx { half::f16::NEG_INFINITY } else { half::f16::from_f32(1.0) };
            hb.extend_from_slice(&v.to_be_bytes());
        }
        let h = Hdr::new(O::B, nx as i32, ny as i32, n as i32, 12);
        let p = write_file(d.path(), "inf16.mrcs", &h, &[], &hb);
        let f = MrcFile::open(&p).unwrap();
        err_with(f.read_image(4, &mut img), &p, &["index 4", "x=0, y=1", "-inf"]);
    }

    #[test]
    fn bad_indices_and_buffers() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.mrcs");
        write_stack(&p, &[1.0; 4 * 3 * 2], 4, 3, 2, 1.0).unwrap();
        let f = MrcFile::open(&p).unwrap();
        let mut img = vec![0.0; 12];
        err_with(f.read_image(2, &mut img), &p, &["index 2", "out of range"]);
        err_with(f.read_image(usize::MAX, &mut img), &p, &["out of range"]);
        err_with(f.read_image(0, &mut [0.0; 11]), &p, &["index 0", "11"]);
        err_with(f.read_images(1, &mut [0.0; 24]), &p, &["index 1", "out of range"]);
        err_with(f.read_images(0, &mut [0.0; 13]), &p, &["index 0", "13"]);
        f.read_images(2, &mut []).unwrap();
    }

    /// A 126 GB stack (sparse on disk) opens and reads its last image without
    /// reading, or allocating for, anything else.
    #[test]
    fn huge_stack_is_read_lazily() {
        let d = tempfile::tempdir().unwrap();
        let (nx, ny, n) = (1024usize, 1024usize, 30_000usize);
        let h = Hdr::new(O::L, nx as i32, ny as i32, n as i32, 2);
        let p = write_file(d.path(), "huge.mrcs", &h, &[], &[]);
        let file = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        file.set_len(1024 + (nx * ny * n * 4) as u64).unwrap();
        let mut last = vec![1.0f32; nx * ny];
        last[7] = 2.5;
        let bytes: Vec<u8> = last.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::os::unix::fs::FileExt::write_all_at(&file, &bytes, 1024 + ((n - 1) * nx * ny * 4) as u64)
            .unwrap();
        drop(file);
        for f in [MrcFile::open(&p).unwrap(), MrcFile::open_unmapped(&p).unwrap()] {
            assert_eq!(f.n_images(), n);
            let mut img = vec![0.0; nx * ny];
            f.read_image(n - 1, &mut img).unwrap();
            assert_eq!(img, last);
            f.read_image(n / 2, &mut img).unwrap();
            assert!(img.iter().all(|&v| v == 0.0));
        }
    }

    // ---------------------------------------------------------------------------
    // Concurrency
    // ---------------------------------------------------------------------------

    #[test]
    fn mrc_file_is_send_sync_and_reads_concurrently() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<MrcFile>();
        assert_send_sync::<MrcStackWriter>();

        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("conc.mrcs");
        let (nx, ny, n) = (16, 16, 64);
        let data = random_vec(4, nx * ny * n);
        write_stack(&p, &data, nx, ny, n, 1.0).unwrap();
        for f in [MrcFile::open(&p).unwrap(), MrcFile::open_unmapped(&p).unwrap()] {
            std::thread::scope(|s| {
                for t in 0..4 {
                    let (f, data) = (&f, &data);
                    s.spawn(move || {
                        let mut rng = ChaCha8Rng::seed_from_u64(t);
                        let mut img = vec![0.0; nx * ny];
                        for _ in 0..200 {
                            let i = rng.gen_range(0..n);
                            f.read_image(i, &mut img).unwrap();
                            assert_eq!(bits(&img), bits(&data[i * nx * ny..(i + 1) * nx * ny]));
                        }
                    });
                }
            });
        }
    }
}
