//! Hashing and random numbers for the pickers.
//!
//! Hand-written on purpose: the consistent-hash structures need a hash that is stable across
//! builds, platforms and Rust releases (std's `DefaultHasher` promises none of that), and the
//! mixing step is the public-domain splitmix64 finalizer, a few lines.

use std::net::SocketAddr;

use rand::Rng;

/// A random u64 from the thread-local generator (no allocation, no lock).
#[inline]
pub(crate) fn random_u64() -> u64 {
    rand::rng().random()
}

/// splitmix64's finalizer: a fast, well-distributed 64-bit mix.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `x` mapped uniformly onto `0..n` (Lemire's multiply-shift; `n` < 2^32).
#[inline]
pub(crate) fn bounded(x: u32, n: usize) -> usize {
    ((u64::from(x) * n as u64) >> 32) as usize
}

/// A stable hash of an endpoint address and a salt (FNV-1a over the bytes, then mixed).
pub(crate) fn hash_addr(addr: &SocketAddr, salt: u64) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01B3;
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    };
    match addr {
        SocketAddr::V4(a) => a.ip().octets().into_iter().for_each(&mut eat),
        SocketAddr::V6(a) => a.ip().octets().into_iter().for_each(&mut eat),
    }
    addr.port().to_be_bytes().into_iter().for_each(&mut eat);
    salt.to_le_bytes().into_iter().for_each(&mut eat);
    mix64(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_hash_is_stable_and_salted() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        assert_eq!(hash_addr(&a, 1), hash_addr(&a, 1));
        assert_ne!(hash_addr(&a, 1), hash_addr(&a, 2));
        assert_ne!(hash_addr(&a, 1), hash_addr(&b, 1));
    }

    #[test]
    fn bounded_stays_in_range() {
        for x in [0, 1, u32::MAX / 2, u32::MAX] {
            assert!(bounded(x, 7) < 7);
        }
        assert_eq!(bounded(u32::MAX, 7), 6);
    }
}
