//! Every value shape of the Hessian 2.0 spec, skipped; byte fixtures from the spec's examples.

use super::*;
use bytes::BytesMut;

/// Skips one value from `bytes` followed by a sentinel 'T', and checks the reader stops exactly
/// at the sentinel.
fn skips(bytes: &[u8]) {
    let mut input = bytes.to_vec();
    input.push(b'T');
    let mut r = Reader::new(&input);
    r.skip_value()
        .unwrap_or_else(|e| panic!("{bytes:02x?}: {e}"));
    assert_eq!(
        r.position(),
        bytes.len(),
        "{bytes:02x?} skipped to the wrong place"
    );
}

/// Every strict prefix of a value is an `UnexpectedEnd`, never a panic or a success.
fn truncations_fail(bytes: &[u8]) {
    for cut in 0..bytes.len() {
        let mut r = Reader::new(&bytes[..cut]);
        assert!(
            r.skip_value().is_err(),
            "{:02x?} (cut at {cut}) accepted",
            &bytes[..cut]
        );
    }
}

fn check(bytes: &[u8]) {
    skips(bytes);
    truncations_fail(bytes);
}

#[test]
fn scalars() {
    for v in [&b"N"[..], b"T", b"F"] {
        check(v);
    }
    // ints: one, two, three octets and 'I'
    for v in [
        &[0x90][..],
        &[0x80],
        &[0xbf],
        &[0xc8, 0x00],
        &[0xcf, 0xff],
        &[0xd4, 0, 0],
        &[0xd7, 0xff, 0xff],
        &[b'I', 0, 0, 1, 0],
    ] {
        check(v);
    }
    // longs: one, two, three octets, 'Y' (32-bit) and 'L'
    for v in [
        &[0xe0][..],
        &[0xd8],
        &[0xef],
        &[0xf8, 0],
        &[0x3c, 0, 0],
        &[b'Y', 0, 0, 0, 1],
        &[b'L', 0, 0, 0, 0, 0, 0, 1, 0x2c],
    ] {
        check(v);
    }
    // doubles: 0.0, 1.0, byte, short, float, 'D'
    for v in [
        &[0x5b][..],
        &[0x5c],
        &[0x5d, 0x80],
        &[0x5e, 0x80, 0x00],
        &[0x5f, 0, 0, 0x30, 0x39],
        &[b'D', 0x40, 0x28, 0x80, 0, 0, 0, 0, 0],
    ] {
        check(v);
    }
    // dates: 64-bit millis, 32-bit minutes
    check(&[0x4a, 0, 0, 0, 0xd0, 0x4b, 0x92, 0x84, 0xb8]);
    check(&[0x4b, 0x00, 0xe3, 0x83, 0x8f]);
}

#[test]
fn ints_read_as_the_spec_says() {
    let cases: [(&[u8], i32); 8] = [
        (&[0x90], 0),
        (&[0x80], -16),
        (&[0xbf], 47),
        (&[0xc8, 0x30], 48),
        (&[0xc0, 0x00], -2048),
        (&[0xd4, 0x08, 0x00], 2048),
        (&[0xd0, 0x00, 0x00], -262_144),
        (&[b'I', 0xff, 0xff, 0xff, 0xfe], -2),
    ];
    for (bytes, want) in cases {
        assert_eq!(Reader::new(bytes).read_int(), Ok(want), "{bytes:02x?}");
    }
    assert!(matches!(
        Reader::new(b"T").read_int(),
        Err(HessianError::BadTag { .. })
    ));
}

#[test]
fn strings_in_every_form() {
    check(&[0x00]);
    check(b"\x05hello");
    check(&[0x01, 0xc3, 0x83]); // "\u{c3}" in two bytes
    let mut medium = vec![0x30, 0x20];
    medium.extend(std::iter::repeat_n(b'a', 32));
    check(&medium);
    let mut long = vec![0x33, 0xff];
    long.extend(std::iter::repeat_n(b'b', 1023));
    check(&long);
    check(b"S\x00\x05hello");
    // chunked: 'R' chunks, then a final 'S' or compact chunk
    check(b"R\x00\x03helS\x00\x02lo");
    check(b"R\x00\x02heR\x00\x01l\x02lo");
    // a three-byte character, a surrogate pair in Java's two 3-byte form, and a 4-byte one
    check(&[0x01, 0xe2, 0x82, 0xac]);
    check(&[0x02, 0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80]);
    check(&[0x02, 0xf0, 0x9f, 0x98, 0x80]);
}

#[test]
fn strings_read_borrowed_or_joined() {
    let s = |bytes: &[u8]| {
        Reader::new(bytes)
            .read_string()
            .map(|s| s.map(|c| c.into_owned()))
    };
    assert_eq!(s(b"\x05hello"), Ok(Some("hello".into())));
    assert!(matches!(
        Reader::new(b"\x05hello").read_string(),
        Ok(Some(Cow::Borrowed("hello")))
    ));
    assert_eq!(s(b"N"), Ok(None));
    assert_eq!(s(b"R\x00\x03helS\x00\x02lo"), Ok(Some("hello".into())));
    assert_eq!(
        s(&[0x02, 0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80]),
        Ok(Some("\u{1f600}".into()))
    );
    assert_eq!(
        s(&[0x02, 0xf0, 0x9f, 0x98, 0x80]),
        Ok(Some("\u{1f600}".into()))
    );
    assert!(matches!(
        s(&[0x01, 0xff]),
        Err(HessianError::InvalidUtf8 { .. })
    ));
    assert!(matches!(
        s(&[0x01, 0xc3, 0x41]),
        Err(HessianError::InvalidUtf8 { .. })
    ));
    assert!(matches!(s(b"T"), Err(HessianError::BadTag { .. })));
}

#[test]
fn written_strings_read_back() {
    let mut units_long = "x".repeat(0x8000 + 5);
    units_long.push('\u{1f600}');
    for text in [
        "",
        "short",
        &"m".repeat(500),
        &"€".repeat(2000),
        &units_long,
    ] {
        let mut out = BytesMut::new();
        write_string(&mut out, text);
        let mut r = Reader::new(&out);
        assert_eq!(r.read_string().unwrap().as_deref(), Some(text));
        assert!(r.is_empty());
        skips(&out);
    }
}

#[test]
fn binary_in_every_form() {
    check(&[0x20]);
    check(&[0x23, 1, 2, 3]);
    let mut medium = vec![0x34, 0x10];
    medium.extend([7u8; 16]);
    check(&medium);
    check(&[b'B', 0x00, 0x02, 9, 9]);
    check(&[
        b'A', 0x00, 0x01, 9, b'A', 0x00, 0x01, 8, b'B', 0x00, 0x01, 7,
    ]);
    check(&[b'A', 0x00, 0x01, 9, 0x21, 8]);
}

#[test]
fn lists_typed_untyped_fixed_and_variable() {
    // 'V' type len values: int[] {0, 1}
    check(&[b'V', 0x04, b'[', b'i', b'n', b't', 0x92, 0x90, 0x91]);
    // compact fixed typed list, with a type ref instead of a name
    check(&[0x72, 0x90, 0x90, 0x91]);
    // 'X' untyped fixed, compact untyped fixed
    check(&[b'X', 0x92, 0x90, 0x91]);
    check(&[0x7a, 0x03, b'a', b'b', b'c', b'N']);
    // 'U' typed variable, 'W' untyped variable (until 'Z')
    check(&[b'U', 0x04, b'[', b'i', b'n', b't', 0x90, 0x91, b'Z']);
    check(&[b'W', 0x90, 0x91, b'Z']);
    check(b"WZ");
    // nested lists
    check(&[b'W', 0x79, 0x78, b'X', 0x91, b'W', b'Z', b'Z']);
}

#[test]
fn maps_typed_and_untyped() {
    check(&[
        b'H', 0x91, 0x03, b'f', b'e', b'e', 0xa0, 0x03, b'f', b'i', b'e', b'Z',
    ]);
    check(&[
        b'M', 0x08, b'c', b'a', b'r', b'.', b'M', b'a', b'p', b'1', 0x91, b'N', b'Z',
    ]);
    check(b"HZ");
    // a map inside a map's value
    check(&[b'H', 0x01, b'k', b'H', 0x01, b'j', b'T', b'Z', b'Z']);
}

#[test]
fn class_definitions_objects_and_refs() {
    // class Car {color, model}; new Car("red", "corvette"); new Car("green", "civic") by 0x60
    let mut car = vec![b'C', 0x0b];
    car.extend(b"example.Car");
    car.extend([0x92, 0x05]);
    car.extend(b"color");
    car.extend([0x05]);
    car.extend(b"model");
    car.push(b'O');
    car.push(0x90);
    car.extend(b"\x03red\x08corvette");
    check(&car);
    // the same stream goes on with an object by compact ref and an 'O' object
    let mut more = car.clone();
    more.extend(b"\x60\x05green\x05civic");
    more.extend(b"O\x90\x04blue\x04mini");
    let mut r = Reader::new(&more);
    for _ in 0..3 {
        r.skip_value().unwrap();
    }
    assert!(r.is_empty());
    // an object whose class was never defined
    assert!(matches!(
        Reader::new(b"\x61\x01a").skip_value(),
        Err(HessianError::UnknownClass { index: 1, .. })
    ));
    // a list of two objects, the second a ref ('Q') to the first
    let mut list = vec![b'X', 0x92];
    list.extend(&car);
    list.extend([b'Q', 0x91]);
    check(&list);
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for tag in [0x40u8, 0x45, 0x47, 0x50, b'Z'] {
        assert!(matches!(
            Reader::new(&[tag]).skip_value(),
            Err(HessianError::BadTag { .. })
        ));
    }
    assert!(matches!(
        Reader::new(&[b'X', b'I', 0xff, 0xff, 0xff, 0xff]).skip_value(),
        Err(HessianError::NegativeLength { .. })
    ));
    // every byte sequence of length 1..=3 either skips or errors, within its bounds
    for a in 0..=255u8 {
        for b in [0x00u8, 0x5a, 0x90, 0xff] {
            let bytes = [a, b, 0x91];
            let mut r = Reader::new(&bytes);
            if r.skip_value().is_ok() {
                assert!(r.position() <= bytes.len());
            }
        }
    }
}

#[test]
fn nesting_is_bounded() {
    let deep: Vec<u8> = std::iter::repeat_n(b'W', 10_000).collect();
    assert!(matches!(
        Reader::new(&deep).skip_value(),
        Err(HessianError::TooDeep { .. })
    ));
    let mut ok: Vec<u8> = std::iter::repeat_n(b'W', MAX_DEPTH).collect();
    ok.extend(std::iter::repeat_n(b'Z', MAX_DEPTH));
    check(&ok);
}

#[test]
fn maps_are_walked_entry_by_entry() {
    let bytes = [b'M', 0x91, 0x01, b'k', 0x01, b'v', b'Z'];
    let mut r = Reader::new(&bytes);
    assert_eq!(r.begin_map(), Ok(true));
    assert!(!r.end_of_container().unwrap());
    assert_eq!(r.read_string().unwrap().as_deref(), Some("k"));
    assert_eq!(r.read_string().unwrap().as_deref(), Some("v"));
    assert!(r.end_of_container().unwrap());
    assert_eq!(Reader::new(b"N").begin_map(), Ok(false));
    assert!(Reader::new(b"T").begin_map().is_err());
}
