//! The operator's view of `vaultsync-render` (shared with the CSI provider): the same functions, with the API's
//! decoding strategies mapped onto the crate's.

use vaultsync_api::secret::Decoding as ApiDecoding;
use vaultsync_render::Decoding;
pub use vaultsync_render::{Comparison, RenderError, SecretData, compare, data_hmac, digest_key_id, extract, key_id};

/// The crate's decoding for the API's.
pub fn decoding(decoding: ApiDecoding) -> Decoding {
    match decoding {
        ApiDecoding::None => Decoding::None,
        ApiDecoding::Base64 => Decoding::Base64,
        ApiDecoding::Base64URL => Decoding::Base64Url,
        ApiDecoding::Auto => Decoding::Auto,
    }
}

/// Decodes a value as the VaultSecret asks.
pub fn decode(value: Vec<u8>, strategy: ApiDecoding, object: &str) -> Result<Vec<u8>, RenderError> {
    vaultsync_render::decode(value, decoding(strategy), object)
}
