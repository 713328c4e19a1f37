//! Bearer secrets (api-keys, stream tokens): minted from the OS's CSPRNG and stored only as a
//! SHA-256. They carry 190+ bits of entropy, so a fast hash is the right one (a slow password
//! hash protects low-entropy secrets, which these are not).

use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

pub fn sha256_hex(input: impl AsRef<[u8]>) -> String {
    hex::encode(sha256(input))
}

pub fn sha256(input: impl AsRef<[u8]>) -> [u8; 32] {
    Sha256::digest(input.as_ref()).into()
}

/// A fresh secret: `prefix` (so a leaked one is recognisable to secret scanners) and 40
/// alphanumeric characters (~238 bits).
pub fn mint(prefix: &str) -> String {
    format!("{prefix}{}", Alphanumeric.sample_string(&mut rand::rng(), 40))
}
