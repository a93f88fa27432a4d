//! The pickle reader never panics and never allocates absurdly on arbitrary input.

use cryoforge_io::pkl::*;
use proptest::prelude::*;
use std::path::Path;

fn valid_pickle() -> Vec<u8> {
    let rot = NdArray::new(vec![2, 3, 3], ArrayData::F32((0..18).map(|i| i as f32 * 0.5).collect())).unwrap();
    let tr = NdArray::new(vec![2, 2], ArrayData::F64(vec![0.1, -0.2, 0.3, 0.4])).unwrap();
    let v = PklValue::Tuple(vec![
        PklValue::Array(rot),
        PklValue::Array(tr),
        PklValue::Dict(vec![(PklValue::Str("k".into()), PklValue::List(vec![PklValue::Int(1 << 40)]))]),
    ]);
    to_pickle_bytes(&v, Path::new("seed.pkl")).unwrap()
}

/// A protocol-4 pickle with memo references (MEMOIZE / BINGET), as Python writes them.
fn memo_pickle() -> Vec<u8> {
    // ([1], [1] same object, {'a': (1, 2)}) with the list memoized and fetched back.
    b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00]\x94(K\x01eh\x00}\x94\x8c\x01a\x94K\x01K\x02\x86\x94s\x87\x94.".to_vec()
}

#[test]
fn pkl_seeds_parse() {
    assert!(parse_pickle(&valid_pickle(), Path::new("seed")).is_ok());
    let v = parse_pickle(&memo_pickle(), Path::new("memo")).unwrap();
    let PklValue::Tuple(t) = v else { panic!() };
    assert_eq!(t[0], t[1]);
    assert_eq!(t[0], PklValue::List(vec![PklValue::Int(1)]));
}

#[test]
fn pkl_self_referencing_list_is_an_error_not_a_hang() {
    // l = []; l.append(l); pickle.dumps(l, 2)
    let b = b"\x80\x02]q\x00h\x00a.";
    let e = parse_pickle(b, Path::new("rec.pkl")).unwrap_err().to_string();
    assert!(e.contains("rec.pkl") && e.contains("deeper than"), "{e}");
    // A list referenced 2^30 times through nested tuples must hit the budget, not memory.
    let mut b = b"\x80\x02]q\x00".to_vec();
    for _ in 0..30 {
        b.extend_from_slice(b"q\x00h\x00h\x00\x86"); // memo put, t = (x, x)
    }
    b.push(b'.');
    let e = parse_pickle(&b, Path::new("dag.pkl")).unwrap_err().to_string();
    assert!(e.contains("memory budget"), "{e}");
}

#[test]
fn pkl_repeated_decoding_of_one_buffer_hits_the_budget() {
    // _codecs.encode(big_str, 'latin1') called 100 000 times through the memo: 10 GB of
    // bytes objects from a 900 kB pickle unless allocations are charged.
    let mut b = b"\x80\x02c_codecs\nencode\nq\x00X".to_vec();
    b.extend_from_slice(&100_000u32.to_le_bytes());
    b.extend_from_slice(&[b'a'; 100_000]);
    b.extend_from_slice(b"q\x01X\x06\x00\x00\x00latin1q\x02");
    for _ in 0..100_000 {
        b.extend_from_slice(b"h\x00h\x01h\x02\x86R0");
    }
    b.extend_from_slice(b"N.");
    let e = parse_pickle(&b, Path::new("bomb.pkl")).unwrap_err().to_string();
    assert!(e.contains("bomb.pkl") && e.contains("memory budget"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn pkl_random_bytes_never_panic(mut b in proptest::collection::vec(any::<u8>(), 0..200), proto in 2u8..6) {
        if b.len() > 2 && b[0] % 2 == 0 {
            b[0] = 0x80;
            b[1] = proto;
        }
        let _ = parse_pickle(&b, Path::new("fuzz.pkl"));
    }

    #[test]
    fn pkl_mutated_pickles_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
        which in 0usize..2,
    ) {
        let mut b = if which == 0 { valid_pickle() } else { memo_pickle() };
        for (idx, byte, kind) in edits {
            if b.is_empty() { break; }
            let i = idx.index(b.len());
            match kind {
                0 => b[i] = byte,
                1 => { b.truncate(i); }
                2 => b.insert(i, byte),
                _ => { b.remove(i); }
            }
        }
        if let Err(e) = parse_pickle(&b, Path::new("mut.pkl")) {
            prop_assert!(e.to_string().starts_with("mut.pkl"));
        }
    }
}
